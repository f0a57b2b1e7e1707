"""`facs finetune`: DISFA folds -> one Ray Train trainer per fold -> test predictions -> Table III.

``run_cross_validation(config)`` is the entry point. It ingests DISFA (cached), makes the
subject-independent folds, resolves the starting weights, and for each arm (``pretrained``,
``scratch`` or both with ``compare_init``) and fold runs a ``TorchTrainer`` over
``finetune_worker``: the 17-AU head is replaced by a 12-AU head, training stops after ``patience``
epochs without a better validation monitor, and the best weights then predict the fold's test
subjects inside the trainer (rank 0, on its GPU when it has one). Only the training split is
sharded across workers; validation and test frames are read whole by rank 0, so none is dropped
to even out shards. Each worker records the subjects its batches held, per split, and the driver
refuses a fold whose test subjects reached training or validation.

MLflow: a parent run per cross-validation (per arm), a nested run per fold with its per-epoch
metrics, the report (Table III, metric CSVs, PR/ROC plots) as artifacts of the parent, and the
final model registered as ``facs-vgg13-disfa``. With ``compare_init`` an umbrella run holds the
two arms' parent runs and the side-by-side table.

Layout under ``<storage_path>/<run_name>/``: ``<arm>-fold<k>/`` (Ray Train's checkpoints; the last
one, ``final-...``, holds the best weights, the test predictions, the kept weights' validation
predictions (per-AU thresholds are tuned on them: ``tuned_threshold_metrics``) and the subjects
each split fed the model) and ``report/``.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.train
import ray.train.torch
import torch
from ray.data.collate_fn import ArrowBatchCollateFn
from ray.train.torch import TorchTrainer
from torch import nn

from pipeline.console import PRODUCT_TAG
from pipeline.disfa import DisfaFrames, Fold, make_folds, prepare_disfa
from pipeline.ray_runtime import ensure_ray
from pipeline.run_storage import check_defaults_reachable, output_location
from pipeline.storage import Location, is_s3
from pipeline.vocabulary import DISFA_AUS, PAPER_COMPARISON_AUS
from training.augment import FaceAugment, to_model_input
from training.checkpoints import (
    TrainingState,
    load_checkpoint,
    model_from_state,
    save_checkpoint,
    unwrapped_state_dict,
)
from training.data import FACE_COLUMN, BatchOptions, faces_from_arrow, ingest_config, pixel_mean
from training.evaluate import (
    LABELER_ROW,
    CVMetrics,
    FoldPredictions,
    evaluate_folds,
    table3_markdown,
    table3_rows,
    write_report,
)
from training.finetune_config import FinetuneConfig
from training.init_weights import InitWeights, initial_model, resolve_init
from training.labeler_eval import evaluate_labeler
from training.metrics import METRIC_NAMES, au_metrics, tune_thresholds
from training.model import ModelConfig, freeze_classifier, freeze_conv_blocks
from training.model_aliases import Evaluation
from training.system_metrics import node_system_metrics
from training.tracking import (
    DatasetRef,
    RunHandle,
    create_run,
    end_run,
    git_commit,
    log_dataset,
    log_metrics,
    log_model,
    log_params,
    resolve_tracking_uri,
    set_tags,
    store_path,
    uses_default_store,
)
from training.train_loop import Autocast, EpochStats, all_reduce, gather_to_rank0, timed

log = logging.getLogger(__name__)

#: The fine-tuning targets, in the order of the new head's 12 logits.
LABEL_COLUMNS: tuple[str, ...] = DISFA_AUS
#: Where runs go without --storage-path outside a Ray job and without FACS_STORAGE_ROOT.
DEFAULT_STORAGE = "./runs/finetune"
FRAME_COLUMNS: tuple[str, ...] = (FACE_COLUMN, "subject", "frame", *LABEL_COLUMNS)
PREDICTIONS_FILE = "test_predictions.npz"
#: The kept weights' validation predictions (per-AU thresholds are tuned on them, never on test).
VAL_PREDICTIONS_FILE = "val_predictions.npz"
#: The splits of a fold, in the order they are read; a sweep reads only the first two.
SPLITS: tuple[str, ...] = ("train", "val", "test")
SUBJECTS_FILE = "subjects_seen.json"
BEST_FILE = "best_model.pt"
FINAL_PREFIX = "final"
#: Rows per block of an in-memory fold dataset (blocks are what workers' shards are cut from).
BLOCK_ROWS = 2048
#: Table III row names of the arms.
ARM_LABELS: dict[str, str] = {
    "scratch": "VGG13 from scratch (this run)",
    "pretrained": "VGG13 pre-trained (this run)",
}
#: What every worker reports to Ray Train each epoch (per-AU figures go to MLflow only).
REPORTED = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_f1_mean",
    "val_pr_auc_mean",
    "monitor",
    "best_monitor",
    "best_epoch",
    "stopped_early",
    "epoch_time_s",
)


# ---------------------------------------------------------------------------------------------
# Batches


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


# ---------------------------------------------------------------------------------------------
# The per-worker loop


@dataclass
class FoldSetup:
    """What the driver hands every worker of one fold's trainer (picklable)."""

    config: FinetuneConfig
    fold: Fold
    arm: str
    init: InitWeights
    #: The architecture of a scratch network (the pre-trained one's, for identical conditions).
    scratch_model: ModelConfig
    pixel_mean: float
    pos_weight: list[float] | None
    #: Subject of each code in the batches' ``subjects`` tensor.
    subjects: tuple[str, ...]
    mlflow_run: RunHandle | None = None


@dataclass
class EvalOutput:
    loss_sum: float
    count: int
    subjects: np.ndarray
    frames: np.ndarray
    labels: np.ndarray
    probs: np.ndarray

    @classmethod
    def empty(cls) -> EvalOutput:
        width = len(LABEL_COLUMNS)
        return cls(
            0.0,
            0,
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros((0, width), np.uint8),
            np.zeros((0, width), np.float32),
        )


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    augment: FaceAugment,
    batches: Iterator[dict[str, torch.Tensor]],
    loss_fn: nn.Module,
    *,
    pixel_mean: float,
    autocast: Autocast,
    channels_last: bool,
    seen: set[int],
    on_step=None,
) -> EpochStats:
    """One pass over the worker's training shard; records the subject codes it trained on."""
    stats = EpochStats()
    model.train()
    augment.train()
    loss_sum = 0.0
    start = time.perf_counter()
    for batch in timed(iter(batches), stats):
        seen.update(batch["subjects"].unique().tolist())
        images = augment(to_model_input(batch["faces"], pixel_mean, channels_last=channels_last))
        targets = batch["labels"].to(torch.float32)
        with autocast():
            logits = model(images)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(targets)
        stats.samples += len(targets)
        stats.steps += 1
        if on_step is not None:
            on_step(stats, loss)
    stats.loss_sum = loss_sum
    stats.seconds = time.perf_counter() - start
    return stats


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    *,
    pixel_mean: float,
    autocast: Autocast,
    channels_last: bool,
) -> EvalOutput:
    """Unweighted BCE (summed over samples, averaged over AUs) and every row's probabilities."""
    model.eval()
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    loss_sum, count = 0.0, 0
    parts: dict[str, list[np.ndarray]] = {"subjects": [], "frames": [], "labels": [], "probs": []}
    for batch in batches:
        images = to_model_input(batch["faces"], pixel_mean, channels_last=channels_last)
        with autocast():
            logits = model(images).float()
        targets = batch["labels"].to(torch.float32)
        loss_sum += float(loss_fn(logits, targets)) / targets.shape[1]
        count += len(targets)
        parts["subjects"].append(batch["subjects"].cpu().numpy())
        parts["frames"].append(batch["frames"].cpu().numpy())
        parts["labels"].append(batch["labels"].cpu().numpy())
        parts["probs"].append(torch.sigmoid(logits).cpu().numpy())
    empty = EvalOutput.empty()
    arrays = {k: np.concatenate(v) if v else getattr(empty, k) for k, v in parts.items()}
    return EvalOutput(loss_sum, count, **arrays)


def _subject(subjects: Sequence[str], code: int) -> str:
    """The subject of a batch code; ``?`` for a subject missing from the list (code -1)."""
    return subjects[code] if 0 <= code < len(subjects) else "?"


def set_fc_dropout(model: nn.Module, rate: float | None) -> None:
    """Set the fully connected layers' dropout (a fine-tuning choice; ``None`` keeps the net's)."""
    if rate is None:
        return
    for module in model.classifier.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate
    model.config.dropout_fc = rate


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on the CPU (on a CPU device ``.cpu()`` alone would alias them)."""
    return {key: value.clone() for key, value in unwrapped_state_dict(model).items()}


def finetune_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``; ``loop_config["setup"]`` is a ``FoldSetup``."""
    setup = loop_config["setup"]
    with node_system_metrics(setup.mlflow_run):
        finetune_with(setup)


def _restore() -> tuple[TrainingState | None, dict | None, dict[str, list[int]]]:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, None, {}
    with checkpoint.as_directory() as directory:
        state = load_checkpoint(directory)
        best_path = Path(directory) / BEST_FILE
        best = torch.load(best_path, map_location="cpu", weights_only=True)
        seen = json.loads((Path(directory) / SUBJECTS_FILE).read_text()).get("codes", {})
    return state, best, seen


def _save(directory: str, state: TrainingState, best: dict, seen: dict[str, Any]) -> None:
    save_checkpoint(directory, state)
    torch.save(best, Path(directory) / BEST_FILE)
    (Path(directory) / SUBJECTS_FILE).write_text(json.dumps(seen, indent=2))


def finetune_with(setup: FoldSetup) -> None:
    """Train with early stopping on the validation subjects, then predict the test subjects."""
    config, fold = setup.config, setup.fold
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    channels_last = config.channels_last  # CPU too: benchmarks/cpu_memory_format.py
    autocast = Autocast(device, config.bf16)

    # The same seed for every arm: the new head (and a scratch network) start alike.
    torch.manual_seed(config.seed * 1000 + fold.index)
    core = initial_model(
        setup.init,
        setup.scratch_model,
        len(LABEL_COLUMNS),
        head_rows_for=LABEL_COLUMNS if config.head_init == "pretrained_rows" else None,
    )
    freeze_conv_blocks(core, config.freeze_blocks)
    freeze_classifier(core, config.freeze_classifier)
    set_fc_dropout(core, config.dropout)
    state, best_state, seen_codes = _restore()
    if state is not None:
        core.load_state_dict(state.model_state)
    core = core.to(device)
    if channels_last:
        core = core.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(core)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        trainable,
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
    )
    if state is not None and state.optimizer_state is not None:
        optimizer.load_state_dict(state.optimizer_state)
    pos_weight = (
        torch.tensor(setup.pos_weight, dtype=torch.float32, device=device)
        if setup.pos_weight is not None
        else None
    )
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    augment = FaceAugment(config.augment).to(device)

    sign = 1.0 if config.lower_is_better else -1.0
    start_epoch = state.epoch if state is not None else 0
    best_score = state.best_score if state is not None else math.inf  # sign * monitor
    best_epoch = state.best_epoch if state is not None else 0
    waiting = state.epochs_without_improvement if state is not None else 0
    if best_state is None:
        best_state = snapshot(core)
    seen = {split: set(seen_codes.get(split, [])) for split in ("train", "val")}

    shards = {split: ray.train.get_dataset_shard(split) for split in ("train", "val", "test")}
    options = BatchOptions(
        batch_size=config.batch_size,
        shuffle_buffer=config.shuffle_buffer,
        prefetch_batches=config.prefetch_batches,
        drop_last=True,
    )
    eval_options = BatchOptions(
        batch_size=config.batch_size * 2, prefetch_batches=config.prefetch_batches, drop_last=False
    )
    epoch = start_epoch
    done = start_epoch >= config.max_epochs or bool(config.patience and waiting >= config.patience)
    while not done:
        epoch += 1
        epoch_start = time.perf_counter()
        torch.manual_seed(config.seed + 1_000_003 * epoch + rank)

        def on_step(stats: EpochStats, loss: torch.Tensor, epoch: int = epoch) -> None:
            if config.log_every and rank == 0 and stats.steps % config.log_every == 0:
                log.info(
                    f"{PRODUCT_TAG} fold %d epoch %d step %d loss %.4f",
                    fold.index,
                    epoch,
                    stats.steps,
                    loss,
                )

        train_options = BatchOptions(
            **{**asdict(options), "seed": config.seed + epoch * world + rank}
        )
        stats = train_epoch(
            model,
            optimizer,
            augment,
            fold_batches(
                shards["train"], train_options, setup.subjects, device, config.batches_per_epoch
            ),
            loss_fn,
            pixel_mean=setup.pixel_mean,
            autocast=autocast,
            channels_last=channels_last,
            seen=seen["train"],
            on_step=on_step,
        )
        if stats.steps == 0:
            raise RuntimeError(
                f"fold {fold.index}, worker {rank}: no training batch of {config.batch_size} "
                "frames in its shard; use a smaller batch size or fewer workers"
            )
        # Rank 0 validates on every validation frame (the split is not sharded: no frame is
        # dropped to even out shards); the others wait for its verdict in the all-reduce.
        val = (
            evaluate_batches(
                core,
                fold_batches(
                    shards["val"], eval_options, setup.subjects, device, config.val_batches
                ),
                pixel_mean=setup.pixel_mean,
                autocast=autocast,
                channels_last=channels_last,
            )
            if rank == 0
            else EvalOutput.empty()
        )
        seen["val"].update(np.unique(val.subjects).tolist())
        metrics: dict[str, Any] = {"epoch": epoch}
        if rank == 0:
            if not val.count:
                raise RuntimeError(
                    f"fold {fold.index}: the validation subjects {list(fold.val_subjects)} gave "
                    "no frames; early stopping needs them"
                )
            metrics["val_loss"] = val.loss_sum / val.count
            au = au_metrics(val.labels, val.probs, LABEL_COLUMNS, config.threshold)
            metrics.update(au.as_flat_dict("val", subsets={"paper": PAPER_COMPARISON_AUS}))
        # Every worker must take the same decision: rank 0's monitor value, summed with zeros.
        value = float(metrics.get(config.monitor, 0.0)) if rank == 0 else 0.0
        value = 0.0 if math.isnan(value) else value
        train_sum, train_n, monitor = all_reduce([stats.loss_sum, stats.samples, value], device)
        metrics["train_loss"] = train_sum / train_n
        improved = sign * monitor < best_score - config.min_delta
        if improved:
            best_score, best_epoch, waiting = sign * monitor, epoch, 0
            best_state = snapshot(core)
        else:
            waiting += 1
        stop = bool(config.patience) and waiting >= config.patience
        done = stop or epoch >= config.max_epochs
        metrics.update(
            monitor=monitor,
            best_monitor=sign * best_score,
            best_epoch=best_epoch,
            epochs_without_improvement=waiting,
            stopped_early=stop,
            epoch_time_s=time.perf_counter() - epoch_start,
            samples_per_s=train_n / max(stats.seconds, 1e-9),
        )
        codes = {split: sorted(int(c) for c in values) for split, values in seen.items()}
        all_codes = gather_to_rank0(np.array([codes], dtype=object))
        reported = {k: metrics[k] for k in REPORTED if k in metrics}
        if rank == 0:
            merged = _merge_codes(all_codes)
            log.info(
                f"{PRODUCT_TAG} {setup.arm} fold {fold.index} epoch {epoch}/{config.max_epochs} "
                f"train_loss {metrics['train_loss']:.4f} val_loss {metrics['val_loss']:.4f} "
                f"val_f1 {metrics.get('val_f1_mean', math.nan):.3f} "
                f"{'(best)' if improved else ''}{' (early stop)' if stop else ''}"
            )
            new_state = TrainingState(
                epoch=epoch,
                model_state=unwrapped_state_dict(core),
                model_config=asdict(core.config),
                pixel_mean=setup.pixel_mean,
                optimizer_state=optimizer.state_dict(),
                best_score=best_score,
                best_epoch=best_epoch,
                epochs_without_improvement=waiting,
                metrics={k: float(v) for k, v in reported.items()},
            )
            with tempfile.TemporaryDirectory() as directory:
                _save(directory, new_state, best_state, {"codes": merged})
                ray.train.report(
                    reported,
                    checkpoint=ray.train.Checkpoint.from_directory(directory),
                    checkpoint_dir_name=f"epoch-{epoch:04d}-{time.time_ns()}",
                )
            if setup.mlflow_run is not None:
                log_metrics(setup.mlflow_run, metrics, step=epoch)
        else:
            ray.train.report(reported)

    # The kept (best) weights predict every test frame (rank 0: the split is not sharded).
    codes = {split: sorted(int(c) for c in values) for split, values in seen.items()}
    all_codes = gather_to_rank0(np.array([codes], dtype=object))
    if rank != 0:
        ray.train.report({"final": True})
        return
    core.load_state_dict(best_state)
    # The kept weights' validation predictions: what per-AU thresholds are tuned on.
    val_best = evaluate_batches(
        core,
        fold_batches(shards["val"], eval_options, setup.subjects, device, config.val_batches),
        pixel_mean=setup.pixel_mean,
        autocast=autocast,
        channels_last=channels_last,
    )
    test = evaluate_batches(
        core,
        fold_batches(shards["test"], eval_options, setup.subjects, device),
        pixel_mean=setup.pixel_mean,
        autocast=autocast,
        channels_last=channels_last,
    )
    merged = _merge_codes(all_codes)
    merged["test"] = sorted(int(c) for c in np.unique(test.subjects))
    predictions = {
        "subjects": np.array([_subject(setup.subjects, int(c)) for c in test.subjects], dtype=str),
        "frames": test.frames.astype(np.int64),
        "y_true": test.labels,
        "y_prob": test.probs,
    }
    final_state = TrainingState(
        epoch=epoch,
        model_state=best_state,
        model_config=asdict(core.config),
        pixel_mean=setup.pixel_mean,
        best_score=best_score,
        best_epoch=best_epoch,
        epochs_without_improvement=waiting,
        metrics={"best_monitor": sign * best_score, "best_epoch": float(best_epoch)},
    )
    seen_names = {
        split: [_subject(setup.subjects, c) for c in values] for split, values in merged.items()
    }
    with tempfile.TemporaryDirectory() as directory:
        _save(directory, final_state, best_state, {"codes": merged, "subjects": seen_names})
        np.savez_compressed(Path(directory) / PREDICTIONS_FILE, **predictions)
        np.savez_compressed(
            Path(directory) / VAL_PREDICTIONS_FILE,
            subjects=np.array(
                [_subject(setup.subjects, int(c)) for c in val_best.subjects], dtype=str
            ),
            frames=val_best.frames.astype(np.int64),
            y_true=val_best.labels,
            y_prob=val_best.probs,
        )
        ray.train.report(
            {"final": True, "best_monitor": sign * best_score, "best_epoch": best_epoch},
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=f"{FINAL_PREFIX}-{time.time_ns()}",
        )


def _merge_codes(parts: list[np.ndarray]) -> dict[str, list[int]]:
    merged: dict[str, set[int]] = {}
    for part in parts:
        for codes in part:
            for split, values in codes.items():
                merged.setdefault(split, set()).update(values)
    return {split: sorted(values) for split, values in merged.items()}


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class FoldResult:
    """One fold of one arm: where it lives, how it stopped, what it saw, what it predicted."""

    arm: str
    fold: Fold
    mlflow_run_id: str
    checkpoint: str  # URI of the final checkpoint (best weights + test predictions)
    epochs: int
    best_epoch: int
    best_monitor: float
    stopped_early: bool
    pixel_mean: float
    #: Subjects whose frames actually reached the model, per split (train / val / test).
    subjects_seen: dict[str, list[str]]
    predictions: FoldPredictions
    seconds: float
    #: The kept weights' predictions on the validation subjects (for tuned thresholds).
    val_predictions: FoldPredictions | None = None


@dataclass
class ArmResult:
    """One cross-validation: its starting weights, folds, metrics and MLflow parent run."""

    arm: str
    label: str
    init_source: str
    mlflow_run_id: str
    folds: list[FoldResult]
    metrics: CVMetrics
    #: Test F1 with per-AU thresholds tuned on each fold's validation subjects (see
    #: ``tuned_threshold_metrics``); empty when a fold has no validation predictions.
    tuned: dict[str, float] = field(default_factory=dict)

    @property
    def mean_f1(self) -> float:
        """F1 per fold and AU, averaged over the folds, then over the 12 AUs (the headline)."""
        return self.metrics.mean("f1")

    @property
    def mean_f1_paper8(self) -> float:
        """The same over the paper's 8 AUs (Table III's Avg)."""
        return self.metrics.mean("f1", PAPER_COMPARISON_AUS)


@dataclass
class CVResult:
    """What ``run_cross_validation`` left behind, and where."""

    run_name: str
    run_uri: str
    report_uri: str
    tracking_uri: str
    disfa_cache: str
    arms: dict[str, ArmResult]
    table3: str  # markdown
    report_files: list[str] = field(default_factory=list)
    compare_run_id: str | None = None
    #: The labeler scored on the same test frames (``labeler_openface``), if given.
    labeler: CVMetrics | None = None
    model_uri: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    final_fold: int | None = None


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


def scaling_config(config: FinetuneConfig) -> ray.train.ScalingConfig:
    resources = {"CPU": config.cpus_per_worker}
    if config.use_gpu:
        resources["GPU"] = config.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=config.workers, use_gpu=config.use_gpu, resources_per_worker=resources
    )


def fold_run_config(config: FinetuneConfig, root: Location, name: str) -> ray.train.RunConfig:
    storage: dict[str, Any] = (
        {"storage_path": root.path, "storage_filesystem": root.fs}
        if is_s3(root.uri)
        else {"storage_path": root.path}
    )
    return ray.train.RunConfig(
        name=name,
        **storage,
        failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
        # The latest checkpoint resumes a failed worker group; the final one holds the results.
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
    )


def train_fold(
    config: FinetuneConfig,
    data: FoldData,
    arm: str,
    init: InitWeights,
    scratch_model: ModelConfig,
    subjects: Sequence[str],
    root: Location,
    parent: RunHandle,
) -> FoldResult:
    """Fine-tune one fold with its own ``TorchTrainer``; log it as a nested MLflow run."""
    fold = data.fold
    start = time.perf_counter()
    fold_run = create_run(
        parent.tracking_uri,
        config.experiment,
        f"{arm}-fold{fold.index}",
        tags={
            "mlflow.parentRunId": parent.run_id,
            "facs.stage": "finetune-fold",
            "facs.init": arm,
            "facs.fold": fold.index,
        },
    )
    log_params(
        fold_run,
        {
            "fold": fold.index,
            "init": arm,
            "init_source": init.source,
            "test_subjects": list(fold.test_subjects),
            "train_subjects": list(fold.train_subjects),
            "val_subjects": list(fold.val_subjects),
            "pixel_mean": data.pixel_mean,
            "pos_weight": data.pos_weight or "none",
            "lr": config.lr,
            "batch_size": config.batch_size,
            "freeze_blocks": config.freeze_blocks,
            "monitor": config.monitor,
            "patience": config.patience,
        },
    )
    log_disfa_input(fold_run, data.frames, fold)
    setup = FoldSetup(
        config=config,
        fold=fold,
        arm=arm,
        init=init,
        scratch_model=scratch_model,
        pixel_mean=data.pixel_mean,
        pos_weight=data.pos_weight,
        subjects=tuple(subjects),
        mlflow_run=fold_run,
    )
    trainer = TorchTrainer(
        finetune_worker,
        train_loop_config={"setup": setup},
        scaling_config=scaling_config(config),
        run_config=fold_run_config(config, root, f"{arm}-fold{fold.index}"),
        datasets=data.datasets,
        # Only training is sharded; validation and test are read whole by rank 0.
        dataset_config=ingest_config(["train"]),
    )
    try:
        result = trainer.fit()
        fold_result = _read_fold(config, result, arm, data, root, fold_run, start)
    except BaseException:
        end_run(fold_run, "FAILED")
        raise
    log_metrics(
        fold_run,
        {
            **fold_result_metrics(fold_result, config.threshold),
            "best_epoch": fold_result.best_epoch,
            "epochs": fold_result.epochs,
        },
        step=fold_result.epochs,
    )
    set_tags(fold_run, {"checkpoint": fold_result.checkpoint})
    end_run(fold_run, "FINISHED")
    return fold_result


def fold_result_metrics(result: FoldResult, threshold: float) -> dict[str, float]:
    p = result.predictions
    metrics = au_metrics(p.y_true, p.y_prob, p.au_names, threshold)
    return metrics.as_flat_dict("test", subsets={"paper": PAPER_COMPARISON_AUS})


def _read_fold(
    config: FinetuneConfig,
    result: ray.train.Result,
    arm: str,
    data: FoldData,
    root: Location,
    fold_run: RunHandle,
    start: float,
) -> FoldResult:
    fold = data.fold
    checkpoint = result.checkpoint
    if checkpoint is None or not Path(checkpoint.path).name.startswith(FINAL_PREFIX):
        raise RuntimeError(
            f"{arm} fold {fold.index}: the trainer ended without its final checkpoint "
            f"(got {checkpoint.path if checkpoint else None})"
        )
    uri = root.uri_of(checkpoint.path)
    location = Location.of(uri)
    state = load_checkpoint(uri)
    with np.load(_local_bytes(location.join(PREDICTIONS_FILE)), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    val_predictions = None
    if location.join(VAL_PREDICTIONS_FILE).exists():
        with np.load(
            _local_bytes(location.join(VAL_PREDICTIONS_FILE)), allow_pickle=False
        ) as archive:
            val = {name: archive[name] for name in archive.files}
        val_predictions = FoldPredictions(fold.index, **val)
    seen = json.loads(location.join(SUBJECTS_FILE).read_text())["subjects"]
    predictions = FoldPredictions(
        fold=fold.index,
        subjects=arrays["subjects"],
        frames=arrays["frames"],
        y_true=arrays["y_true"],
        y_prob=arrays["y_prob"],
    )
    stopped = bool(config.patience) and state.epochs_without_improvement >= config.patience
    return FoldResult(
        arm=arm,
        fold=fold,
        mlflow_run_id=fold_run.run_id,
        checkpoint=uri,
        epochs=state.epoch,
        best_epoch=state.best_epoch,
        best_monitor=float(state.metrics.get("best_monitor", math.nan)),
        stopped_early=stopped,
        pixel_mean=data.pixel_mean,
        subjects_seen={split: sorted(values) for split, values in seen.items()},
        predictions=predictions,
        seconds=time.perf_counter() - start,
        val_predictions=val_predictions,
    )


def _local_bytes(location: Location):
    import io

    return io.BytesIO(location.read_bytes())


def check_no_leakage(result: FoldResult) -> None:
    """Raise when a test subject's frames reached training or validation, or the splits differ
    from the fold's subjects."""
    seen, fold = result.subjects_seen, result.fold
    leaked = sorted(
        set(seen.get("test", [])) & (set(seen.get("train", [])) | set(seen.get("val", [])))
    )
    if leaked:
        raise RuntimeError(
            f"{result.arm} fold {fold.index}: test subjects {leaked} were trained on"
        )
    for split, expected in (
        ("train", fold.train_subjects),
        ("val", fold.val_subjects),
        ("test", fold.test_subjects),
    ):
        extra = sorted(set(seen.get(split, [])) - set(expected))
        if extra:
            raise RuntimeError(
                f"{result.arm} fold {fold.index}: {split} batches held subjects {extra} outside "
                f"the fold's {split} subjects {list(expected)}"
            )


def tuned_threshold_metrics(folds: Sequence[FoldResult], default: float) -> dict[str, float]:
    """Test F1 with each fold's per-AU thresholds tuned on that fold's validation subjects.

    Per fold (``test_fold<k>_f1_mean_tuned``), their mean over folds then AUs
    (``test_f1_mean_tuned``, the headline's twin) and pooled (``test_pooled_f1_mean_tuned``:
    every fold's frames binarised at its own thresholds, then counted together). An AU without positive
    validation frames keeps ``default``. Empty when a fold lacks validation predictions.
    """
    if not folds or any(f.val_predictions is None for f in folds):
        return {}
    out: dict[str, float] = {}
    truth, decided = [], []
    for result in folds:
        val, test = result.val_predictions, result.predictions
        thresholds = tune_thresholds(val.y_true, val.y_prob, default)
        fold_f1 = au_metrics(test.y_true, test.y_prob, test.au_names, thresholds).mean()["f1"]
        out[f"test_fold{result.fold.index}_f1_mean_tuned"] = fold_f1
        truth.append(test.y_true)
        decided.append((test.y_prob >= thresholds[None, :]).astype(np.float32))
    au_names = folds[0].predictions.au_names
    fold_mean = evaluate_folds(
        [
            FoldPredictions(r.fold.index, r.predictions.subjects, r.predictions.frames, t, d)
            for r, t, d in zip(folds, truth, decided, strict=True)
        ]
    )
    out["test_f1_mean_tuned"] = fold_mean.mean("f1")
    out["test_f1_mean_paper_tuned"] = fold_mean.mean("f1", PAPER_COMPARISON_AUS)
    pooled = au_metrics(np.concatenate(truth), np.concatenate(decided), au_names, 0.5)
    out["test_pooled_f1_mean_tuned"] = pooled.mean()["f1"]
    out["test_pooled_f1_mean_paper_tuned"] = pooled.mean(PAPER_COMPARISON_AUS)["f1"]
    return out


def _run_params(
    config: FinetuneConfig, frames: DisfaFrames, folds: list[Fold], arm: str, init: InitWeights
) -> dict:
    params: dict[str, Any] = {**asdict(config), "arm": arm, "init_source": init.source}
    params["disfa_cache"] = frames.uri
    params["disfa_frames"] = frames.manifest.accepted
    for fold in folds:
        params[f"fold{fold.index}.test"] = list(fold.test_subjects)
        params[f"fold{fold.index}.val"] = list(fold.val_subjects)
    return params


def _choose_final(config: FinetuneConfig, arm: ArmResult) -> FoldResult:
    """The fold whose best validation monitor is best (never chosen by test figures)."""
    sign = 1.0 if config.lower_is_better else -1.0
    return min(arm.folds, key=lambda f: (sign * f.best_monitor, f.fold.index))


def arm_inits(
    config: FinetuneConfig, tracking_uri: str | None = None
) -> tuple[dict[str, InitWeights], ModelConfig]:
    """Each arm's starting weights, and the architecture of a network started from scratch.

    Identical conditions: with pre-trained weights in play, a scratch network gets their
    architecture (width, channels, normalisation), not ``config.model``.
    """
    inits = {
        arm: resolve_init(config.pretrained if arm == "pretrained" else "scratch", tracking_uri)
        for arm in config.inits()
    }
    pretrained = next((init for init in inits.values() if not init.is_scratch), None)
    return inits, pretrained.config() if pretrained is not None else config.model


def prepared_folds(config: FinetuneConfig) -> tuple[DisfaFrames, list[Fold]]:
    """The cached DISFA frames and the folds to run (``only_folds`` applied)."""
    frames = prepare_disfa(config.disfa)
    folds = make_folds(
        frames.subjects(),
        scheme=config.fold_scheme,
        seed=config.fold_seed,
        val_subjects_per_fold=config.val_subjects,
        folds=config.folds,
    )
    return frames, [f for f in folds if not config.only_folds or f.index in config.only_folds]


def storage_uri(config: FinetuneConfig) -> str:
    """``--storage-path``, or the default run storage (see ``pipeline.run_storage``)."""
    return output_location(config.storage_path, "finetune", "--storage-path", DEFAULT_STORAGE)


def check_cross_validation(config: FinetuneConfig) -> None:
    """Everything a cross-validation can be refused for before Ray starts (the CLI calls it
    first): the weights to start from, the DISFA root, the run storage and the MLflow store."""
    if "pretrained" in config.inits() and not config.pretrained:
        raise ValueError(
            "FinetuneConfig.pretrained: expected the pre-trained weights (--pretrained "
            "models:/facs-vgg13-pretrained/<version>, runs:/... or a checkpoint) for init "
            "'pretrained'; use --init scratch for the baseline alone"
        )
    if not config.disfa.root:
        raise ValueError("FinetuneConfig.disfa.root: expected the DISFA folder (--disfa), got none")
    storage_uri(config)
    resolve_tracking_uri(config.mlflow_uri)


def run_cross_validation(config: FinetuneConfig, parent: RunHandle | None = None) -> CVResult:
    """Fine-tune and evaluate every fold of every arm; write the report; register the model.

    Starts a local Ray if none is connected. Folds run ``concurrent_folds`` at a time, each in
    its own trainer (Ray queues those that do not fit the cluster's resources). ``parent``: an
    MLflow run to nest this cross-validation's runs under (a sweep's final evaluation).
    """
    check_cross_validation(config)
    arms = config.inits()
    default_storage = not config.storage_path
    config = replace(config, storage_path=storage_uri(config))
    tracking_uri = resolve_tracking_uri(config.mlflow_uri)
    ensure_ray()
    check_defaults_reachable(
        {
            "--storage-path": config.storage_path if default_storage else None,
            "--mlflow-uri": store_path(tracking_uri)
            if uses_default_store(config.mlflow_uri)
            else None,
        }
    )
    frames, folds = prepared_folds(config)
    inits, scratch_model = arm_inits(config, tracking_uri)
    subjects = tuple(sorted(frames.manifest.accepted_per_subject))
    # Scored before any training: a wrong labeler folder fails in seconds, not after the folds.
    labeler = (
        evaluate_labeler(
            frames,
            folds,
            config.labeler_openface,
            camera=config.disfa.camera,
            threshold=config.threshold,
        )[0]
        if config.labeler_openface
        else None
    )

    name = config.run_name or "finetune-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = Location.of(config.storage_path).join(name)
    tags = {"facs.stage": "finetune", "facs.run_name": name, "git_commit": git_commit()}
    if parent is not None:
        tags["mlflow.parentRunId"] = parent.run_id
    compare_run = (
        create_run(tracking_uri, config.experiment, f"{name}-compare", {**tags, "facs.compare": 1})
        if config.compare_init
        else None
    )
    parents: dict[str, RunHandle] = {}
    for arm in arms:
        arm_tags = {**tags, "facs.init": arm}
        if compare_run is not None:
            arm_tags["mlflow.parentRunId"] = compare_run.run_id
        parents[arm] = create_run(tracking_uri, config.experiment, f"{name}-{arm}", arm_tags)
        log_params(parents[arm], _run_params(config, frames, folds, arm, inits[arm]))
    every = [run for run in (compare_run, *parents.values()) if run is not None]
    for run in every:
        log_disfa_input(run, frames)
    print(
        f"[facs] finetune {name}: {len(folds)} folds x {arms} on {frames.manifest.accepted} "
        f"DISFA frames ({frames.uri}); MLflow {tracking_uri}",
        flush=True,
    )
    try:
        data = {fold.index: fold_data(config, frames, fold) for fold in folds}
        jobs = [(arm, fold) for fold in folds for arm in arms]
        width = len(jobs) if config.concurrent_folds == 0 else config.concurrent_folds

        def job(item: tuple[str, Fold]) -> FoldResult:
            arm, fold = item
            return train_fold(
                config,
                data[fold.index],
                arm,
                inits[arm],
                scratch_model,
                subjects,
                root,
                parents[arm],
            )

        if width > 1:
            with ThreadPoolExecutor(max_workers=width, thread_name_prefix="facs-fold") as pool:
                results = list(pool.map(job, jobs))
        else:
            results = [job(item) for item in jobs]
        for fold_result in results:
            check_no_leakage(fold_result)

        arm_results: dict[str, ArmResult] = {}
        for arm in arms:
            mine = sorted((r for r in results if r.arm == arm), key=lambda r: r.fold.index)
            metrics = evaluate_folds([r.predictions for r in mine], config.threshold)
            tuned = tuned_threshold_metrics(mine, config.threshold)
            arm_results[arm] = ArmResult(
                arm, ARM_LABELS[arm], inits[arm].source, parents[arm].run_id, mine, metrics, tuned
            )
            log_metrics(parents[arm], {**_cv_metrics(metrics), **tuned}, step=0)
        if labeler is not None:
            for run in every:
                log_metrics(run, _cv_metrics(labeler, "labeler"), step=0)
        result = _report_and_register(
            config, name, root, tracking_uri, frames, arm_results, parents, compare_run, labeler
        )
    except BaseException:
        for run in every:
            end_run(run, "FAILED")
        raise
    for run in every:
        end_run(run, "FINISHED")
    return result


def log_disfa_input(
    run: RunHandle, frames: DisfaFrames, fold: Fold | None = None, context: str = "training"
) -> DatasetRef:
    """The DISFA cache entry as the run's MLflow dataset input (digest: the entry's key); a
    fold's run gets the fold's view, with its subjects and frames per split."""
    profile: dict[str, Any] = {
        "frames_accepted": frames.manifest.accepted,
        "frames_rejected": frames.manifest.rejected,
        "rows_read": frames.manifest.rows_read,
        "subjects": len(frames.subjects()),
    }
    if fold is not None:
        per_subject = frames.manifest.accepted_per_subject
        for split in ("train", "val", "test"):
            subjects = getattr(fold, f"{split}_subjects")
            profile[f"{split}_subjects"] = len(subjects)
            profile[f"{split}_frames"] = sum(per_subject.get(s, 0) for s in subjects)
    ref = disfa_dataset(frames, fold)
    return log_dataset(run, ref.name, frames.uri, ref.digest, profile, context)


def disfa_dataset(frames: DisfaFrames, fold: Fold | None = None) -> DatasetRef:
    """The MLflow dataset of a DISFA cache entry (digest: its key); MLflow keeps one dataset per
    (name, digest), so a fold's split is its own named view."""
    name = f"disfa-{frames.manifest.key}" + (f"-fold{fold.index}" if fold is not None else "")
    return DatasetRef.of(name, frames.manifest.key)


def _cv_metrics(metrics: CVMetrics, prefix: str = "test") -> dict[str, float]:
    """MLflow metrics of a cross-validation: the fold-mean headline per AU and averaged
    (``test_f1_mean``, ``test_f1_mean_paper``, ``test_f1_AU01``, ...), per fold, and pooled."""
    flat: dict[str, float] = {}
    for name in METRIC_NAMES:
        for au, value in metrics.per_au(name).items():
            flat[f"{prefix}_{name}_{au}"] = value
        flat[f"{prefix}_{name}_mean"] = metrics.mean(name)
        flat[f"{prefix}_{name}_mean_paper"] = metrics.mean(name, PAPER_COMPARISON_AUS)
    for k, fold_metrics in metrics.per_fold.items():
        flat[f"{prefix}_fold{k}_f1_mean"] = fold_metrics.mean()["f1"]
        flat[f"{prefix}_fold{k}_f1_mean_paper"] = fold_metrics.mean(PAPER_COMPARISON_AUS)["f1"]
    flat[f"{prefix}_not_applicable_f1_cells"] = len(metrics.not_applicable("f1"))
    flat.update(
        metrics.pooled.as_flat_dict(f"{prefix}_pooled", subsets={"paper": PAPER_COMPARISON_AUS})
    )
    return flat


def _report_and_register(
    config: FinetuneConfig,
    name: str,
    root: Location,
    tracking_uri: str,
    frames: DisfaFrames,
    arms: dict[str, ArmResult],
    parents: dict[str, RunHandle],
    compare_run: RunHandle | None,
    labeler: CVMetrics | None = None,
) -> CVResult:
    results = {LABELER_ROW: labeler} if labeler is not None else {}
    results.update({arm.label: arm.metrics for arm in arms.values()})
    predictions = {arm.label: [f.predictions for f in arm.folds] for arm in arms.values()}
    report = root.join("report")
    with tempfile.TemporaryDirectory(prefix="facs-report-") as local:
        written = write_report(local, results, predictions, plots=config.plots)
        for path in written:
            relative = Path(path).name
            report.join(relative).write_bytes(Path(path).read_bytes())
        for run in (compare_run, *parents.values()):
            if run is not None:
                run.client().log_artifacts(run.run_id, local, artifact_path="report")
    folds = max(len(arm.folds) for arm in arms.values())
    table = table3_markdown(table3_rows(results), folds, results)
    result = CVResult(
        run_name=name,
        run_uri=root.uri,
        report_uri=report.uri,
        tracking_uri=tracking_uri,
        disfa_cache=frames.uri,
        arms=arms,
        table3=table,
        report_files=[report.join(Path(p).name).uri for p in written],
        compare_run_id=compare_run.run_id if compare_run else None,
        labeler=labeler,
    )
    if config.final_model == "none":
        return result
    arm = arms.get("pretrained") or next(iter(arms.values()))
    final = _choose_final(config, arm)
    state = load_checkpoint(final.checkpoint)
    logged = log_model(
        parents[arm.arm],
        model_from_state(state),
        pixel_mean=state.pixel_mean,
        register_as=config.register_as or None,
        version_tags={
            "init": arm.arm,
            "init_source": arm.init_source,
            "fold": final.fold.index,
            "test_subjects": ",".join(final.fold.test_subjects),
            "best_epoch": final.best_epoch,
            f"val_{config.monitor.removeprefix('val_')}": final.best_monitor,
            "cv_test_f1_mean": arm.mean_f1,
            "cv_test_f1_mean_paper8": arm.mean_f1_paper8,
            "checkpoint": final.checkpoint,
            "disfa_cache": frames.uri,
        },
        metadata={
            "au_names": ",".join(LABEL_COLUMNS),
            "fold": final.fold.index,
            "model_config": dict(state.model_config),
        },
        evaluation=Evaluation(
            key=(
                f"{frames.uri}, {config.folds} {config.fold_scheme} folds (seed "
                f"{config.fold_seed}, {config.val_subjects} val subjects), "
                f"run {config.only_folds or 'all'}"
            ),
            metric="cv_test_f1_mean_paper8",
            value=arm.mean_f1_paper8,
            higher_is_better=True,
        ),
        # The model's own scores: this arm's cross-validation on the DISFA cache entry.
        scores={
            "cv_test_f1_mean": arm.mean_f1,
            "cv_test_f1_mean_paper8": arm.mean_f1_paper8,
            "cv_test_pr_auc_mean_paper8": arm.metrics.mean("pr_auc", PAPER_COMPARISON_AUS),
            "cv_test_roc_auc_mean_paper8": arm.metrics.mean("roc_auc", PAPER_COMPARISON_AUS),
        },
        scored_on=disfa_dataset(frames),
    )
    result.model_uri = logged.model_uri
    result.registered_model = logged.registered_name
    result.registered_version = logged.registered_version
    result.final_fold = final.fold.index
    print(
        f"[facs] finetune {name} done: "
        + ", ".join(
            f"{a.label} F1 {100 * a.mean_f1:.1f} (8 AUs {100 * a.mean_f1_paper8:.1f})"
            for a in arms.values()
        )
        + f"; report {report.uri}"
        + (
            f"; registered {logged.registered_name} v{logged.registered_version}"
            if logged.registered_version
            else ""
        ),
        flush=True,
    )
    return result
