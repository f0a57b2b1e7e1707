"""The synthetic celeb world goes through the real readers: TSV + OpenFace CSVs + bios -> corpus."""

from __future__ import annotations

import csv
import json

import pytest

from cluster.cli import main
from pipeline.corpus.manifest import load_manifest
from pipeline.corpus.read import read_corpus, read_metadata_table
from pipeline.synth.celeb_world import generate_celeb
from pipeline.vocabulary import OPENFACE_AUS


@pytest.fixture(scope="module")
def celeb_corpus(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("world")
    world = generate_celeb(str(root / "celeb"), people=12, images_per_person=4, seed=7)
    corpus = str(root / "corpus")
    code = main(
        [
            "corpus", "build", "--corpus", corpus, "--tsv", world.tsv,
            "--labels-openface-images", world.openface_dir, "--bios", world.bios_dir,
        ]
    )  # fmt: skip
    assert code == 0
    with open(world.truth_csv) as handle:
        truth = {row["image_name"]: row for row in csv.DictReader(handle)}
    return world, corpus, truth


def test_every_synthetic_row_is_accounted_for_and_most_faces_are_found(celeb_corpus):
    world, corpus, _ = celeb_corpus
    entry = load_manifest(corpus).versions[0]
    assert entry.rows_read == world.images == 48
    assert entry.accepted + entry.rejected == entry.rows_read
    assert entry.accepted >= 0.95 * entry.rows_read  # the Haar detector finds the rendered faces


def test_gender_and_region_come_from_the_biographies(celeb_corpus):
    _, corpus, truth = celeb_corpus
    rows = read_metadata_table(corpus).to_pylist()
    assert rows
    for row in rows:
        assert row["gender"] == truth[row["image_name"]]["gender"]
        assert row["region"] == truth[row["image_name"]]["region"]
    assert {r["gender"] for r in rows} == {"female", "male"}


def test_labels_are_the_openface_csvs_noisy_reading(celeb_corpus):
    world, corpus, truth = celeb_corpus
    table = read_metadata_table(corpus, columns=["image_name", "label_source", *OPENFACE_AUS])
    agree = total = 0
    for row in table.to_pylist():
        assert row["label_source"] == "openface_img"
        for au in OPENFACE_AUS:
            if au in truth[row["image_name"]]:
                agree += row[au] == int(truth[row["image_name"]][au])
                total += 1
    # Noisy, but far better than chance and not identical to the truth.
    assert 0.6 < agree / total < 1.0


def test_stats_and_a_balanced_subset_through_the_cli(celeb_corpus, capsys):
    _, corpus, _ = celeb_corpus
    assert main(["corpus", "stats", "--corpus", corpus, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["people_by_gender"]["female"] + stats["people_by_gender"]["male"] == 12
    assert (
        main(["corpus", "subset", "--corpus", corpus, "--identities", "4", "--name", "four"]) == 0
    )
    rows = read_corpus(corpus, subset="four").take_all()
    people = {r["identity"]: r["gender"] for r in rows}
    assert len(people) == 4 and sorted(people.values()) == ["female", "female", "male", "male"]
