"""Synthetic people: fake Freebase MIDs, names, gender, region and Knowledge-Graph-style biographies."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

#: Characters of Freebase MIDs after "m.0" (digits and consonants, as in m.011zfz, m.059w4s).
MID_ALPHABET = "0123456789bcdfghjklmnpqrstvwxyz_"
MID_LENGTH = 5  # 32**5 = 33.5 million distinct people per seed

#: Share of people per region (our choice: web-celebrity corpora such as MS-Celeb-1M are dominated
#: by North America and Europe).
REGION_SHARES: dict[str, float] = {
    "N. America/Europe": 0.52,
    "S. Asia": 0.07,
    "S. Africa": 0.06,
    "Mid. East/C. Asia/N. Africa": 0.08,
    "Central/South America": 0.09,
    "N.E. Asia": 0.11,
    "S.E. Asia": 0.07,
}

#: Demonyms written into biographies, per region; each is one pipeline.bios recognises.
DEMONYMS: dict[str, tuple[str, ...]] = {
    "N. America/Europe": ("American", "British", "Canadian", "French", "German", "Italian",
                          "Spanish", "Swedish", "Polish", "Dutch"),
    "S. Asia": ("Indian", "Pakistani", "Bangladeshi", "Sri Lankan", "Nepalese"),
    "S. Africa": ("Nigerian", "South African", "Kenyan", "Ghanaian", "Ethiopian"),
    "Mid. East/C. Asia/N. Africa": ("Egyptian", "Iranian", "Turkish", "Moroccan", "Lebanese",
                                    "Kazakh"),
    "Central/South America": ("Mexican", "Brazilian", "Argentine", "Colombian", "Chilean",
                              "Peruvian"),
    "N.E. Asia": ("Chinese", "Japanese", "South Korean", "Taiwanese", "Mongolian"),
    "S.E. Asia": ("Thai", "Vietnamese", "Filipino", "Indonesian", "Malaysian", "Singaporean"),
}  # fmt: skip

_OCCUPATIONS: tuple[tuple[str, str, str], ...] = (
    # (occupation, field for the second sentence, female form when it differs)
    ("actor", "film and television", "actress"),
    ("singer", "popular music", "singer"),
    ("footballer", "professional football", "footballer"),
    ("journalist", "broadcast news", "journalist"),
    ("author", "contemporary fiction", "author"),
    ("politician", "national politics", "politician"),
    ("film director", "independent cinema", "film director"),
    ("tennis player", "international tennis", "tennis player"),
    ("model", "fashion", "model"),
    ("chef", "restaurant cooking", "chef"),
)
_FIRST_START = ("Al", "Bri", "Cal", "Dor", "El", "Fen", "Gar", "Hal", "Is", "Jor", "Kel", "Lor",
                "Mar", "Nor", "Or", "Per", "Quin", "Ros", "Sel", "Tor", "Ul", "Val", "Wen", "Yor")  # fmt: skip
_FIRST_END = {
    "female": ("a", "ia", "ena", "elle", "ine", "ara"),
    "male": ("o", "an", "ar", "ek", "in", "us"),
}
_SURNAME_START = ("Bar", "Cor", "Dal", "Ess", "Fal", "Gor", "Hav", "Kes", "Lan", "Mor", "Nes",
                  "Pel", "Ram", "Sor", "Tam", "Vel", "Wick", "Zan")  # fmt: skip
_SURNAME_END = ("ton", "ström", "ani", "ez", "ova", "berg", "ida", "ski", "wood", "ari", "son")


@dataclass(frozen=True)
class Person:
    """Who a synthetic identity is: what the biography says and the truth the corpus should find."""

    mid: str  # "m.0xxxxx"
    name: str
    gender: str  # "female" / "male"
    region: str  # one of vocabulary.REGIONS except "unknown"
    demonym: str
    description: str  # "American actor"
    article: str  # a short abstract whose pronouns give the gender


@functools.lru_cache(maxsize=64)
def _mid_permutation(seed: int) -> tuple[int, int]:
    """(odd multiplier, offset): ``index -> multiplier * index + offset`` is a bijection mod 32**k."""
    space = len(MID_ALPHABET) ** MID_LENGTH
    rng = np.random.default_rng([seed, 0x3D1D])
    return int(rng.integers(0, space // 2)) * 2 + 1, int(rng.integers(0, space))


def fake_mid(seed: int, index: int) -> str:
    """A Freebase-like MID, distinct for every ``index`` below 32**5 under one ``seed``."""
    space = len(MID_ALPHABET) ** MID_LENGTH
    if not 0 <= index < space:
        raise ValueError(f"person index {index} outside 0..{space - 1}")
    multiplier, offset = _mid_permutation(seed)
    value = (multiplier * index + offset) % space
    chars = []
    for _ in range(MID_LENGTH):
        value, digit = divmod(value, len(MID_ALPHABET))
        chars.append(MID_ALPHABET[digit])
    return "m.0" + "".join(reversed(chars))


def _article_for(word: str) -> str:
    return "an" if word[0].upper() in "AEIOU" else "a"


def sample_person(rng: np.random.Generator, mid: str) -> Person:
    """Gender 50/50, a region by :data:`REGION_SHARES`, a name and a biography to match."""
    gender = "female" if rng.random() < 0.5 else "male"
    regions = list(REGION_SHARES)
    shares = np.array([REGION_SHARES[r] for r in regions])
    region = regions[int(rng.choice(len(regions), p=shares / shares.sum()))]
    demonym = str(rng.choice(DEMONYMS[region]))
    first = str(rng.choice(_FIRST_START)) + str(rng.choice(_FIRST_END[gender]))
    surname = str(rng.choice(_SURNAME_START)) + str(rng.choice(_SURNAME_END))
    name = f"{first} {surname}"
    occupation, field_, female_form = _OCCUPATIONS[int(rng.integers(len(_OCCUPATIONS)))]
    if gender == "female" and rng.random() < 0.7:
        occupation = female_form
    he, his = ("she", "her") if gender == "female" else ("he", "his")
    year = int(rng.integers(1940, 2000))
    description = f"{demonym} {occupation}"
    article = (
        f"{name} is {_article_for(demonym)} {demonym} {occupation}. "
        f"{he.capitalize()} is best known for {his} work in {field_}, "
        f"where {he} has been active since {year + 20}. "
        f"Born in {year}, {he} studied at {surname} College before starting {his} career."
    )
    return Person(mid, name, gender, region, demonym, description, article)
