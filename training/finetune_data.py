"""DISFA frames for fine-tuning: the batches' collate, a fold's datasets, class weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.disfa import DisfaFrames, Fold
from pipeline.vocabulary import DISFA_AUS
from training.data import FACE_COLUMN, FaceBatchCollate, faces_from_arrow, pixel_mean
from training.finetune_config import FinetuneConfig

#: The fine-tuning targets, in the order of the new head's 12 logits.
LABEL_COLUMNS: tuple[str, ...] = DISFA_AUS


FRAME_COLUMNS: tuple[str, ...] = (FACE_COLUMN, "subject", "frame", *LABEL_COLUMNS)


#: The splits of a fold, in the order they are read; a sweep reads only the first two.
SPLITS: tuple[str, ...] = ("train", "val", "test")


#: Rows per block of an in-memory fold dataset (blocks are what workers' shards are cut from).
BLOCK_ROWS = 2048


def disfa_collate(subjects: Sequence[str]) -> FaceBatchCollate:
    """DISFA batches: faces, the 12 AUs, and each row's subject code and frame number."""
    return FaceBatchCollate(LABEL_COLUMNS, subjects, where="DISFA batch")


@dataclass
class FoldData:
    """A fold's datasets and the figures both arms share (identical conditions)."""

    fold: Fold
    datasets: dict[str, ray.data.Dataset]
    pixel_mean: float
    pos_weight: list[float] | None
    frames: DisfaFrames


def class_weights(frames: DisfaFrames, subjects: Sequence[str], cap: float) -> list[float]:
    """Per-AU ``negatives / positives`` over the subjects' frames, in [1, cap] (cap if none)."""
    table = frames.table(subjects, columns=list(LABEL_COLUMNS))
    n = table.num_rows
    weights = []
    for au in LABEL_COLUMNS:
        positives = int(pc.sum(table[au]).as_py() or 0)
        weights.append(
            cap if positives == 0 else float(min(cap, max(1.0, (n - positives) / positives)))
        )
    return weights


def table_pixel_mean(table: pa.Table) -> float:
    """Mean pixel of a table's faces on the [0, 1] scale."""
    faces = faces_from_arrow(table.column(FACE_COLUMN), where="pixel mean")
    if faces.size == 0:
        raise ValueError("pixel mean: no training frames")
    return float(faces.mean(dtype=np.float64)) / 255.0


def in_memory_dataset(table: pa.Table, rows_per_block: int = BLOCK_ROWS) -> ray.data.Dataset:
    """A table as a Ray Dataset already in the object store, in blocks workers can share."""
    blocks = [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)]
    return ray.data.from_arrow(blocks or [table])


def fold_data(
    config: FinetuneConfig, frames: DisfaFrames, fold: Fold, splits: Sequence[str] = SPLITS
) -> FoldData:
    """The fold's ``splits`` as datasets; with ``cache_data`` read once here into the object store.

    A sweep asks for ``("train", "val")``: the test subjects' frames are then never read at all.
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or "train" not in splits:
        raise ValueError(f"fold_data: expected splits among {SPLITS} with train, got {splits}")
    columns = list(FRAME_COLUMNS)
    everyone_by_split = {
        "train": fold.train_subjects,
        "val": fold.val_subjects,
        "test": fold.test_subjects,
    }
    splits = {split: everyone_by_split[split] for split in SPLITS if split in splits}
    if config.cache_data:
        everyone = [s for subjects in splits.values() for s in subjects]
        table = frames.table(everyone, columns=columns)
        parts = {
            split: table.filter(pc.is_in(table["subject"], value_set=pa.array(list(subjects))))
            for split, subjects in splits.items()
        }
        datasets = {split: in_memory_dataset(part) for split, part in parts.items()}
        train_mean = table_pixel_mean(parts["train"]) if config.pixel_mean is None else None
    else:
        datasets = {
            split: frames.dataset(subjects).select_columns(columns)
            for split, subjects in splits.items()
        }
        train_mean = pixel_mean(datasets["train"]) if config.pixel_mean is None else None
    mean = config.pixel_mean if config.pixel_mean is not None else float(train_mean)
    weights = (
        class_weights(frames, fold.train_subjects, config.max_pos_weight)
        if config.class_weighting
        else None
    )
    return FoldData(fold, datasets, mean, weights, frames)
