"""One sweep trial: a Ray Train fine-tune of one config on every fold at once, validation only.

The folds advance in lock-step inside one ``TorchTrainer``: each epoch trains every fold's model
for one epoch on that fold's training subjects, validates it on that fold's validation subjects,
and then reports once. So report ``t`` (Tune's ``training_iteration``) is "``t`` epochs on every
fold" for every trial, and ASHA compares trials on equal budgets: its metric, ``val_f1``, is the
mean over folds of the validation F1 of each fold's kept (best-monitor) weights so far. A fold
that stopped early keeps its kept weights' figures; the trial ends when every fold has stopped.

The test subjects' frames are never read: a trial's datasets are each fold's ``train`` and
``val`` splits only, and every report carries the subjects each fold's batches actually held.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer
from torch import nn

from pipeline.disfa import DisfaFrames, Fold
from pipeline.storage import Location, is_s3
from training.augment import FaceAugment
from training.data import BatchOptions, ingest_config
from training.finetune import scaling_config
from training.finetune_config import FinetuneConfig
from training.finetune_data import LABEL_COLUMNS, FoldData, class_weights, fold_batches
from training.finetune_worker import (
    EvalOutput,
    evaluate_batches,
    set_fc_dropout,
    subject_of_code,
    train_epoch,
)
from training.init_weights import InitWeights, initial_model
from training.metrics import au_metrics, tune_thresholds
from training.model import ModelConfig, freeze_classifier, freeze_conv_blocks
from training.train_loop import Autocast, all_reduce, gather_to_rank0
from tune.sweep_config import apply_params

#: The metric ASHA and the searcher optimise (mean over folds, validation subjects only).
OBJECTIVE = "val_f1"
#: The splits a trial reads; ``test`` is never among them.
TRIAL_SPLITS: tuple[str, ...] = ("train", "val")


def crossfit_tuned_f1(
    labels: np.ndarray, probs: np.ndarray, subjects: np.ndarray, frames: np.ndarray
) -> float:
    """Mean F1 over AUs with per-AU thresholds tuned on the *other* validation subjects.

    Tuning and scoring thresholds on the same frames would flatter the tuned policy. With a
    single validation subject its video is cut in two halves by frame number instead (each half
    scored with thresholds tuned on the other: still neighbours in time, so mildly optimistic).
    """
    if len(labels) == 0:
        return math.nan
    groups = subjects
    if len(np.unique(subjects)) < 2:
        groups = (frames >= np.median(frames)).astype(np.int64)
    if len(np.unique(groups)) < 2:  # a single frame: nothing to cross-fit against
        return au_metrics(labels, probs, LABEL_COLUMNS, tune_thresholds(labels, probs)).mean()["f1"]
    decided = np.zeros_like(probs, dtype=np.float32)
    for group in np.unique(groups):
        mine = groups == group
        thresholds = tune_thresholds(labels[~mine], probs[~mine])
        decided[mine] = probs[mine] >= thresholds[None, :]
    return au_metrics(labels, decided, LABEL_COLUMNS, 0.5).mean()["f1"]


@dataclass
class TrialFold:
    """One fold as a trial sees it: its subjects and the figures of its training frames."""

    fold: Fold
    pixel_mean: float
    pos_weight: list[float] | None


@dataclass
class TrialSetup:
    """What the driver hands every worker of one trial's trainer (picklable)."""

    config: FinetuneConfig
    folds: list[TrialFold]
    init: InitWeights
    scratch_model: ModelConfig
    subjects: tuple[str, ...]


@dataclass
class _FoldState:
    """One fold's model and early-stopping state inside a trial's worker."""

    setup: TrialFold
    core: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    best_score: float = math.inf  # sign * monitor
    best_epoch: int = 0
    waiting: int = 0
    stopped: bool = False
    best_val: EvalOutput | None = None
    best_val_loss: float = math.nan
    seen: dict[str, set[int]] = field(default_factory=lambda: {"train": set(), "val": set()})


def _fold_state(setup: TrialSetup, item: TrialFold, device: torch.device) -> _FoldState:
    config = setup.config
    # The same seed as `facs finetune` uses for this fold: the final evaluation starts alike.
    torch.manual_seed(config.seed * 1000 + item.fold.index)
    core = initial_model(
        setup.init,
        setup.scratch_model,
        len(LABEL_COLUMNS),
        head_rows_for=LABEL_COLUMNS if config.head_init == "pretrained_rows" else None,
    )
    freeze_conv_blocks(core, config.freeze_blocks)
    freeze_classifier(core, config.freeze_classifier)
    set_fc_dropout(core, config.dropout)
    core = core.to(device)
    if config.channels_last:
        core = core.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(core)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
    )
    weights = (
        torch.tensor(item.pos_weight, dtype=torch.float32, device=device)
        if item.pos_weight is not None
        else None
    )
    return _FoldState(item, core, model, optimizer, nn.BCEWithLogitsLoss(pos_weight=weights))


def sweep_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker`` for a trial; ``loop_config["setup"]`` a ``TrialSetup``."""
    setup: TrialSetup = loop_config["setup"]
    config = setup.config
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    autocast = Autocast(device, config.bf16)
    sign = 1.0 if config.lower_is_better else -1.0
    folds = [_fold_state(setup, item, device) for item in setup.folds]
    augment = FaceAugment(config.augment).to(device)
    options = BatchOptions(
        batch_size=config.batch_size,
        shuffle_buffer=config.shuffle_buffer,
        prefetch_batches=config.prefetch_batches,
        drop_last=True,
    )
    eval_options = BatchOptions(
        batch_size=config.batch_size * 2, prefetch_batches=config.prefetch_batches, drop_last=False
    )
    shards = {
        (split, state.setup.fold.index): ray.train.get_dataset_shard(
            f"{split}_fold{state.setup.fold.index}"
        )
        for state in folds
        for split in TRIAL_SPLITS
    }
    for epoch in range(1, config.max_epochs + 1):
        start = time.perf_counter()
        torch.manual_seed(config.seed + 1_000_003 * epoch + rank)
        train_loss, train_n = 0.0, 0.0
        for state in folds:
            if state.stopped:
                continue
            k = state.setup.fold.index
            stats = train_epoch(
                state.model,
                state.optimizer,
                augment,
                fold_batches(
                    shards["train", k],
                    BatchOptions(**{**asdict(options), "seed": config.seed + epoch * world + rank}),
                    setup.subjects,
                    device,
                    config.batches_per_epoch,
                ),
                state.loss_fn,
                pixel_mean=state.setup.pixel_mean,
                autocast=autocast,
                channels_last=config.channels_last,
                seen=state.seen["train"],
            )
            if stats.steps == 0:
                raise RuntimeError(
                    f"fold {k}, worker {rank}: no training batch of {config.batch_size} frames "
                    "in its shard; use a smaller batch size or fewer workers"
                )
            val = (
                evaluate_batches(
                    state.core,
                    fold_batches(
                        shards["val", k], eval_options, setup.subjects, device, config.val_batches
                    ),
                    pixel_mean=state.setup.pixel_mean,
                    autocast=autocast,
                    channels_last=config.channels_last,
                )
                if rank == 0
                else EvalOutput.empty()
            )
            state.seen["val"].update(np.unique(val.subjects).tolist())
            value = 0.0
            if rank == 0:
                if not val.count:
                    raise RuntimeError(
                        f"fold {k}: the validation subjects {list(state.setup.fold.val_subjects)} "
                        "gave no frames"
                    )
                figures = {"val_loss": val.loss_sum / val.count}
                if config.monitor != "val_loss":
                    au = au_metrics(val.labels, val.probs, LABEL_COLUMNS, config.threshold)
                    figures.update(au.as_flat_dict("val"))
                value = float(figures[config.monitor])
                value = 0.0 if math.isnan(value) else value
            loss_sum, samples, monitor = all_reduce([stats.loss_sum, stats.samples, value], device)
            train_loss, train_n = train_loss + loss_sum, train_n + samples
            if sign * monitor < state.best_score - config.min_delta:
                state.best_score, state.best_epoch, state.waiting = sign * monitor, epoch, 0
                state.best_val = val
                state.best_val_loss = val.loss_sum / max(val.count, 1)
            else:
                state.waiting += 1
            state.stopped = bool(config.patience) and state.waiting >= config.patience
        _report(setup, folds, epoch, train_loss / max(train_n, 1.0), time.perf_counter() - start)
        if all(state.stopped for state in folds):
            break


def _report(
    setup: TrialSetup, folds: list[_FoldState], epoch: int, train_loss: float, seconds: float
) -> None:
    """Every worker reports (Ray Train waits for all); Tune takes rank 0's figures."""
    codes = [
        {split: sorted(int(c) for c in values) for split, values in state.seen.items()}
        for state in folds
    ]
    gathered: list[list[dict[str, list[int]]]] = gather_to_rank0(codes)  # type: ignore[arg-type]
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({"epoch": epoch})
        return
    config = setup.config
    metrics: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "epoch_time_s": seconds}
    fixed, tuned, losses = [], [], []
    for i, state in enumerate(folds):
        k = state.setup.fold.index
        val = state.best_val
        f1_fixed = (
            au_metrics(val.labels, val.probs, LABEL_COLUMNS, config.threshold).mean()["f1"]
            if val is not None and val.count
            else 0.0
        )
        f1_tuned = (
            crossfit_tuned_f1(val.labels, val.probs, val.subjects, val.frames)
            if val is not None and val.count
            else 0.0
        )
        fixed.append(f1_fixed)
        tuned.append(f1_tuned)
        losses.append(state.best_val_loss)
        merged = {
            split: sorted({c for part in gathered for c in part[i].get(split, [])})
            for split in ("train", "val")
        }
        metrics.update(
            {
                f"fold{k}_val_f1_fixed": f1_fixed,
                f"fold{k}_val_f1_tuned": f1_tuned,
                f"fold{k}_best_epoch": state.best_epoch,
                f"fold{k}_stopped": int(state.stopped),
                f"fold{k}_train_subjects": _names(setup.subjects, merged.get("train", [])),
                f"fold{k}_val_subjects": _names(setup.subjects, merged.get("val", [])),
            }
        )
    metrics["val_f1_fixed"] = float(np.mean(fixed))
    metrics["val_f1_tuned"] = float(np.mean(tuned))
    metrics["val_loss"] = float(np.nanmean(losses)) if not np.isnan(losses).all() else math.nan
    metrics[OBJECTIVE] = metrics[
        "val_f1_tuned" if config.threshold_policy == "tuned" else "val_f1_fixed"
    ]
    metrics["folds_stopped"] = sum(int(state.stopped) for state in folds)
    ray.train.report(metrics)


def _names(subjects: Sequence[str], codes: Sequence[int]) -> str:
    return ",".join(sorted(subject_of_code(subjects, int(c)) for c in codes))


# ---------------------------------------------------------------------------------------------
# The trial's driver (runs inside a Tune trial actor)


@dataclass
class SweepContext:
    """What every trial shares: the base config, folds, starting weights, where to write."""

    base: FinetuneConfig
    pos_weight_cap: float
    disfa_cache: str
    folds: list[Fold]
    init: InitWeights
    scratch_model: ModelConfig
    subjects: tuple[str, ...]
    train_storage: str  # where each trial's Ray Train run keeps its state
    cpus_per_trial: float
    gpus_per_trial: float
    #: Each fold's train/val datasets and pixel mean, made once by the sweep's driver: a trial
    #: holds almost no CPU, so building them inside it (Ray Data launches 1-CPU tasks) can wait
    #: forever behind the trainers' reservations.
    fold_data: dict[int, FoldData] = field(default_factory=dict)


def trial_config(context: SweepContext, params: dict[str, Any]) -> FinetuneConfig:
    """The fine-tuning config a trial runs: one worker with the trial's CPUs and GPUs."""
    return dataclasses.replace(
        apply_params(context.base, params, context.pos_weight_cap),
        workers=1,
        cpus_per_worker=context.cpus_per_trial,
        gpus_per_worker=context.gpus_per_trial,
    )


def run_trial(params: dict[str, Any], context: SweepContext) -> None:
    """Tune's function trainable: read the folds' train/val frames, fit one ``TorchTrainer``."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    config = trial_config(context, params)
    frames = DisfaFrames.open(context.disfa_cache)
    datasets: dict[str, ray.data.Dataset] = {}
    folds = []
    for fold in context.folds:
        data = context.fold_data[fold.index]
        for split in TRIAL_SPLITS:
            datasets[f"{split}_fold{fold.index}"] = data.datasets[split]
        weights = (
            class_weights(frames, fold.train_subjects, config.max_pos_weight)
            if config.class_weighting
            else None
        )
        folds.append(TrialFold(fold, data.pixel_mean, weights))
    setup = TrialSetup(config, folds, context.init, context.scratch_model, context.subjects)
    trial_id = tune.get_context().get_trial_id()
    root = Location.of(context.train_storage)
    storage: dict[str, Any] = (
        {"storage_path": root.path, "storage_filesystem": root.fs}
        if is_s3(root.uri)
        else {"storage_path": root.path}
    )
    trainer = TorchTrainer(
        sweep_worker,
        train_loop_config={"setup": setup},
        scaling_config=scaling_config(config),
        run_config=ray.train.RunConfig(
            name=f"{trial_id}-{time.time_ns()}",
            **storage,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
        ),
        datasets=datasets,
        dataset_config=ingest_config([name for name in datasets if name.startswith("train_")]),
    )
    trainer.fit()
