"""The fine-tuning worker: Ray Train's ``train_loop_per_worker`` for one fold of one arm.

Replaces the 17-AU head with the 12 DISFA AUs, trains with early stopping on the validation
monitor, and on rank 0 predicts the fold's test subjects with the best weights (see ``finetune``).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from pipeline.console import PRODUCT_TAG
from pipeline.disfa import Fold
from pipeline.vocabulary import PAPER_COMPARISON_AUS
from training.augment import FaceAugment, to_model_input
from training.checkpoints import (
    TrainingState,
    load_checkpoint,
    save_checkpoint,
    unwrapped_state_dict,
)
from training.data import BatchOptions
from training.finetune_config import FinetuneConfig
from training.finetune_data import LABEL_COLUMNS, fold_batches
from training.init_weights import InitWeights, initial_model
from training.metrics import au_metrics
from training.model import ModelConfig, freeze_classifier, freeze_conv_blocks
from training.system_metrics import node_system_metrics
from training.tracking import (
    RunHandle,
    log_metrics,
)
from training.train_loop import Autocast, EpochStats, all_reduce, gather_to_rank0, timed

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "test_predictions.npz"


#: The kept weights' validation predictions (per-AU thresholds are tuned on them, never on test).
VAL_PREDICTIONS_FILE = "val_predictions.npz"


SUBJECTS_FILE = "subjects_seen.json"


BEST_FILE = "best_model.pt"


FINAL_PREFIX = "final"


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


def subject_of_code(subjects: Sequence[str], code: int) -> str:
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
        "subjects": np.array(
            [subject_of_code(setup.subjects, int(c)) for c in test.subjects], dtype=str
        ),
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
        split: [subject_of_code(setup.subjects, c) for c in values]
        for split, values in merged.items()
    }
    with tempfile.TemporaryDirectory() as directory:
        _save(directory, final_state, best_state, {"codes": merged, "subjects": seen_names})
        np.savez_compressed(Path(directory) / PREDICTIONS_FILE, **predictions)
        np.savez_compressed(
            Path(directory) / VAL_PREDICTIONS_FILE,
            subjects=np.array(
                [subject_of_code(setup.subjects, int(c)) for c in val_best.subjects], dtype=str
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
