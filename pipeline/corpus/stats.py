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


class _Tally:
    """Counts of a corpus scan, updated one shard at a time (state grows with people, not rows)."""

    def __init__(self) -> None:
        self.images = 0
        self.labelled = 0
        self.cell_images: Counter = Counter()  # (region, gender) -> images
        self.cell_people: dict[tuple[str, str], set[str]] = {}
        self.gender_of: dict[str, str] = {}  # identity -> the gender of its first row
        self.splits: Counter = Counter()
        self.au_sum = np.zeros(len(OPENFACE_AUS))
        self.au_count = np.zeros(len(OPENFACE_AUS), dtype=np.int64)

    def add(self, table: pa.Table) -> None:
        self.images += table.num_rows
        identity = table.column("identity").to_pylist()
        gender = table.column("gender").to_pylist()
        region = table.column("region").to_pylist()
        for who, g, r in zip(identity, gender, region, strict=True):
            self.cell_people.setdefault((r, g), set()).add(who)
            self.gender_of.setdefault(who, g)
        self.cell_images.update(zip(region, gender, strict=True))
        self.splits.update(table.column("split").to_pylist())
        labelled = table.filter(pc.not_equal(table.column("label_source"), UNLABELLED))
        self.labelled += labelled.num_rows
        for k, au in enumerate(OPENFACE_AUS):
            column = labelled.column(au)
            self.au_sum[k] += pc.sum(column).as_py() or 0
            self.au_count[k] += len(column) - column.null_count


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
    by_region = {
        region: {
            gender: {
                "people": len(tally.cell_people.get((region, gender), ())),
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
    first_genders = Counter(tally.gender_of.values())
    entries = manifest.entries_up_to(version)
    return {
        "version": version,
        "images": tally.images,
        "people": len(tally.gender_of),
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
