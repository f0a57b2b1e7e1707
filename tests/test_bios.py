"""Biographies -> name, gender, region: the rules on small texts, and the real Bios.zip."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest

from pipeline.bios import (
    Biography,
    biographies_table,
    first_sentence,
    identity_from_filename,
    infer_gender,
    infer_region,
    parse_biography,
    read_biographies,
    write_biography_json,
)
from pipeline.names import RELEASE_GENDER_CODES, identity_of_msceleb_name
from pipeline.vocabulary import GENDERS, REGIONS

NA_EU, S_ASIA, S_AFRICA = "N. America/Europe", "S. Asia", "S. Africa"
ME_CA_NA, LATAM = "Mid. East/C. Asia/N. Africa", "Central/South America"
NE_ASIA, SE_ASIA = "N.E. Asia", "S.E. Asia"


@pytest.fixture(scope="module")
def release() -> Path:
    """../shared/data/facs_release next to the project root (skip when absent)."""
    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "facs_release"
    if not (folder / "Bios.zip").is_file():
        pytest.skip(f"real biographies not found at {folder / 'Bios.zip'} (../shared is absent)")
    return folder


@pytest.fixture(scope="module")
def real_bios(release: Path) -> dict[str, Biography]:
    return read_biographies(str(release / "Bios.zip"))


@pytest.fixture(scope="module")
def label_genders(release: Path) -> dict[str, set[str]]:
    """test_label.csv: identity -> the gender(s) its rows give (column 2, 1 = male)."""
    genders: dict[str, set[str]] = {}
    with open(release / "test_label.csv", newline="") as handle:
        for row in csv.reader(handle):
            identity = identity_of_msceleb_name(row[0])
            genders.setdefault(identity, set()).add(RELEASE_GENDER_CODES[int(row[2])])
    return genders


# ----------------------------------------------------------------------------------- gender rules


def test_gender_pronoun_majority_wins_with_a_margin() -> None:
    assert infer_gender("He sang. His wife said she liked it. He left.")[0] == "male"  # 3 vs 1
    assert infer_gender("She acted. He directed her.")[0] == "female"  # 2 vs 1
    assert infer_gender("He met her. She met him. He ran.")[0] == "unknown"  # 3 vs 2: too close
    assert infer_gender("HE IS TALL.")[0] == "male"


def test_gender_counts_whole_words_only() -> None:
    # "the", "theme", "hero", "Hermione", "shell", "Shepherd" hide he/her/she inside other words
    gender, evidence = infer_gender("The theme of the hero Hermione is a shell by Shepherd.")
    assert gender == "unknown"
    assert "he/his/him=0 she/her=0" in evidence


def test_gender_no_pronouns_is_unknown_unless_nouns_agree() -> None:
    assert infer_gender("Jo Bloggs is a poet.", "Poet")[0] == "unknown"
    gender, evidence = infer_gender("Jo Bloggs is a poet.", "American actress")
    assert gender == "female" and "actress" in evidence
    assert infer_gender("Jo Bloggs is a businessman.", "Poet")[0] == "male"
    # "actor" is used for women too, so it decides nothing
    assert infer_gender("Jo Bloggs is an actor.", "Actor")[0] == "unknown"
    # nouns that disagree decide nothing
    assert infer_gender("Jo is the first woman to chair the firm.", "Businessman")[0] == "unknown"


def test_gender_nouns_do_not_override_pronouns() -> None:
    # The description's "actress" is only a tie-breaker: the pronouns are about the subject.
    assert infer_gender("He wrote plays. His plays ran.", "Actress")[0] == "male"


# ----------------------------------------------------------------------------------- region rules


@pytest.mark.parametrize(
    ("description", "article", "region"),
    [
        ("South Korean singer", "Kim is a South Korean singer.", NE_ASIA),
        ("Singer", "Chan is a Hong Kong singer and actor.", NE_ASIA),
        ("Actress", "Jo is a New Zealand actress.", NA_EU),
        ("Playwright", "Jo was a South African playwright.", S_AFRICA),
        ("Politician", "Jo is a South Sudanese politician.", S_AFRICA),
        ("Politician", "Jo is a Sudanese politician.", ME_CA_NA),
        ("Activist", "Jo is an American Indian activist.", NA_EU),
        ("Cricketer", "Jo is a West Indian cricketer.", LATAM),
        ("Footballer", "Jo is a Brazilian footballer.", LATAM),
        ("Boxer", "Jo is a Filipino boxer.", SE_ASIA),
        ("Nepalese musician", "Jo is a musician.", S_ASIA),
    ],
)
def test_region_demonyms_longest_phrase_first(description: str, article: str, region: str) -> None:
    assert infer_region(description, article)[0] == region


def test_region_hyphenated_abstract_takes_the_last_part() -> None:
    assert infer_region("Actress", "Jo is an Indian-American actress.")[0] == NA_EU
    assert infer_region("Actor", "Jo is a Cambodian American actor.")[0] == NA_EU
    assert infer_region("Footballer", "Jo is a Japanese-Brazilian footballer.")[0] == LATAM


def test_region_british_usage_puts_the_nationality_first() -> None:
    assert infer_region("Actor", "Jo is a British Chinese actor.")[0] == NA_EU


def test_region_description_hyphens_list_nationalities_and_the_abstract_picks() -> None:
    # The Knowledge Graph lists dual nationalities alphabetically: order carries no meaning.
    assert infer_region("American-Cambodian actor", "Jo is a Cambodian American actor.")[0] == NA_EU
    assert infer_region("Indian-Irish actress", "Jo is an Indian actress.")[0] == S_ASIA
    # ... and alone, a list across regions is a dual nationality: unknown
    assert infer_region("Canadian-Taiwanese actress", "Jo is an actress.")[0] == "unknown"


def test_region_birthplace_and_ancestry_are_not_nationality() -> None:
    assert infer_region("Director", "Jo was a Russian-born American director.")[0] == NA_EU
    assert infer_region("Mathematician", "Jo is an Australian born Indian mathematician.")[0] == (
        S_ASIA
    )
    assert infer_region("Singer", "Jo is a singer of Indian and Irish descent.")[0] == "unknown"
    assert infer_region("Singer", "Jo is a US-based Filipino singer.")[0] == SE_ASIA


def test_region_conflicting_sources_are_unknown() -> None:
    region, evidence = infer_region("Indian actress", "Jo is an American actress.")
    assert region == "unknown"
    assert "conflicting" in evidence and "Indian" in evidence and "American" in evidence
    assert infer_region("Actress", "Jo is an Indian and British actress.")[0] == "unknown"
    assert infer_region("Actor", "Jo is a French and American actor.")[0] == NA_EU


def test_region_no_nationality_is_unknown() -> None:
    region, evidence = infer_region("Singer", "Jo is a singer and songwriter.")
    assert region == "unknown"
    assert "no nationality" in evidence
    assert infer_region("", "")[0] == "unknown"


def test_region_reads_only_the_first_sentence_after_the_verb() -> None:
    # A name before "is" and a nationality in a later sentence are not read.
    assert infer_region("Rapper", "French Montana is a rapper.")[0] == "unknown"
    assert infer_region("Model", "India Hicks is a model. She lives in India.")[0] == "unknown"
    # Single words must be capitalised: "turkey" the bird is no nationality
    assert infer_region("Chef", "Jo is a chef known for turkey dishes.")[0] == "unknown"


def test_region_country_names_only_when_no_demonym() -> None:
    region, evidence = infer_region("Badminton player", "Jo is a badminton player from Germany.")
    assert region == NA_EU and evidence.startswith("country")
    assert infer_region("Singer", "Jo is a singer from the Democratic Republic of the Congo.")[
        0
    ] == (S_AFRICA)
    # A demonym wins over a country name in the same sentence.
    assert infer_region("Footballer", "Jo is a Nigerian footballer who plays in Spain.")[0] == (
        S_AFRICA
    )


def test_region_outside_the_table_is_not_misread() -> None:
    # "Papua New Guinean" must not become "Guinean" (Sub-Saharan Africa)
    region, evidence = infer_region("Rugby player", "Jo is a Papua New Guinean rugby player.")
    assert region == "unknown" and "Papua New Guinean" in evidence


def test_first_sentence_survives_initials_and_abbreviations() -> None:
    text = "R. Madhavan is an Indian actor. He has received awards."
    assert first_sentence(text) == "R. Madhavan is an Indian actor."
    assert first_sentence("Jo Smith Jr. is a U.S. senator. He ran.") == (
        "Jo Smith Jr. is a U.S. senator."
    )
    assert first_sentence("Jo is an actor.\nJo was born.") == "Jo is an actor."


# ------------------------------------------------------------------------- parsing and malformed


def test_identity_from_file_name() -> None:
    assert identity_from_filename("Bios/011zfz.json") == "m.011zfz"
    assert identity_from_filename("s3://b/bios/m.0_1x.json") == "m.0_1x"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"itemListElement": [{"result": {"name": "Jo"', "malformed JSON"),
        ('{"@type": "ItemList", "itemListElement": []}', "no itemListElement"),
        ("[1, 2, 3]", "no itemListElement"),
        ('{"itemListElement": [{"resultScore": 1}]}', "no result"),
    ],
)
def test_malformed_json_gives_unknown_not_a_crash(text: str, why: str) -> None:
    bio = parse_biography("0abc", text, "bios/0abc.json")
    assert bio.identity == "m.0abc"
    assert (bio.gender, bio.region) == ("unknown", "unknown")
    assert why in bio.gender_evidence and why in bio.region_evidence


def test_unreadable_bytes_raise_naming_the_source() -> None:
    with pytest.raises(ValueError, match=r"bios/0abc\.json"):
        parse_biography("m.0abc", b"\xff\xfe\x00garbage\x9c", "bios/0abc.json")


def test_write_biography_json_round_trips() -> None:
    article = "Jo Bloggs is a Kenyan long-distance runner. He won the marathon. His coach agreed."
    text = write_biography_json("m.0xyz1", "Jo Bloggs", "Kenyan runner", article)
    bio = parse_biography("0xyz1", text, "synthetic")
    assert bio == Biography(
        "m.0xyz1", "Jo Bloggs", "male", S_AFRICA, bio.gender_evidence, bio.region_evidence
    )
    result = json.loads(text)["itemListElement"][0]["result"]
    assert result["@id"] == "kg:/m/0xyz1"
    assert result["detailedDescription"]["articleBody"] == article


def _shape(value: object) -> object:
    """The key structure of a JSON value (keys and nesting, not the values)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _shape(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(_shape(v) for v in value))
    return type(value).__name__


def test_written_json_has_the_shape_of_real_files(release: Path) -> None:
    with zipfile.ZipFile(release / "Bios.zip") as archive:
        real_shapes = {_shape(json.loads(archive.read(n))) for n in archive.namelist()}
    written = write_biography_json("m.0xyz1", "Jo Bloggs", "American actress", "Jo is an actress.")
    assert _shape(json.loads(written)) in real_shapes


# ---------------------------------------------------------------------------------- real bios


@pytest.mark.parametrize(
    ("identity", "name", "gender", "region"),
    [
        ("m.011zfz", "Connie Chung", "female", NA_EU),
        ("m.01_nx8", "Thalía", "female", LATAM),
        ("m.0bkf4", "Bob Marley", "male", LATAM),
        ("m.099vgz", "Sergio Agüero", "male", LATAM),
        ("m.012ykt", "Michelle Yeoh", "female", SE_ASIA),
        ("m.0j9lzds", "Nadech Kugimiya", "male", SE_ASIA),
        ("m.01pww7v", "Eason Chan", "male", NE_ASIA),
        ("m.029xr6", "Teresa Teng", "female", NE_ASIA),
        ("m.01zp33", "Rani Mukerji", "female", S_ASIA),
        ("m.0h_c4g0", "Sanam Saeed", "female", S_ASIA),
        ("m.0f8pp2", "Ani Choying Drolma", "female", S_ASIA),
        ("m.01szyny", "Hridaynath Mangeshkar", "male", S_ASIA),
        ("m.0cw2wc", "Eliud Kipchoge", "male", S_AFRICA),
        ("m.02pwbbk", "Nadia Buari", "female", S_AFRICA),
        ("m.03f65cx", "Tarkan", "male", ME_CA_NA),
        ("m.02vl4dl", "Esti Ginzburg", "female", ME_CA_NA),
        ("m.026fv4", "Haing S. Ngor", "male", NA_EU),
        ("m.07gt08", "Daria Werbowy", "female", NA_EU),
        ("m.047mjr", "Terence Tao", "male", NA_EU),
        ("m.08mxqy", "Nicol David", "female", SE_ASIA),  # no pronouns: "female" in the abstract
        ("m.07s4l1v", "Natwarlal", "male", S_ASIA),  # no pronouns: "con man"
    ],
)
def test_known_people(
    real_bios: dict[str, Biography], identity: str, name: str, gender: str, region: str
) -> None:
    bio = real_bios[identity]
    assert (bio.name, bio.gender, bio.region) == (name, gender, region), bio


def test_name_falls_back_to_the_wikipedia_title(real_bios: dict[str, Biography]) -> None:
    # Bios/0d4m5h.json has no result.name; its abstract is the article "Abdul_Basit_'Abd_us-Samad".
    bio = real_bios["m.0d4m5h"]
    assert bio.name == "Abdul Basit 'Abd us-Samad"
    assert (bio.gender, bio.region) == ("male", ME_CA_NA)


def test_real_bios_are_mostly_decided_and_in_the_vocabulary(
    real_bios: dict[str, Biography],
) -> None:
    assert len(real_bios) == 1995
    assert all(identity.startswith("m.") for identity in real_bios)
    assert {b.gender for b in real_bios.values()} <= set(GENDERS)
    assert {b.region for b in real_bios.values()} <= set(REGIONS)
    known_gender = sum(b.gender != "unknown" for b in real_bios.values())
    known_region = sum(b.region != "unknown" for b in real_bios.values())
    assert known_gender >= 0.8 * len(real_bios)
    assert known_region >= 0.8 * len(real_bios)
    # every region of the paper's table is represented in the release
    assert {b.region for b in real_bios.values()} == set(REGIONS)


def test_pronoun_gender_agrees_with_the_released_labels(
    real_bios: dict[str, Biography], label_genders: dict[str, set[str]]
) -> None:
    assert all(len(g) == 1 for g in label_genders.values()), "a person with two label genders"
    decided = {
        identity: real_bios[identity].gender
        for identity in label_genders
        if identity in real_bios and real_bios[identity].gender != "unknown"
    }
    assert len(decided) >= 0.8 * len(label_genders)
    agree = sum(decided[i] in label_genders[i] for i in decided)
    assert agree / len(decided) >= 0.98


def test_every_labelled_person_has_a_biography(
    real_bios: dict[str, Biography], label_genders: dict[str, set[str]]
) -> None:
    # MIDs contain underscores (m.01_nx8): the person is the part before the LAST underscore.
    # Cutting at the first one instead loses people (212 of them in test_label.csv).
    assert set(label_genders) <= set(real_bios)
    assert any("_" in identity for identity in label_genders)


def test_folder_input_equals_zip_input(release: Path, tmp_path: Path) -> None:
    members = ["Bios/011zfz.json", "Bios/01_nx8.json", "Bios/0d4m5h.json", "Bios/0bkf4.json"]
    folder = tmp_path / "bios"
    folder.mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(release / "Bios.zip") as source, zipfile.ZipFile(buffer, "w") as subset:
        for member in members:
            data = source.read(member)
            (folder / Path(member).name).write_bytes(data)
            subset.writestr(member, data)
    (folder / "README.txt").write_text("not a biography")
    (tmp_path / "subset.zip").write_bytes(buffer.getvalue())
    from_folder = read_biographies(str(folder))
    from_zip = read_biographies(str(tmp_path / "subset.zip"))
    assert from_folder == from_zip
    assert sorted(from_zip) == sorted(identity_from_filename(m) for m in members)


def test_a_malformed_file_does_not_stop_the_batch(tmp_path: Path) -> None:
    good = write_biography_json("m.0good", "Jo Bloggs", "Ghanaian actress", "She acts.")
    (tmp_path / "0good.json").write_text(good)
    (tmp_path / "0bad.json").write_text('{"itemListElement": [')
    bios = read_biographies(str(tmp_path))
    assert (bios["m.0good"].gender, bios["m.0good"].region) == ("female", S_AFRICA)
    assert (bios["m.0bad"].gender, bios["m.0bad"].region) == ("unknown", "unknown")


def test_missing_input_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_biographies(str(tmp_path / "nowhere"))
    (tmp_path / "notazip.zip").write_bytes(b"plain text")
    with pytest.raises(ValueError, match="notazip.zip"):
        read_biographies(str(tmp_path / "notazip.zip"))


def test_biographies_table_columns_and_rows() -> None:
    bios = {
        i: parse_biography(i, write_biography_json(i, n, d, a), "synthetic")
        for i, n, d, a in [
            ("m.0b", "Jo B", "Thai actor", "He acts."),
            ("m.0a", "Jo A", "Actress", "She acts."),
        ]
    }
    table = biographies_table(bios)
    assert table.column_names == ["identity", "name", "gender", "region"]
    assert table.to_pylist() == [
        {"identity": "m.0a", "name": "Jo A", "gender": "female", "region": "unknown"},
        {"identity": "m.0b", "name": "Jo B", "gender": "male", "region": SE_ASIA},
    ]


@pytest.mark.slow
def test_reads_zip_and_prefix_from_s3(release: Path, s3_bucket: str, tmp_path: Path) -> None:
    import boto3

    from pipeline.storage import s3_endpoint

    s3 = boto3.client("s3", endpoint_url=s3_endpoint())
    members = ["Bios/011zfz.json", "Bios/0bkf4.json"]
    with zipfile.ZipFile(release / "Bios.zip") as source:
        for member in members:
            s3.put_object(
                Bucket=s3_bucket, Key=f"bios/{Path(member).name}", Body=source.read(member)
            )
    s3.put_object(Bucket=s3_bucket, Key="Bios.zip", Body=(release / "Bios.zip").read_bytes())
    from_prefix = read_biographies(f"s3://{s3_bucket}/bios")
    from_zip = read_biographies(f"s3://{s3_bucket}/Bios.zip")
    assert len(from_zip) == 1995
    assert from_prefix == {i: from_zip[i] for i in ("m.011zfz", "m.0bkf4")}


def test_a_single_json_file_is_read_too(tmp_path: Path) -> None:
    path = tmp_path / "0one.json"
    path.write_text(write_biography_json("m.0one", "Jo Bloggs", "Thai actor", "He acts."))
    assert read_biographies(str(path)) == {
        "m.0one": parse_biography("m.0one", path.read_bytes(), str(path))
    }
