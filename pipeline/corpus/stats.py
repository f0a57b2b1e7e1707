"""`facs corpus stats`: the paper's Table II (people and images by gender and region) and AU base rates."""

from __future__ import annotations

import pyarrow.compute as pc

from pipeline.corpus.manifest import load_manifest
from pipeline.corpus.read import METADATA_COLUMNS, read_metadata_table
from pipeline.schema import UNLABELLED
from pipeline.vocabulary import GENDERS, OPENFACE_AUS, REGIONS


def corpus_stats(corpus: str, version: int | None = None) -> dict:
    """Counts and rates for one version (a plain dict, ready for JSON: a rate that is undefined,
    as on a corpus without labels, is None)."""
    manifest = load_manifest(corpus)
    version = manifest.latest if version is None else version
    manifest.entries_up_to(version)  # raises for a version that does not exist (0 among them)
    table = read_metadata_table(corpus, version, METADATA_COLUMNS + ["label_source", *OPENFACE_AUS])
    frame = table.to_pandas()
    people = frame.drop_duplicates("identity")
    by_region = {}
    for region in REGIONS:
        row = {}
        for gender in GENDERS:
            in_cell = frame[(frame.region == region) & (frame.gender == gender)]
            row[gender] = {"people": int(in_cell.identity.nunique()), "images": len(in_cell)}
        by_region[region] = row
    labelled = frame[frame.label_source != UNLABELLED]
    base_rates = {
        au: float(labelled[au].mean()) if len(labelled) and labelled[au].notna().any() else None
        for au in OPENFACE_AUS
    }
    entries = manifest.entries_up_to(version)
    return {
        "version": version,
        "images": len(frame),
        "people": int(people.shape[0]),
        "labelled_images": len(labelled),
        "people_by_gender": {g: int((people.gender == g).sum()) for g in GENDERS},
        "splits": {
            s: int(pc.sum(pc.equal(table.column("split"), s)).as_py() or 0)
            for s in ("train", "val")
        },
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
