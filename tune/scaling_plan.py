"""Scaling points planned: sizes -> gender-balanced corpus subsets, checked before anything trains."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.corpus.manifest import CorpusError, SubsetEntry, load_manifest, save_manifest
from pipeline.corpus.read import METADATA_COLUMNS, read_metadata_table
from pipeline.corpus.subset import BALANCED_GENDERS, SubsetConfig, choose_rows
from pipeline.storage import Location
from tune.scaling_config import ALL, ScalingStudyConfig

#: The key of the point that trains on the whole version (shared by both tables).
WHOLE = ALL


@dataclass(frozen=True)
class PlannedPoint:
    """One point of the curves: which rows it pre-trains on, before anything runs."""

    key: str  # "images-1000", "identities-12" or "all"
    axes: tuple[str, ...]  # the tables/figures it belongs to
    subset: str | None  # corpus subset name; None = the whole version
    images: int  # training images (split == train) the pre-training sees
    people: int  # distinct people among them
    val_images: int  # validation rows (the version's whole val split, at every point)
    chosen: pa.Table | None = field(default=None, repr=False, compare=False)  # subset rows


def labelled_rows(corpus: str, version: int) -> pa.Table:
    """The version's rows that pre-training reads (labelled ones), without pixels."""
    table = read_metadata_table(corpus, version, columns=[*METADATA_COLUMNS, "label_source"])
    return table.filter(pc.not_equal(table["label_source"], "none"))


def largest_balanced(train: pa.Table, axis: str) -> int:
    """The biggest gender-balanced size the training rows allow (twice the rarer gender)."""
    gender = np.asarray(train.column("gender").to_pylist(), dtype=object)
    if axis == "images":
        counts = [int(np.sum(gender == g)) for g in BALANCED_GENDERS]
    else:
        identity = np.asarray(train.column("identity").to_pylist(), dtype=object)
        counts = [len(set(identity[gender == g])) for g in BALANCED_GENDERS]
    return 2 * min(counts)


def subset_name(axis: str, size: int, config: ScalingStudyConfig, version: int) -> str:
    budget = (
        f"-images-{config.identity_images}"
        if axis == "identities" and config.identity_images
        else ""
    )
    return f"scaling-{axis}-{size}{budget}-{config.balance}-seed{config.subset_seed}-v{version}"


def plan_points(config: ScalingStudyConfig, version: int) -> list[PlannedPoint]:
    """Every point the experiment trains, with its rows chosen; raises ``CorpusError`` naming the
    size when the corpus cannot give it (before any training or subset is written)."""
    rows = labelled_rows(config.corpus, version)
    train = rows.filter(pc.equal(rows["split"], "train"))
    val_images = rows.num_rows - train.num_rows
    where = f"corpus {config.corpus} version {version}"
    if train.num_rows == 0 or val_images == 0:
        raise CorpusError(
            f"{where}: expected labelled rows in both splits, got {train.num_rows} train and "
            f"{val_images} val"
        )
    all_people = len(set(train.column("identity").to_pylist()))
    points: dict[str, PlannedPoint] = {}
    for axis, sizes in (("images", config.image_sizes()), ("identities", config.identity_sizes())):
        for size in sizes:
            if size is None:
                old = points.get(WHOLE)
                axes = (*old.axes, axis) if old else (axis,)
                points[WHOLE] = PlannedPoint(
                    WHOLE, axes, None, train.num_rows, all_people, val_images
                )
                continue
            limit = largest_balanced(train, axis)
            if size > limit:
                raise CorpusError(
                    f"scaling: --{axis} {size} is more than {where} can give: at most {limit} "
                    f"{axis} balanced by gender among its {train.num_rows} labelled training "
                    f"images of {all_people} people (use '{ALL}' for the whole corpus; sizes are "
                    "not clamped)"
                )
            sizes = {axis: size}
            if axis == "identities" and config.identity_images:
                sizes["images"] = config.identity_images  # N people share a fixed budget
            spec = SubsetConfig(
                corpus=config.corpus,
                version=version,
                balance=config.balance,
                seed=config.subset_seed,
                **sizes,
            )
            try:
                picked = train.take(pa.array(choose_rows(train, spec), type=pa.int64()))
            except CorpusError as error:
                raise CorpusError(f"scaling: --{axis} {size} on {where}: {error}") from error
            people = len(set(picked.column("identity").to_pylist()))
            points[f"{axis}-{size}"] = PlannedPoint(
                key=f"{axis}-{size}",
                axes=(axis,),
                subset=subset_name(axis, size, config, version),
                images=picked.num_rows,
                people=people,
                val_images=val_images,
                chosen=picked,
            )
    val = rows.filter(pc.equal(rows["split"], "val"))
    return [
        replace(p, chosen=pa.concat_tables([p.chosen, val])) if p.chosen is not None else p
        for p in points.values()
    ]


def write_subsets(config: ScalingStudyConfig, version: int, points: list[PlannedPoint]) -> None:
    """Save each point's rows (its training rows + the whole val split) as a named corpus subset."""
    root = Location.of(config.corpus)
    manifest = load_manifest(config.corpus)
    for point in points:
        if point.subset is None or point.chosen is None:
            continue
        relative = f"subsets/{point.subset}.parquet"
        target = root.join(relative)
        target.fs.create_dir(root.join("subsets").path, recursive=True)
        rows = point.chosen.select(["content_hash", "identity", "split"])
        pq.write_table(rows, target.path, filesystem=target.fs)
        axis = point.axes[0]
        manifest.subsets[point.subset] = SubsetEntry(
            name=point.subset,
            version=version,
            file=relative,
            images=rows.num_rows,
            identities=len(set(rows.column("identity").to_pylist())),
            spec={
                axis: int(point.key.split("-")[1]),
                **(
                    {"images": config.identity_images}
                    if axis == "identities" and config.identity_images
                    else {}
                ),
                "balance": config.balance,
                "seed": config.subset_seed,
                "split": "balanced train rows + the version's whole val split",
                "train_images": point.images,
                "train_identities": point.people,
                "val_images": point.val_images,
            },
        )
    save_manifest(config.corpus, manifest)
