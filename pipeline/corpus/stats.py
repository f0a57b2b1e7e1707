"""`facs corpus stats`: the paper's Table II (people and images by gender and region) and AU base rates."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.corpus.manifest import load_manifest
from pipeline.corpus.read import METADATA_COLUMNS, iter_metadata_tables
from pipeline.schema import UNLABELLED
from pipeline.vocabulary import GENDERS, OPENFACE_AUS, REGIONS

#: Shards whose distinct people are kept as they are before they are merged into one table.
MERGE_EVERY = 16


class _Tally:
    """Counts of a corpus scan, updated one shard at a time, in Arrow: what it keeps grows with
    people (their distinct (identity, region, gender) and first gender, a few bytes each), not
    with rows, and no row becomes a Python object."""

    def __init__(self) -> None:
        self.images = 0
        self.labelled = 0
        self.cell_images: Counter = Counter()  # (region, gender) -> images
        self.splits: Counter = Counter()
        self.au_sum = np.zeros(len(OPENFACE_AUS))
        self.au_count = np.zeros(len(OPENFACE_AUS), dtype=np.int64)
        self._cells: list[pa.Table] = []  # distinct (identity, region, gender), by shard
        self._firsts: list[pa.Table] = []  # (identity, first gender), in scan order

    def add(self, table: pa.Table) -> None:
        self.images += table.num_rows
        self.cell_images.update(_counts(table, ["region", "gender"]))
        self.splits.update({key[0]: n for key, n in _counts(table, ["split"]).items()})
        self._cells.append(table.group_by(["identity", "region", "gender"]).aggregate([]))
        self._firsts.append(_first_genders(table.select(["identity", "gender"])))
        if len(self._cells) >= MERGE_EVERY:
            self._cells = [self.people_cells()]
            self._firsts = [self.first_genders()]
        labelled = table.filter(pc.not_equal(table.column("label_source"), UNLABELLED))
        self.labelled += labelled.num_rows
        for k, au in enumerate(OPENFACE_AUS):
            column = labelled.column(au)
            self.au_sum[k] += pc.sum(column).as_py() or 0
            self.au_count[k] += len(column) - column.null_count

    def people_cells(self) -> pa.Table:
        """Each distinct (identity, region, gender) seen."""
        return (
            pa.concat_tables(self._cells).group_by(["identity", "region", "gender"]).aggregate([])
        )

    def first_genders(self) -> pa.Table:
        """Each identity with the gender of its first row (in scan order)."""
        return _first_genders(pa.concat_tables(self._firsts))


def _counts(table: pa.Table, keys: list[str]) -> dict[tuple, int]:
    """Rows of ``table`` per distinct value tuple of ``keys``."""
    counted = table.group_by(keys).aggregate([([], "count_all")])
    columns = [counted[key].to_pylist() for key in keys]
    return dict(zip(zip(*columns, strict=True), counted["count_all"].to_pylist(), strict=True))


def _first_genders(table: pa.Table) -> pa.Table:
    """``(identity, gender)`` of each identity's first row (ordered: no threads)."""
    firsts = table.group_by("identity", use_threads=False).aggregate([("gender", "first")])
    return firsts.rename_columns(["identity", "gender"])


def corpus_stats(corpus: str, version: int | None = None) -> dict:
    """Counts and rates for one version (a plain dict, ready for JSON: a rate that is undefined,
    as on a corpus without labels, is None). Reads the metadata columns shard by shard."""
    manifest = load_manifest(corpus)
    version = manifest.latest if version is None else version
    manifest.entries_up_to(version)  # raises for a version that does not exist (0 among them)
    tally = _Tally()
    columns = METADATA_COLUMNS + ["label_source", *OPENFACE_AUS]
    for table in iter_metadata_tables(corpus, version, columns):
        tally.add(table)
    people_in = _counts(tally.people_cells(), ["region", "gender"])
    firsts = tally.first_genders()
    by_region = {
        region: {
            gender: {
                "people": people_in.get((region, gender), 0),
                "images": tally.cell_images[(region, gender)],
            }
            for gender in GENDERS
        }
        for region in REGIONS
    }
    base_rates = {
        au: float(tally.au_sum[k] / tally.au_count[k]) if tally.au_count[k] else None
        for k, au in enumerate(OPENFACE_AUS)
    }
    first_genders = Counter(firsts["gender"].to_pylist())
    entries = manifest.entries_up_to(version)
    return {
        "version": version,
        "images": tally.images,
        "people": firsts.num_rows,
        "labelled_images": tally.labelled,
        "people_by_gender": {g: first_genders[g] for g in GENDERS},
        "splits": {s: tally.splits[s] for s in ("train", "val")},
        "table_ii": by_region,
        "au_base_rates": base_rates,
        "rows_read": sum(e.rows_read for e in entries),
        "rejected": sum(e.rejected for e in entries),
        "reject_counts": _sum_counts(e.reject_counts for e in entries),
    }


def _sum_counts(dicts) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in dicts:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))


def format_stats(stats: dict) -> str:
    """Markdown: Table II (people / images per region and gender), then AU base rates and rejects."""
    lines = [
        f"# Corpus version {stats['version']}: {stats['images']} images of {stats['people']} people "
        f"({stats['labelled_images']} labelled; split {stats['splits']})",
        "",
        "## Table II: people (images) by region and gender",
        "",
        "| Region | Female | Male | Unknown | Total |",
        "|---|---|---|---|---|",
    ]
    for region, row in stats["table_ii"].items():
        cells = [f"{row[g]['people']} ({row[g]['images']})" for g in GENDERS]
        people = sum(row[g]["people"] for g in GENDERS)
        images = sum(row[g]["images"] for g in GENDERS)
        if people:
            lines.append(f"| {region} | {' | '.join(cells)} | {people} ({images}) |")
    lines += ["", "## AU base rates (labelled rows)", "", "| AU | rate |", "|---|---|"]
    lines += [
        f"| {au} | {'n/a' if rate is None else f'{rate:.3f}'} |"
        for au, rate in stats["au_base_rates"].items()
    ]
    lines += [
        "",
        f"Rows read {stats['rows_read']}, rejected {stats['rejected']}: {stats['reject_counts']}",
    ]
    return "\n".join(lines)
