"""DISFA frames for fine-tuning: Arrow batches with subject codes, a fold's datasets, class weights."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.train
import ray.train.torch
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from pipeline.disfa import DisfaFrames, Fold
from pipeline.vocabulary import DISFA_AUS
from training.data import FACE_COLUMN, BatchOptions, faces_from_arrow, pixel_mean
from training.finetune_config import FinetuneConfig

#: The fine-tuning targets, in the order of the new head's 12 logits.
LABEL_COLUMNS: tuple[str, ...] = DISFA_AUS


FRAME_COLUMNS: tuple[str, ...] = (FACE_COLUMN, "subject", "frame", *LABEL_COLUMNS)


#: The splits of a fold, in the order they are read; a sweep reads only the first two.
SPLITS: tuple[str, ...] = ("train", "val", "test")


#: Rows per block of an in-memory fold dataset (blocks are what workers' shards are cut from).
BLOCK_ROWS = 2048


def labels_from_table(table: pa.Table, where: str = "DISFA batch") -> np.ndarray:
    """The 12 DISFA AU columns -> ``(N, 12)`` uint8; a null or non-0/1 label is an error."""
    labels = np.empty((table.num_rows, len(LABEL_COLUMNS)), dtype=np.uint8)
    for k, au in enumerate(LABEL_COLUMNS):
        column = table.column(au)
        if column.null_count:
            row = int(column.is_null().to_numpy(zero_copy_only=False).argmax())
            raise ValueError(f"{where}: row {row} has no {au} label; expected 0 or 1")
        values = column.to_numpy(zero_copy_only=False)
        bad = (values != 0) & (values != 1)
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(f"{where}: row {row} has {au} = {values[row]}; expected 0 or 1")
        labels[:, k] = values
    return labels


class DisfaBatchCollate(ArrowBatchCollateFn):
    """Arrow batch -> uint8 faces, uint8 labels, subject codes and frame numbers (CPU tensors).

    Subjects travel as their index in ``subjects`` (strings cannot ride to the device), so every
    worker can report exactly which subjects' frames it was fed.
    """

    def __init__(self, subjects: Sequence[str]) -> None:
        self.subjects = pa.array(list(subjects), pa.string())

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        faces = faces_from_arrow(batch.column(FACE_COLUMN), where="DISFA batch")
        codes = pc.index_in(batch.column("subject"), value_set=self.subjects).fill_null(-1)
        frames = batch.column("frame").to_numpy(zero_copy_only=False).astype(np.int64)
        return {
            "faces": torch.from_numpy(faces.copy()),
            "labels": torch.from_numpy(labels_from_table(batch)),
            "subjects": torch.from_numpy(codes.to_numpy(zero_copy_only=False).astype(np.int64)),
            "frames": torch.from_numpy(frames),
        }


def fold_batches(
    shard: ray.data.DataIterator,
    options: BatchOptions,
    subjects: Sequence[str],
    device: torch.device,
    limit: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """At most ``limit`` collated batches of a worker's shard, on ``device``."""
    shuffle = max(options.shuffle_buffer, options.batch_size) if options.shuffle_buffer else None
    batches = shard.iter_torch_batches(
        batch_size=options.batch_size,
        collate_fn=DisfaBatchCollate(subjects),
        device=device,
        drop_last=options.drop_last,
        local_shuffle_buffer_size=shuffle,
        local_shuffle_seed=options.seed if shuffle is not None else None,
        prefetch_batches=options.prefetch_batches,
        pin_memory=device.type == "cuda",
    )
    for count, batch in enumerate(batches):
        if limit is not None and count >= limit:
            break
        yield batch


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
