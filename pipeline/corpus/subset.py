"""`facs corpus subset`: deterministic, gender-balanced (optionally region-balanced) subsets.

The paper studies F1 against the number of pre-training images (1k, 2k, 10k, all) and of distinct
people (12, 200, 600, 1000, all), with equal numbers of women and men. A subset is saved as the list
of its rows' content hashes, so it names exact rows and survives the corpus growing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.corpus.manifest import CorpusError, SubsetEntry, load_manifest, save_manifest
from pipeline.corpus.read import read_metadata_table, take_rows
from pipeline.options import option
from pipeline.run_storage import check_kept
from pipeline.storage import Location

BALANCED_GENDERS = ("female", "male")


@dataclass
class SubsetConfig:
    corpus: str = option("", "corpus root (local folder or s3:// URI)")
    name: str = option("", "subset name (default: images-N / identities-N)")
    version: int | None = option(None, "corpus version (default: latest)")
    images: int | None = option(
        None,
        "number of images in the subset; with --identities, the image budget shared "
        "evenly by those people (people count and image count then vary independently)",
    )
    identities: int | None = option(None, "number of distinct people")
    balance: Literal["gender", "region"] = option(
        "gender", "balance over gender, or over gender x region"
    )
    seed: int = option(0, "random seed: the same seed gives the same subset")

    def __post_init__(self) -> None:
        for name in ("version", "images", "identities"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"SubsetConfig.{name}: expected a number >= 1, got {value}")


def allocate(capacity: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` as evenly as possible over strata, none above its capacity (water-filling)."""
    if total > sum(capacity.values()):
        raise CorpusError(f"asked for {total} but only {sum(capacity.values())} are available")
    quota = dict.fromkeys(capacity, 0)
    left = total
    open_strata = sorted(k for k, c in capacity.items() if c > 0)
    while left > 0 and open_strata:
        share, extra = divmod(left, len(open_strata))
        for i, key in enumerate(open_strata):
            give = min(share + (1 if i < extra else 0), capacity[key] - quota[key])
            quota[key] += give
            left -= give
        open_strata = [k for k in open_strata if quota[k] < capacity[k]]
    return quota


def _coded(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """A string column as codes (``-1`` = null) into its distinct values."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    if isinstance(column, pa.ChunkedArray):
        column = (
            column.unify_dictionaries().combine_chunks()
            if column.num_chunks
            else (pa.array([], column.type))
        )
    codes = column.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    return codes, column.dictionary


@dataclass(frozen=True)
class _Strata:
    """Each row's stratum as a small integer code: a million rows cost 5 bytes each (code and
    usable flag), whatever the number of people."""

    codes: np.ndarray  # int32, a row's stratum
    names: list[str | None]  # a code's stratum: "female", or "female|Europe" with regions
    usable: np.ndarray  # bool, the row's gender is one a balanced subset counts

    def code_of(self, name: str) -> int:
        return self.names.index(name)

    def capacity(self, codes: np.ndarray) -> dict[str, int]:
        """``{stratum: how many of codes}`` for the strata present in ``codes``."""
        counts = np.bincount(codes, minlength=len(self.names))
        return {self.names[c]: int(n) for c, n in enumerate(counts) if n}


def _strata(table: pa.Table, balance: str) -> _Strata:
    genders, gender_values = _coded(table.column("gender"))
    gender_names = gender_values.to_pylist() + [None]
    if balance == "gender":
        codes, names = genders % len(gender_names), gender_names
    else:
        regions, region_values = _coded(table.column("region"))
        region_names = region_values.to_pylist() + [None]
        width = len(region_names)
        codes = (genders % len(gender_names)) * width + regions % width
        names = [f"{g}|{r}" for g in gender_names for r in region_names]
    counted = np.array(
        [n is not None and n.split("|")[0] in BALANCED_GENDERS for n in names], dtype=bool
    )
    return _Strata(codes.astype(np.int32), names, counted[codes])


def _identities(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Each row's identity code, and each code's rank in the sorted order of the identities (so
    people are ordered by name without a Python string per person)."""
    codes, values = _coded(table.column("identity"))
    rank = np.empty(len(values) + 1, dtype=np.int64)
    rank[pc.array_sort_indices(values).to_numpy()] = np.arange(len(values))
    rank[-1] = -1  # a missing identity (code -1) sorts first
    return codes, rank


def _gender_quota(capacity: dict[str, int], total: int, balance: str) -> dict[str, int]:
    """Equal numbers per gender first (the paper's balance), then evenly over regions inside it."""
    by_gender = {
        g: sum(c for k, c in capacity.items() if k.split("|")[0] == g) for g in BALANCED_GENDERS
    }
    if min(by_gender.values()) * 2 < total:
        raise CorpusError(
            f"cannot balance {total} by gender: only {by_gender} available "
            "(people of unknown gender are left out of balanced subsets)"
        )
    gender_quota = allocate(by_gender, total)
    if balance == "gender":
        return gender_quota
    quota: dict[str, int] = {}
    for g in BALANCED_GENDERS:
        inside = {k: c for k, c in capacity.items() if k.split("|")[0] == g}
        quota.update(allocate(inside, gender_quota[g]))
    return quota


def _check_sizes(config: SubsetConfig) -> None:
    """What sizes may be asked for (each size is >= 1 already: ``SubsetConfig`` checks it)."""
    if config.images is None and config.identities is None:
        raise CorpusError("give --images N, --identities N, or both (N people sharing N images)")
    both = config.images is not None and config.identities is not None
    if both and config.images < config.identities:
        raise CorpusError(
            f"--images {config.images} cannot give each of --identities "
            f"{config.identities} people at least one image"
        )


def choose_rows(table: pa.Table, config: SubsetConfig) -> np.ndarray:
    """Indices of the chosen rows of a metadata table (deterministic for a seed).

    ``images`` alone: that many images, gender-balanced. ``identities`` alone: every image of
    that many people, gender-balanced. Both: that many people, each giving an equal share of
    ``images`` (the first ``images % identities`` one more), chosen among people who have that
    many images, so the number of people varies at a fixed number of images.
    """
    _check_sizes(config)
    rng = np.random.default_rng(config.seed)
    strata = _strata(table, config.balance)
    if config.images is not None and config.identities is not None:
        return _people_at_budget(table, config, strata, rng)
    if config.images is not None:
        quota = _gender_quota(
            strata.capacity(strata.codes[strata.usable]), config.images, config.balance
        )
        chosen = []
        for stratum in sorted(quota):
            rows = np.flatnonzero((strata.codes == strata.code_of(stratum)) & strata.usable)
            chosen.append(np.sort(rng.permutation(rows)[: quota[stratum]]))
        return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)
    identity, rank = _identities(table)
    usable_rows = np.flatnonzero(strata.usable)
    people, first = np.unique(identity[usable_rows], return_index=True)
    stratum_of = strata.codes[usable_rows[first]]  # a person's stratum: that of their first row
    quota = _gender_quota(strata.capacity(stratum_of), config.identities, config.balance)
    picked = [
        rng.permutation(_by_name(people[stratum_of == strata.code_of(stratum)], rank))[
            : quota[stratum]
        ]
        for stratum in sorted(quota)
    ]
    return np.flatnonzero(np.isin(identity, np.concatenate(picked)))


def _by_name(people: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Identity codes in the sorted order of the identities they stand for."""
    return people[np.argsort(rank[people], kind="stable")]


def _people_at_budget(
    table: pa.Table, config: SubsetConfig, strata: _Strata, rng: np.random.Generator
) -> np.ndarray:
    """``identities`` people (gender-balanced) with ``images // identities`` (+1) images each."""
    people, share = config.identities, config.images // config.identities
    extra = config.images - share * people
    needed = share + (1 if extra else 0)
    identity, rank = _identities(table)
    usable_rows = np.flatnonzero(strata.usable)
    # Each person's usable rows, in row order, as one slice of ``grouped``.
    grouped = usable_rows[np.argsort(identity[usable_rows], kind="stable")]
    who, starts, counts = np.unique(identity[grouped], return_index=True, return_counts=True)
    stratum_of = strata.codes[grouped[starts]]
    eligible = counts >= needed
    try:
        quota = _gender_quota(strata.capacity(stratum_of[eligible]), people, config.balance)
    except CorpusError as error:
        raise CorpusError(
            f"{people} people with {needed} images each: only {int(eligible.sum())} people "
            f"have {needed} or more images ({error})"
        ) from None
    picked = np.concatenate(
        [
            rng.permutation(
                _by_name(who[eligible & (stratum_of == strata.code_of(stratum))], rank)
            )[: quota[stratum]]
            for stratum in sorted(quota)
        ]
    )
    at = {person: k for k, person in enumerate(who)}
    chosen = []
    for k, person in enumerate(_by_name(picked, rank)):
        count = share + (1 if k < extra else 0)
        start = starts[at[person]]
        chosen.append(rng.permutation(grouped[start : start + counts[at[person]]])[:count])
    return np.sort(np.concatenate(chosen))


def make_subset(config: SubsetConfig) -> SubsetEntry:
    if not config.corpus:
        raise CorpusError("no corpus location given: pass --corpus PATH_OR_S3_URI")
    check_kept(config.corpus, "--corpus")
    _check_sizes(config)
    manifest = load_manifest(config.corpus)
    version = manifest.latest if config.version is None else config.version
    manifest.entries_up_to(version)  # raises for a version that does not exist
    # Choosing reads three columns of every row, dictionary-encoded (a few bytes a row); the
    # subset file's columns are then read for the chosen rows alone, shard by shard.
    table = read_metadata_table(
        config.corpus, version, ["identity", "gender", "region"], dictionary=True
    )
    rows = choose_rows(table, config)
    del table
    chosen = take_rows(config.corpus, version, rows, ["content_hash", "identity", "split"])
    what = "-".join(
        f"{key}-{value}"
        for key, value in (("identities", config.identities), ("images", config.images))
        if value is not None
    )
    name = config.name or f"{what}-{config.balance}-seed{config.seed}-v{version}"
    root = Location.of(config.corpus)
    relative = f"subsets/{name}.parquet"
    target = root.join(relative)
    target.fs.create_dir(root.join("subsets").path, recursive=True)
    pq.write_table(chosen, target.path, filesystem=target.fs)
    entry = SubsetEntry(
        name=name,
        version=version,
        file=relative,
        images=chosen.num_rows,
        identities=len(set(chosen.column("identity").to_pylist())),
        spec={k: getattr(config, k) for k in ("images", "identities", "balance", "seed")},
    )
    manifest.subsets[name] = entry
    save_manifest(config.corpus, manifest)
    return entry
