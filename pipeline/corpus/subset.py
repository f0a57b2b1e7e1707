"""`facs corpus subset`: deterministic, gender-balanced (optionally region-balanced) subsets.

The paper studies F1 against the number of pre-training images (1k, 2k, 10k, all) and of distinct
people (12, 200, 600, 1000, all), with equal numbers of women and men. A subset is saved as the list
of its rows' content hashes, so it names exact rows and survives the corpus growing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.corpus.manifest import CorpusError, SubsetEntry, load_manifest, save_manifest
from pipeline.corpus.read import read_metadata_table, take_rows
from pipeline.run_storage import check_kept
from pipeline.storage import Location

BALANCED_GENDERS = ("female", "male")


@dataclass
class SubsetConfig:
    corpus: str = field(default="", metadata={"help": "corpus root (local folder or s3:// URI)"})
    name: str = field(
        default="", metadata={"help": "subset name (default: images-N / identities-N)"}
    )
    version: int | None = field(default=None, metadata={"help": "corpus version (default: latest)"})
    images: int | None = field(
        default=None,
        metadata={
            "help": "number of images in the subset; with --identities, the image budget shared "
            "evenly by those people (people count and image count then vary independently)"
        },
    )
    identities: int | None = field(default=None, metadata={"help": "number of distinct people"})
    balance: Literal["gender", "region"] = field(
        default="gender", metadata={"help": "balance over gender, or over gender x region"}
    )
    seed: int = field(
        default=0, metadata={"help": "random seed: the same seed gives the same subset"}
    )

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


def _coded(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str | None]]:
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
    return codes, column.dictionary.to_pylist()


def _values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A string column as an object array in which equal values are one Python object: a
    million rows of a few thousand people cost a pointer a row, not a string a row."""
    codes, values = _coded(column)
    return np.array(values + [None], dtype=object)[codes]


def _strata(table: pa.Table, balance: str) -> np.ndarray:
    if balance == "gender":
        return _values(table.column("gender"))
    genders, gender_values = _coded(table.column("gender"))
    regions, region_values = _coded(table.column("region"))
    # The few distinct gender|region pairs are joined once, not once a row.
    width = len(region_values) + 1
    names = np.array(
        [f"{g}|{r}" for g in gender_values + [None] for r in region_values + [None]], dtype=object
    )
    return names[(genders % (len(gender_values) + 1)) * width + regions % width]


def _usable(strata: np.ndarray) -> np.ndarray:
    """Rows whose gender is one a balanced subset counts (decided once per distinct stratum)."""
    decided = {s: s is not None and s.split("|")[0] in BALANCED_GENDERS for s in set(strata)}
    return np.fromiter((decided[s] for s in strata), bool, len(strata))


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
    usable = _usable(strata)
    if config.images is not None and config.identities is not None:
        return _people_at_budget(table, config, strata, usable, rng)
    if config.images is not None:
        capacity = {s: int(np.sum((strata == s) & usable)) for s in set(strata[usable])}
        quota = _gender_quota(capacity, config.images, config.balance)
        chosen = []
        for stratum in sorted(quota):
            rows = np.flatnonzero((strata == stratum) & usable)
            chosen.append(np.sort(rng.permutation(rows)[: quota[stratum]]))
        return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)
    identity = _values(table.column("identity"))
    people: dict[str, str] = {}
    for who, stratum, ok in zip(identity, strata, usable, strict=True):
        if ok:
            people.setdefault(who, stratum)
    capacity: dict[str, int] = {}
    for stratum in people.values():
        capacity[stratum] = capacity.get(stratum, 0) + 1
    quota = _gender_quota(capacity, config.identities, config.balance)
    picked: set[str] = set()
    for stratum in sorted(quota):
        members = sorted(p for p, s in people.items() if s == stratum)
        picked.update(rng.permutation(np.array(members, dtype=object))[: quota[stratum]].tolist())
    return np.flatnonzero(np.fromiter((p in picked for p in identity), bool, len(identity)))


def _people_at_budget(
    table: pa.Table,
    config: SubsetConfig,
    strata: np.ndarray,
    usable: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """``identities`` people (gender-balanced) with ``images // identities`` (+1) images each."""
    people, share = config.identities, config.images // config.identities
    extra = config.images - share * people
    needed = share + (1 if extra else 0)
    identity = _values(table.column("identity"))
    rows_of: dict[str, list[int]] = {}
    stratum_of: dict[str, str] = {}
    for row, (who, stratum, ok) in enumerate(zip(identity, strata, usable, strict=True)):
        if ok:
            rows_of.setdefault(who, []).append(row)
            stratum_of.setdefault(who, stratum)
    eligible = {who for who, rows in rows_of.items() if len(rows) >= needed}
    capacity: dict[str, int] = {}
    for who in eligible:
        capacity[stratum_of[who]] = capacity.get(stratum_of[who], 0) + 1
    try:
        quota = _gender_quota(capacity, people, config.balance)
    except CorpusError as error:
        raise CorpusError(
            f"{people} people with {needed} images each: only {len(eligible)} people have "
            f"{needed} or more images ({error})"
        ) from None
    picked: list[str] = []
    for stratum in sorted(quota):
        members = sorted(who for who in eligible if stratum_of[who] == stratum)
        picked += rng.permutation(np.array(members, dtype=object))[: quota[stratum]].tolist()
    chosen = []
    for k, who in enumerate(sorted(picked)):
        count = share + (1 if k < extra else 0)
        chosen.append(rng.permutation(np.array(rows_of[who]))[:count])
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
