"""Biographies (Knowledge Graph JSON, one file per person) -> each person's name, gender and region.

Input: ``Bios.zip`` of the paper's release (``Bios/<mid without "m.">.json``) or a folder/prefix of
such files, local or ``s3://``. Each file is a Google Knowledge Graph ``ItemList`` whose
``itemListElement[0].result`` holds ``name``, ``description`` ("American journalist") and
``detailedDescription.articleBody`` (a Wikipedia abstract).

Every rule is written out below, in the order it is applied.

Gender (:func:`infer_gender`)
    1. Count third-person pronouns in the abstract, whole words, case-insensitive:
       male = he/his/him/himself, female = she/her/hers/herself.
    2. The larger count wins when it is at least 1 and at least twice the smaller one
       (a spouse or a co-star mentioned once does not flip a biography; "he=2 she=1" decides
       male, "he=1 she=1" and "he=3 she=2" decide nothing).
    3. Tie-breaker, only when rule 2 decides nothing: gendered nouns (:data:`FEMALE_NOUNS`,
       :data:`MALE_NOUNS`: ``actress``, ``woman``, ``female``, ``businessman``, ``man``...)
       in the ``description`` and the abstract's first sentence. They decide only when all of them
       point one way. ``actor`` is not among them: it is used for women too.
    4. Otherwise ``unknown``.

Region (:func:`infer_region`)
    1. Texts read: the ``description`` and the abstract's first sentence, from its first is/was on
       ("X is an American journalist"; a name such as "French Montana" or "India Hicks" comes
       before the verb, and later sentences talk about clubs, films and places).
    2. Nationality words are the demonyms and phrases of :data:`DEMONYM_REGIONS`, longest first
       ("South Korean" before "Korean", "American Indian" before "Indian"), whole words; single
       words must be capitalised ("Turkish", not "turkey"), phrases of several words may be in any
       case. Each text contributes its *first group* of nationality words (rule 4).
    3. A group directly followed by ``born``/``based``/``raised`` ("Russian-born American",
       "Australian born American", "US-based Filipino") or by ``descent``/``origin``/``ancestry``...
       ("of Indian descent") names a birthplace, a residence or an ancestry: it is skipped and the
       next group is taken.
    4. Words joined by "and", "or", "," or "/" ("French and American") are dual nationalities.
       Words joined by a hyphen or a space are a chain. In the abstract a chain reads as ancestry +
       nationality, the last word counting ("Indian-American", "Cambodian American" -> American),
       except British usage, where "British" comes first ("British Chinese" -> British). In the
       ``description`` every word of a chain counts: the Knowledge Graph writes dual nationalities
       as an alphabetical hyphenated list ("American-Russian film director" for a Russian-born
       American, "Canadian-Taiwanese actress"), so their order says nothing.
    5. Decision. Only the description names a nationality: its region(s). Only the abstract: the
       region(s) of its counting words. Both: the regions they share; when they share several, the
       abstract's counting word picks ("American-Cambodian" / "Cambodian American" -> American).
       Exactly one region -> that region; none (the sources disagree, e.g. "Indian actress" /
       "an American actress") or several (dual nationality across regions) -> ``unknown``.
    6. When neither text has a nationality word, country names (:data:`COUNTRY_REGIONS`,
       "a badminton player from Germany", "competes internationally for Japan") are read the same
       way. They come last because they often say where someone works, not where they are from;
       names that are also given names or US states (Georgia, Jordan, Chad) are left out.
    7. Phrases outside the seven regions (:data:`NO_REGION`: Pacific Island nations, "Indian
       Ocean") are matched so that they cannot be misread as a shorter phrase ("Papua New Guinean"
       is not "Guinean"), then dropped; nothing else found -> ``unknown``.

Region table choices (the paper's Table II has seven regions and no Oceania):
    * N. America/Europe: the US and Canada, every European country including Russia, Ukraine,
      Belarus, the Balkans, Cyprus and the historical states (Soviet, Yugoslav, Czechoslovak,
      West/East German); plus Australia and New Zealand (settler nations; the table has no Oceania).
      "American football"/"Canadian football" map here too: the sport is played professionally in
      the US and Canada, so the region is right either way.
    * Central/South America: Mexico, Central America, South America and the Caribbean (Cuban,
      Jamaican, Haitian, Dominican, Puerto Rican, Trinidadian...; "West Indian").
    * S. Africa: Sub-Saharan Africa (South African, Nigerian, Kenyan, Ghanaian, Ethiopian, ...,
      South Sudanese).
    * Mid. East/C. Asia/N. Africa: Turkey, Iran, the Arab states, Israel and Palestine, the Caucasus
      (Armenia, Azerbaijan, Georgia), the five Central Asian states, Afghanistan, and North Africa
      (Egypt, Libya, Tunisia, Algeria, Morocco, Mauritania, Sudan); "Arab", "Persian", "Kurdish".
    * S. Asia: India, Pakistan, Bangladesh, Sri Lanka, Nepal, Bhutan, Maldives; "Tamil", "Bengali",
      "Punjabi" (peoples wholly inside this region).
    * N.E. Asia: China, Hong Kong, Macau, Taiwan, Japan, both Koreas, Mongolia, Tibet.
    * S.E. Asia: Thailand, Vietnam, the Philippines, Indonesia, Malaysia, Singapore, Myanmar,
      Cambodia, Laos, Brunei, East Timor.
    * Pacific Island nations (Samoan, Tongan, Fijian, ...) and ethnic words that cross regions
      (Jewish, Hispanic, Latino, African, Asian) are deliberately absent: they leave the region
      ``unknown`` unless a nationality is named too.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import re
import urllib.parse
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa

from pipeline.storage import Location
from pipeline.vocabulary import GENDERS, REGIONS

log = logging.getLogger(__name__)

NA_EU = "N. America/Europe"
S_ASIA = "S. Asia"
S_AFRICA = "S. Africa"
ME_CA_NA = "Mid. East/C. Asia/N. Africa"
LATAM = "Central/South America"
NE_ASIA = "N.E. Asia"
SE_ASIA = "S.E. Asia"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Biography:
    """What the corpus keeps of one person, with a short reason for each inferred field."""

    identity: str  # Freebase MID with the "m." prefix, e.g. "m.011zfz"
    name: str
    gender: str  # "female" / "male" / "unknown"
    region: str  # one of vocabulary.REGIONS
    gender_evidence: str  # e.g. "he/his/him=5 she/her=0"
    region_evidence: str  # e.g. "demonym 'American' -> N. America/Europe"


# --------------------------------------------------------------------------------------------
# Gender
# --------------------------------------------------------------------------------------------

MALE_PRONOUNS = re.compile(r"\b(?:he|his|him|himself)\b", re.IGNORECASE)
FEMALE_PRONOUNS = re.compile(r"\b(?:she|her|hers|herself)\b", re.IGNORECASE)

#: Gendered nouns used only to break a pronoun tie (gender rule 3).
FEMALE_NOUNS: tuple[str, ...] = (
    "actress", "woman", "female", "girl", "lady",
    "businesswoman", "sportswoman", "spokeswoman", "chairwoman", "congresswoman", "horsewoman",
    "songstress", "comedienne", "waitress", "heiress", "hostess", "ballerina",
    "princess", "queen", "duchess", "countess", "empress", "baroness",
    "wife", "mother", "daughter", "sister",
)  # fmt: skip
MALE_NOUNS: tuple[str, ...] = (
    "man", "male", "boy",
    "businessman", "sportsman", "spokesman", "chairman", "congressman", "horseman",
    "prince", "king", "duke", "emperor", "baron",
    "husband", "father", "son", "brother",
)  # fmt: skip

_FEMALE_NOUN_RE = re.compile(r"\b(?:" + "|".join(FEMALE_NOUNS) + r")\b", re.IGNORECASE)
_MALE_NOUN_RE = re.compile(r"\b(?:" + "|".join(MALE_NOUNS) + r")\b", re.IGNORECASE)


def infer_gender(article: str, description: str = "") -> tuple[str, str]:
    """``(gender, evidence)`` from an abstract's pronouns; nouns break a tie (module docstring)."""
    male = len(MALE_PRONOUNS.findall(article))
    female = len(FEMALE_PRONOUNS.findall(article))
    counts = f"he/his/him={male} she/her={female}"
    if male >= 1 and male >= 2 * female:
        return "male", counts
    if female >= 1 and female >= 2 * male:
        return "female", counts
    lead = f"{description}\n{first_sentence(article)}"
    female_nouns = [m.lower() for m in _FEMALE_NOUN_RE.findall(lead)]
    male_nouns = [m.lower() for m in _MALE_NOUN_RE.findall(lead)]
    why = "no pronouns" if male == female == 0 else "pronouns too close"
    if female_nouns and not male_nouns:
        return "female", f"{counts} ({why}); nouns {_quoted(female_nouns)}"
    if male_nouns and not female_nouns:
        return "male", f"{counts} ({why}); nouns {_quoted(male_nouns)}"
    if female_nouns or male_nouns:
        return UNKNOWN, f"{counts} ({why}); mixed nouns {_quoted(female_nouns + male_nouns)}"
    return UNKNOWN, f"{counts} ({why}); no gendered nouns"


# --------------------------------------------------------------------------------------------
# Region
# --------------------------------------------------------------------------------------------


def _regions(region: str, *demonyms: str) -> dict[str, str]:
    return dict.fromkeys(demonyms, region)


#: Demonyms and nationality phrases -> the paper's region (choices in the module docstring).
DEMONYM_REGIONS: dict[str, str] = {
    **_regions(
        NA_EU,
        # North America and the settler nations of Oceania
        "American", "US", "U.S.", "UK", "U.K.", "Canadian", "Québécois", "Quebecois",
        "Australian", "New Zealand",
        "New Zealander", "American Indian", "Native American", "New Mexican",
        # British Isles
        "British", "English", "Scottish", "Scots", "Welsh", "Irish", "Northern Irish", "Manx",
        # Western and Northern Europe
        "French", "German", "West German", "East German", "Dutch", "Belgian", "Flemish",
        "Walloon", "Luxembourgish", "Luxembourger", "Swiss", "Austrian", "Liechtensteiner",
        "Monégasque", "Monegasque", "Swedish", "Norwegian", "Danish", "Finnish", "Icelandic",
        "Faroese", "Greenlandic",
        # Southern Europe
        "Italian", "Sicilian", "Sardinian", "Spanish", "Catalan", "Basque", "Galician",
        "Portuguese", "Maltese", "Greek", "Cypriot", "Greek Cypriot", "Sammarinese", "Andorran",
        "Corsican",
        # Central and Eastern Europe
        "Polish", "Czech", "Slovak", "Czechoslovak", "Czechoslovakian", "Hungarian", "Romanian",
        "Moldovan", "Bulgarian", "Serbian", "Croatian", "Bosnian", "Herzegovinian",
        "Slovenian", "Slovene", "Montenegrin", "Macedonian", "Albanian", "Kosovar", "Kosovan",
        "Yugoslav", "Yugoslavian", "Russian", "Soviet", "Ukrainian", "Belarusian",
        "Byelorussian", "Lithuanian", "Latvian", "Estonian", "Prussian",
    ),
    **_regions(
        LATAM,
        "Mexican", "Guatemalan", "Honduran", "Salvadoran", "Salvadorean", "Nicaraguan",
        "Costa Rican", "Panamanian", "Belizean", "Cuban", "Dominican", "Haitian", "Jamaican",
        "Puerto Rican", "Trinidadian", "Tobagonian", "Barbadian", "Bajan", "Bahamian",
        "Grenadian", "Antiguan", "Vincentian", "Saint Lucian", "Kittitian", "Guadeloupean",
        "Martiniquais", "Curaçaoan", "Aruban", "West Indian", "Colombian", "Venezuelan",
        "Ecuadorian", "Peruvian", "Bolivian", "Chilean", "Argentine", "Argentinian",
        "Argentinean", "Uruguayan", "Paraguayan", "Brazilian", "Guyanese", "Surinamese",
        "Latin American", "South American", "Central American",
    ),
    **_regions(
        S_AFRICA,
        "South African", "Nigerian", "Ghanaian", "Kenyan", "Ugandan", "Tanzanian", "Rwandan",
        "Burundian", "Ethiopian", "Eritrean", "Somali", "Somalian", "Djiboutian", "South Sudanese",
        "Congolese", "Cameroonian", "Ivorian", "Senegalese", "Malian", "Gambian", "Guinean",
        "Bissau-Guinean", "Equatoguinean", "Sierra Leonean", "Liberian", "Togolese", "Beninese",
        "Burkinabé", "Burkinabe", "Nigerien", "Chadian", "Central African", "Gabonese",
        "Angolan", "Namibian", "Botswanan", "Motswana", "Zimbabwean", "Zambian", "Malawian",
        "Mozambican", "Malagasy", "Mauritian", "Seychellois", "Comorian", "Cape Verdean",
        "Swazi", "Basotho", "Mosotho", "Lesothan", "São Toméan", "West African",
        "East African",
    ),
    **_regions(
        ME_CA_NA,
        "Turkish", "Iranian", "Persian", "Iraqi", "Syrian", "Lebanese", "Jordanian", "Israeli",
        "Palestinian", "Saudi", "Saudi Arabian", "Yemeni", "Yemenite", "Omani", "Emirati",
        "Qatari", "Bahraini", "Kuwaiti", "Arab", "Kurdish", "Armenian", "Azerbaijani", "Azeri",
        "Georgian", "Kazakh", "Kazakhstani", "Uzbek", "Uzbekistani", "Turkmen", "Kyrgyz",
        "Kirghiz", "Tajik", "Tajikistani", "Afghan", "Afghani", "Egyptian", "Libyan", "Tunisian",
        "Algerian", "Moroccan", "Mauritanian", "Sudanese", "Sahrawi", "North African",
        "Middle Eastern",
    ),
    **_regions(
        S_ASIA,
        "Indian", "Pakistani", "Bangladeshi", "Sri Lankan", "Nepali", "Nepalese", "Bhutanese",
        "Maldivian", "Tamil", "Bengali", "Punjabi",
    ),
    **_regions(
        NE_ASIA,
        "Chinese", "Hong Kong", "Hongkonger", "Macanese", "Taiwanese", "Japanese", "Korean",
        "South Korean", "North Korean", "Mongolian", "Tibetan",
    ),
    **_regions(
        SE_ASIA,
        "Thai", "Vietnamese", "Filipino", "Filipina", "Philippine", "Indonesian", "Malaysian",
        "Malay", "Singaporean", "Burmese", "Myanmar", "Cambodian", "Khmer", "Lao", "Laotian",
        "Bruneian", "Timorese", "East Timorese",
    ),
}  # fmt: skip

#: Country names -> region, used only when no demonym is found (region rule 6).
COUNTRY_REGIONS: dict[str, str] = {
    **_regions(
        NA_EU,
        "United States", "U.S.", "USA", "Canada", "Australia", "New Zealand", "United Kingdom",
        "UK", "U.K.", "England", "Scotland", "Wales", "Northern Ireland", "Ireland", "France",
        "Germany", "Netherlands", "Belgium", "Luxembourg", "Switzerland", "Austria", "Sweden",
        "Norway", "Denmark", "Finland", "Iceland", "Italy", "Spain", "Portugal", "Malta",
        "Greece", "Cyprus", "Poland", "Czech Republic", "Czechia", "Slovakia", "Hungary",
        "Romania", "Moldova", "Bulgaria", "Serbia", "Croatia", "Bosnia", "Slovenia",
        "Montenegro", "North Macedonia", "Macedonia", "Albania", "Kosovo", "Russia",
        "Soviet Union", "New Mexico", "Ukraine", "Belarus", "Lithuania", "Latvia", "Estonia",
        "Yugoslavia",
        "Czechoslovakia", "Monaco", "Andorra", "San Marino", "Liechtenstein",
    ),
    **_regions(
        LATAM,
        "Mexico", "Guatemala", "Honduras", "El Salvador", "Nicaragua", "Costa Rica", "Panama",
        "Belize", "Cuba", "Dominican Republic", "Haiti", "Jamaica", "Puerto Rico",
        "Trinidad and Tobago", "Barbados", "Bahamas", "Colombia", "Venezuela", "Ecuador",
        "Peru", "Bolivia", "Chile", "Argentina", "Uruguay", "Paraguay", "Brazil", "Guyana",
        "Suriname",
    ),
    **_regions(
        S_AFRICA,
        "South Africa", "Nigeria", "Ghana", "Kenya", "Uganda", "Tanzania", "Rwanda", "Burundi",
        "Ethiopia", "Eritrea", "Somalia", "South Sudan", "Congo", "Cameroon", "Ivory Coast",
        "Côte d'Ivoire", "Senegal", "Mali", "Gambia", "Guinea", "Sierra Leone", "Liberia",
        "Togo", "Benin", "Burkina Faso", "Niger", "Gabon", "Angola", "Namibia", "Botswana",
        "Zimbabwe", "Zambia", "Malawi", "Mozambique", "Madagascar", "Mauritius", "Cape Verde",
    ),
    **_regions(
        ME_CA_NA,
        "Turkey", "Iran", "Iraq", "Syria", "Lebanon", "Israel", "Palestine", "Saudi Arabia",
        "Yemen", "Oman", "United Arab Emirates", "UAE", "Qatar", "Bahrain", "Kuwait", "Armenia",
        "Azerbaijan", "Kazakhstan", "Uzbekistan", "Turkmenistan", "Kyrgyzstan", "Tajikistan",
        "Afghanistan", "Egypt", "Libya", "Tunisia", "Algeria", "Morocco", "Mauritania", "Sudan",
    ),
    **_regions(
        S_ASIA, "India", "Pakistan", "Bangladesh", "Sri Lanka", "Nepal", "Bhutan", "Maldives"
    ),
    **_regions(
        NE_ASIA, "China", "Hong Kong", "Macau", "Taiwan", "Japan", "Korea", "South Korea",
        "North Korea", "Mongolia", "Tibet",
    ),
    **_regions(
        SE_ASIA, "Thailand", "Vietnam", "Philippines", "Indonesia", "Malaysia", "Singapore",
        "Myanmar", "Burma", "Cambodia", "Laos", "Brunei", "East Timor",
    ),
}  # fmt: skip

#: Recognised but outside the paper's seven regions: matched so that they cannot be misread as a
#: shorter phrase ("Papua New Guinean" is not "Guinean"), then dropped (region rule 7).
NO_REGION: tuple[str, ...] = (
    "Samoan", "Tongan", "Fijian", "Papua New Guinean", "Papua New Guinea", "New Guinea",
    "Tahitian", "Polynesian", "Micronesian", "Melanesian", "Indian Ocean",
)  # fmt: skip

_NOT_NATIONALITY_AFTER = re.compile(
    r"[-\s](?:born|based|raised)\b"
    r"|\s+(?:descent|origin|ancestry|heritage|extraction|parentage|background)\b",
    re.IGNORECASE,
)
_HYPHEN = re.compile(r"[ \t]*[-\u2010\u2011\u2013][ \t]*")
_SPACE = re.compile(r"[ \t]+")
_COORDINATION = re.compile(r"[ \t]*(?:,|/|,?[ \t]+(?:and|or)\b)[ \t]*", re.IGNORECASE)
_COPULA = re.compile(r"\b(?:is|was|are|were)\b")


def _phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    """Longest phrase first, whole words; single words must be capitalised as written."""
    alternatives = []
    for phrase in sorted(phrases, key=len, reverse=True):
        escaped = re.escape(phrase)
        alternatives.append(f"(?i:{escaped})" if " " in phrase else escaped)
    return re.compile(r"(?<![\w.])(?:" + "|".join(alternatives) + r")(?!\w)")


_DEMONYM_LOOKUP: dict[str, str | None] = {
    **{k.lower(): v for k, v in DEMONYM_REGIONS.items()},
    **dict.fromkeys((p.lower() for p in NO_REGION), None),
}
_COUNTRY_LOOKUP: dict[str, str | None] = {
    **{k.lower(): v for k, v in COUNTRY_REGIONS.items()},
    **dict.fromkeys((p.lower() for p in NO_REGION), None),
}
_DEMONYM_RE = _phrase_pattern([*DEMONYM_REGIONS, *NO_REGION])
_COUNTRY_RE = _phrase_pattern([*COUNTRY_REGIONS, *NO_REGION])


@dataclass(frozen=True)
class Mention:
    """One nationality word in a text.

    ``region`` is None for the phrases in NO_REGION; ``primary`` is False for an ancestry qualifier
    inside a chain ("Indian" in "Indian-American").
    """

    phrase: str
    region: str | None
    primary: bool = True


def first_sentence(article: str) -> str:
    """The abstract's first sentence: up to a line break or a ``.``/``!``/``?`` that ends a word of
    two or more lower-case letters or digits (so "Jr.", "U.S.", "R. Madhavan" do not end it)."""
    line = article.strip().split("\n", 1)[0]
    end = re.search(r"(?<=[a-z0-9)\"'\u201d]{2}[.!?])\s", line)
    return line[: end.start()] if end else line


def after_copula(sentence: str) -> str:
    """The part of a first sentence after its first is/was ("X is an American actor" ->
    "an American actor"), so that a name ("French Montana", "Chris Jordan", "India Hicks") is not
    read as a nationality; the whole sentence when it has no such verb."""
    verb = _COPULA.search(sentence)
    return sentence[verb.end() :] if verb else sentence


def first_nationalities(text: str, *, countries: bool = False) -> list[Mention]:
    """The first group of nationality words in ``text`` (region rules 2-4), or [] when none.

    A group is a run of matches joined by a hyphen or a space (a chain, read as ancestry +
    nationality: only the last element is ``primary``, except that a space after "British" makes
    "British" the nationality) or by "and", "or", "," or "/" (dual nationalities, all primary).
    A group followed by ``-born``, ``-based``, ``descent``... is skipped and the next one is taken.
    """
    pattern, lookup = (
        (_COUNTRY_RE, _COUNTRY_LOOKUP) if countries else (_DEMONYM_RE, _DEMONYM_LOOKUP)
    )
    matches = list(pattern.finditer(text))
    group: list[re.Match[str]] = []
    links: list[str] = []  # links[i] joins group[i] and group[i + 1]: "hyphen", "space" or "and"
    for i, match in enumerate(matches):
        group.append(match)
        following = matches[i + 1] if i + 1 < len(matches) else None
        between = text[match.end() : following.start()] if following is not None else None
        if between is not None and _HYPHEN.fullmatch(between):
            links.append("hyphen")
            continue
        if between is not None and _SPACE.fullmatch(between):
            links.append("space")
            continue
        if between is not None and _COORDINATION.fullmatch(between):
            links.append("and")
            continue
        if not any(_NOT_NATIONALITY_AFTER.match(text, m.end()) for m in group):
            return _mentions(group, links, lookup)
        group, links = [], []  # rule 3: a birthplace, a residence or an ancestry
    return []


def _mentions(
    group: list[re.Match[str]], links: list[str], lookup: Mapping[str, str | None]
) -> list[Mention]:
    primary = [True] * len(group)
    for j, link in enumerate(links):
        if link == "space" and group[j].group(0) == "British":
            primary[j + 1] = False  # British usage: "British Chinese" is a British national
        elif link in ("hyphen", "space"):
            primary[j] = False  # "Indian-American", "Cambodian American": the last one counts
    return [
        Mention(m.group(0), lookup[m.group(0).lower()], is_primary)
        for m, is_primary in zip(group, primary, strict=True)
    ]


def infer_region(description: str, article: str) -> tuple[str, str]:
    """``(region, evidence)`` from a description and an abstract (rules in the module docstring)."""
    lead = after_copula(first_sentence(article))
    kind = "demonym"
    described, abstract = first_nationalities(description), first_nationalities(lead)
    if not described and not abstract:
        kind = "country"
        described = first_nationalities(description, countries=True)
        abstract = first_nationalities(lead, countries=True)
    if not described and not abstract:
        return UNKNOWN, "no nationality in description or first sentence"
    outside = [m.phrase for m in described + abstract if m.region is None]
    described = [m for m in described if m.region is not None]
    abstract = [m for m in abstract if m.region is not None]
    if not described and not abstract:
        return UNKNOWN, f"{kind} {_quoted(outside)}: no region in the paper's table"
    d_regions = {str(m.region) for m in described}
    a_regions = {str(m.region) for m in abstract}
    a_primary = {str(m.region) for m in abstract if m.primary}
    if not abstract:
        candidates = d_regions
    elif not described:
        candidates = a_primary
    else:  # rule 6: the two sources must agree
        candidates = d_regions & a_regions
        if len(candidates) > 1 and candidates & a_primary:
            candidates &= a_primary
    said = []
    if described:
        said.append(f"description {_quoted([m.phrase for m in described])}")
    if abstract:
        said.append(f"first sentence {_quoted([m.phrase for m in abstract])}")
    evidence = f"{kind} " + " + ".join(said)
    if len(candidates) == 1:
        region = candidates.pop()
        return region, f"{evidence} -> {region}"
    listing = "; ".join(f"'{m.phrase}' -> {m.region}" for m in _unique(described + abstract))
    return UNKNOWN, f"{evidence}: conflicting ({listing})"


def _unique(mentions: list[Mention]) -> list[Mention]:
    seen: dict[str, Mention] = {}
    for m in mentions:
        seen.setdefault(m.phrase.lower(), m)
    return list(seen.values())


def _quoted(words: list[str]) -> str:
    return ", ".join(f"'{w}'" for w in dict.fromkeys(words))


# --------------------------------------------------------------------------------------------
# Reading and writing the Knowledge Graph JSON
# --------------------------------------------------------------------------------------------

_KG_CONTEXT = {
    "@vocab": "http://schema.org/",
    "detailedDescription": "goog:detailedDescription",
    "resultScore": "goog:resultScore",
    "kg": "http://g.co/kg",
    "EntitySearchResult": "goog:EntitySearchResult",
    "goog": "http://schema.googleapis.com/",
}
_WIKIPEDIA_LICENSE = (
    "https://en.wikipedia.org/wiki/"
    "Wikipedia:Text_of_Creative_Commons_Attribution-ShareAlike_3.0_Unported_License"
)
_WIKIPEDIA_PREFIX = "https://en.wikipedia.org/wiki/"


def identity_from_filename(name: str) -> str:
    """``Bios/011zfz.json`` -> ``m.011zfz`` (the release drops the ``m.`` from file names)."""
    stem = posixpath.basename(name.replace("\\", "/"))
    if stem.lower().endswith(".json"):
        stem = stem[: -len(".json")]
    return normalise_identity(stem)


def normalise_identity(identity: str) -> str:
    """A MID with the ``m.`` prefix: ``011zfz`` and ``m.011zfz`` both give ``m.011zfz``."""
    identity = identity.strip()
    return identity if identity.startswith("m.") else f"m.{identity}"


def _unknown(identity: str, name: str, why: str) -> Biography:
    return Biography(identity, name, UNKNOWN, UNKNOWN, why, why)


def parse_biography(identity: str, json_text: str | bytes, source: str) -> Biography:
    """One Knowledge Graph JSON text -> a :class:`Biography`.

    ``identity`` is the MID from the file name (with or without ``m.``); the JSON's ``@id`` is only
    cross-checked (a mismatch is logged, the file name wins: it is what the labels join on).
    Malformed JSON or an unexpected shape gives gender and region ``unknown`` with the reason as
    evidence; bytes that are not UTF-8 text raise ``ValueError`` naming ``source``.
    """
    identity = normalise_identity(identity)
    if isinstance(json_text, (bytes, bytearray)):
        try:
            json_text = bytes(json_text).decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{source}: not UTF-8 text (byte {err.start}); expected Knowledge Graph JSON"
            ) from err
    if not isinstance(json_text, str):
        raise ValueError(f"{source}: expected JSON text or bytes, got {type(json_text).__name__}")
    try:
        document = json.loads(json_text)
    except json.JSONDecodeError as err:
        return _unknown(identity, "", f"malformed JSON at line {err.lineno} col {err.colno}")
    elements = document.get("itemListElement") if isinstance(document, dict) else None
    if not isinstance(elements, list) or not elements:
        return _unknown(identity, "", "no itemListElement in the JSON")
    result = elements[0].get("result") if isinstance(elements[0], dict) else None
    if not isinstance(result, dict):
        return _unknown(identity, "", "itemListElement[0] has no result")
    kg_id = result.get("@id")
    if isinstance(kg_id, str) and kg_id != f"kg:/m/{identity[2:]}":
        log.warning(
            "%s: file name says %s but @id is %s; keeping %s", source, identity, kg_id, identity
        )
    detailed = result.get("detailedDescription")
    detailed = detailed if isinstance(detailed, dict) else {}
    article = _text(detailed.get("articleBody"))
    description = _text(result.get("description"))
    name = _text(result.get("name")) or _name_from_wikipedia_url(_text(detailed.get("url")))
    gender, gender_evidence = infer_gender(article, description)
    region, region_evidence = infer_region(description, article)
    return Biography(identity, name, gender, region, gender_evidence, region_evidence)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _name_from_wikipedia_url(url: str) -> str:
    """Fallback name when the result has none: the Wikipedia article title of the abstract."""
    if not url.startswith(_WIKIPEDIA_PREFIX):
        return ""
    return urllib.parse.unquote(url[len(_WIKIPEDIA_PREFIX) :]).replace("_", " ")


def write_biography_json(
    identity: str, name: str, description: str, article: str, *, result_score: float = 10.0
) -> str:
    """A Knowledge Graph ``ItemList`` JSON text in the release files' shape (for synthetic data)."""
    mid = normalise_identity(identity)[2:]
    result = {
        "description": description,
        "@type": ["Person", "Thing"],
        "name": name,
        "detailedDescription": {
            "license": _WIKIPEDIA_LICENSE,
            "url": _WIKIPEDIA_PREFIX + urllib.parse.quote(name.replace(" ", "_"), safe="_()'.,-"),
            "articleBody": article,
        },
        "@id": f"kg:/m/{mid}",
    }
    document = {
        "@type": "ItemList",
        "@context": _KG_CONTEXT,
        "itemListElement": [
            {"@type": "EntitySearchResult", "result": result, "resultScore": result_score}
        ],
    }
    return json.dumps(document)


def _zip_members(data: bytes, uri: str) -> Iterable[tuple[str, bytes, str]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise ValueError(f"{uri}: not a zip archive ({err}); expected Bios.zip") from err
    with archive:
        for info in archive.infolist():
            base = posixpath.basename(info.filename)
            if info.is_dir() or not base.lower().endswith(".json") or base.startswith("._"):
                continue
            yield info.filename, archive.read(info), f"{uri}!{info.filename}"


def read_biographies(uri: str) -> dict[str, Biography]:
    """Every biography in a zip, a folder/prefix of ``.json`` files or one such file."""
    location = Location.of(uri)
    if location.is_dir():
        entries: Iterable[tuple[str, bytes, str]] = (
            (path, Location(location.fs, path, path).read_bytes(), location.uri_of(path))
            for path in location.list_files()
            if path.lower().endswith(".json")
        )
    elif location.exists() and location.path.lower().endswith(".json"):
        entries = [(location.path, location.read_bytes(), location.uri)]
    elif location.exists():
        entries = _zip_members(location.read_bytes(), location.uri)
    else:
        raise FileNotFoundError(f"{uri}: no such biography zip or folder")
    biographies: dict[str, Biography] = {}
    sources: dict[str, str] = {}
    for name, data, source in entries:
        identity = identity_from_filename(name)
        if identity in sources:
            raise ValueError(f"{source}: identity {identity} already read from {sources[identity]}")
        sources[identity] = source
        biographies[identity] = parse_biography(identity, data, source)
    return biographies


def biographies_table(bios: Mapping[str, Biography] | Iterable[Biography]) -> pa.Table:
    """``identity, name, gender, region`` (all strings), one row per person, sorted by identity."""
    rows = sorted(bios.values() if isinstance(bios, Mapping) else bios, key=lambda b: b.identity)
    for bio in rows:
        if bio.gender not in GENDERS or bio.region not in REGIONS:
            raise ValueError(
                f"{bio.identity}: gender {bio.gender!r} / region {bio.region!r} unknown"
            )
    return pa.table(
        {
            "identity": pa.array([b.identity for b in rows], pa.string()),
            "name": pa.array([b.name for b in rows], pa.string()),
            "gender": pa.array([b.gender for b in rows], pa.string()),
            "region": pa.array([b.region for b in rows], pa.string()),
        }
    )
