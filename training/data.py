"""Corpus -> Ray Datasets -> uint8 device batches: the training input pipeline and the pixel mean."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.train
import torch
from ray.data import DataContext, ExecutionOptions
from ray.data.collate_fn import ArrowBatchCollateFn

from pipeline.corpus.read import READ_TASK_ENV, read_corpus
from pipeline.status_write import bound_object_store, store_budget
from pipeline.vocabulary import FACE_SIZE, OPENFACE_AUS

FACE_COLUMN = "face"
#: The pre-training targets, in the order of the model's 17 logits.
LABEL_COLUMNS: tuple[str, ...] = OPENFACE_AUS
FACE_BYTES = FACE_SIZE * FACE_SIZE
#: Bytes one training row holds once materialised in the object store (face, labels, offsets).
CACHED_ROW_BYTES = FACE_BYTES + len(LABEL_COLUMNS) + 16
#: The share of the object store a cached corpus may fill; a larger one streams every epoch, so
#: memory stays flat as the corpus grows (and the store keeps room for the streaming reads).
CACHE_STORE_SHARE = 0.5


def cache_fits(rows: int, store_bytes: float, share: float = CACHE_STORE_SHARE) -> bool:
    """Whether ``rows`` materialised rows fit in ``share`` of an object store of ``store_bytes``."""
    return rows * CACHED_ROW_BYTES <= share * store_bytes


def cached_if_fits(datasets: dict[str, ray.data.Dataset], rows: int) -> dict[str, ray.data.Dataset]:
    """``datasets`` read once into the object store when ``rows`` of them fit, else as they are.

    The decision is printed: caching a corpus past the store's budget would spill to disk (or
    fail) and hold memory that grows with the corpus, for a gain streaming does not need.
    """
    store = float(ray.cluster_resources().get("object_store_memory", 0))
    size_gb, store_gb = rows * CACHED_ROW_BYTES / 1e9, store / 1e9
    if not cache_fits(rows, store):
        print(
            f"[facs] cache_data: {rows:,} rows ({size_gb:.2f} GB) exceed "
            f"{CACHE_STORE_SHARE:.0%} of the object store ({store_gb:.1f} GB): streaming the "
            "corpus every epoch instead",
            flush=True,
        )
        return datasets
    print(
        f"[facs] cache_data: reading {rows:,} rows ({size_gb:.2f} GB) into the object store "
        f"({store_gb:.1f} GB)",
        flush=True,
    )
    return {split: dataset.materialize() for split, dataset in datasets.items()}


def ingest_config(
    datasets_to_split: str | list[str] = "all", store_bytes: float | None = None
) -> ray.train.DataConfig:
    """Ray Train's data config with its ingest options given explicitly.

    Ray Train's default ingest options copy ``ExecutionOptions.exclude_resources``, which Ray 2.60
    deprecates (a warning per dataset); these carry the same limits, order and progress settings
    from the current ``DataContext`` without it. ``store_bytes`` bounds the object store the
    ingest may fill: left to Ray, a streamed corpus larger than the store reads ahead into half
    of it whatever the trainers consume, so memory grows with the corpus up to that share.
    """
    current = DataContext.get_current().execution_options
    limits = current.resource_limits
    if store_bytes is not None:
        limits = limits.copy(object_store_memory=min(limits.object_store_memory, store_bytes))
    options = ExecutionOptions(
        resource_limits=limits,
        preserve_order=current.preserve_order,
        verbose_progress=current.verbose_progress,
    )
    return ray.train.DataConfig(datasets_to_split=datasets_to_split, execution_options=options)


def corpus_splits(
    corpus: str,
    version: int | None = None,
    subset: str | None = None,
    file_order_seed: int | None = None,
) -> dict[str, ray.data.Dataset]:
    """``{"train": ..., "val": ...}``: the corpus's identity-disjoint splits, faces and labels only.

    ``file_order_seed`` gives the train split a new file order every epoch (see ``read_corpus``).
    """
    columns = [FACE_COLUMN, *LABEL_COLUMNS]
    seeds = {"train": file_order_seed, "val": None}
    return {
        split: read_corpus(
            corpus, version, subset=subset, split=split, file_order_seed=seed
        ).select_columns(columns, runtime_env=READ_TASK_ENV)
        for split, seed in seeds.items()
    }


def faces_from_arrow(column: pa.Array | pa.ChunkedArray, where: str = "batch") -> np.ndarray:
    """A binary column of 64x64 uint8 faces -> ``(N, 64, 64)`` uint8, without a per-row loop."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.binary())
    if column.null_count:
        row = column.is_null().to_numpy(zero_copy_only=False).argmax()
        raise ValueError(f"{where}: row {row} has no face (null); expected {FACE_BYTES} bytes")
    offset_type = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    offsets = np.frombuffer(column.buffers()[1], dtype=offset_type)
    offsets = offsets[column.offset : column.offset + len(column) + 1]
    lengths = np.diff(offsets)
    if (lengths != FACE_BYTES).any():
        row = int(np.argmax(lengths != FACE_BYTES))
        raise ValueError(
            f"{where}: row {row} has a face of {lengths[row]} bytes; "
            f"expected {FACE_BYTES} ({FACE_SIZE}x{FACE_SIZE} uint8)"
        )
    if len(column) == 0:
        return np.zeros((0, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)
    return data[offsets[0] : offsets[-1]].reshape(len(column), FACE_SIZE, FACE_SIZE)


def labels_from_arrow(
    table: pa.Table, where: str = "batch", columns: Sequence[str] = LABEL_COLUMNS
) -> np.ndarray:
    """The AU ``columns`` -> ``(N, K)`` uint8 presence bits; a null or non-0/1 label is an error."""
    labels = np.empty((table.num_rows, len(columns)), dtype=np.uint8)
    for k, au in enumerate(columns):
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


class FaceBatchCollate(ArrowBatchCollateFn):
    """Arrow batch -> ``{"faces": uint8 (N, 64, 64), "labels": uint8 (N, K)}`` CPU tensors.

    ``label_columns`` name the targets in the order of the model's logits (the corpus's 17
    OpenFace AUs by default, DISFA's 12 when fine-tuning). With ``subjects``, each row's subject
    also travels, as its index in that list (-1 if missing: strings cannot ride to the device),
    with its ``frame`` number, so every worker can report exactly whose frames it was fed.

    The bytes stay uint8 until they reach the device (a quarter of float32's traffic); Ray moves
    the dict to the worker's device (and pins it, if asked) after this runs in its prefetch thread.
    """

    def __init__(
        self,
        label_columns: Sequence[str] = LABEL_COLUMNS,
        subjects: Sequence[str] | None = None,
        where: str = "batch",
    ) -> None:
        self.label_columns = tuple(label_columns)
        self.subjects = None if subjects is None else pa.array(list(subjects), pa.string())
        self.where = where

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        faces = faces_from_arrow(batch.column(FACE_COLUMN), where=self.where)
        labels = labels_from_arrow(batch, self.where, self.label_columns)
        # np.frombuffer views are read-only; torch wants writable memory to own.
        out = {"faces": torch.from_numpy(faces.copy()), "labels": torch.from_numpy(labels)}
        if self.subjects is not None:
            codes = pc.index_in(batch.column("subject"), value_set=self.subjects).fill_null(-1)
            frames = batch.column("frame").to_numpy(zero_copy_only=False).astype(np.int64)
            out["subjects"] = torch.from_numpy(
                codes.to_numpy(zero_copy_only=False).astype(np.int64)
            )
            out["frames"] = torch.from_numpy(frames)
        return out


@dataclass(frozen=True)
class BatchOptions:
    """How a worker iterates its shard each epoch."""

    batch_size: int
    shuffle_buffer: int = 0
    prefetch_batches: int = 4
    drop_last: bool = True
    seed: int | None = None


def device_batches(
    shard: ray.data.DataIterator,
    options: BatchOptions,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    collate: FaceBatchCollate | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """``collate``'s batches (default: faces and the 17 AUs) on ``device``, at most ``limit``."""
    device = torch.device(device)
    shuffle = options.shuffle_buffer if options.shuffle_buffer > 0 else None
    if shuffle is not None:
        shuffle = max(shuffle, options.batch_size)
    batches = shard.iter_torch_batches(
        batch_size=options.batch_size,
        collate_fn=collate or FaceBatchCollate(),
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


def epoch_batches(
    shard: ray.data.DataIterator,
    options: BatchOptions,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    min_steps: int = 0,
    collate: FaceBatchCollate | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of :func:`device_batches`: passes over ``shard`` (each reshuffled) until the
    epoch has at least ``min_steps`` batches, never more than ``limit``.

    Every worker of a run gets an equal shard, hence the same batches per pass and passes per
    epoch: DDP's collective calls stay in step. A pass without a batch ends the epoch.
    """
    taken, passes = 0, 0
    while True:
        left = None if limit is None else limit - taken
        if left is not None and left <= 0:
            return
        seed = None if options.seed is None else options.seed + 7919 * passes
        before = taken
        for batch in device_batches(shard, replace(options, seed=seed), device, left, collate):
            taken += 1
            yield batch
        passes += 1
        if taken == before or taken >= min_steps:
            return


def pixel_sums(batch: pa.Table) -> pa.Table:
    """One row: the sum of the batch's pixels and how many there are."""
    faces = faces_from_arrow(batch.column(FACE_COLUMN), where="pixel mean")
    return pa.table(
        {
            "pixel_sum": pa.array([int(faces.sum(dtype=np.uint64))], pa.uint64()),
            "pixels": pa.array([faces.size], pa.uint64()),
        }
    )


def pixel_mean(dataset: ray.data.Dataset, store_bytes: int = store_budget(1)) -> float:
    """Mean pixel of the dataset's faces on the [0, 1] scale (one pass; the paper's normaliser),
    holding at most ``store_bytes`` of object store whatever the corpus's size."""
    sums = dataset.select_columns([FACE_COLUMN], runtime_env=READ_TASK_ENV).map_batches(
        pixel_sums, batch_format="pyarrow", batch_size=4096, runtime_env=READ_TASK_ENV
    )
    bound_object_store(sums, store_bytes)
    sums = sums.take_all()
    total = sum(int(row["pixel_sum"]) for row in sums)
    count = sum(int(row["pixels"]) for row in sums)
    if count == 0:
        raise ValueError("pixel_mean: the dataset has no faces (is the train split empty?)")
    return total / count / 255.0
