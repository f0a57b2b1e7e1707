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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch

from pipeline.disfa import DisfaFrames, Fold
from pipeline.storage import Location
from training.augment import FaceAugment
from training.engine import EvalOutput, WorkerEnv, gather_to_rank0
from training.finetune_config import FinetuneConfig
from training.finetune_data import LABEL_COLUMNS, FoldData, class_weights
from training.fold_trainer import FoldTrainer, merge_codes, subject_of_code
from training.init_weights import InitWeights
from training.metrics import au_metrics, tune_thresholds
from training.model import ModelConfig
from training.system_metrics import node_system_metrics
from training.tracking import RunHandle
from training.trainer_config import torch_trainer
from tune.sweep_callbacks import trial_run
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
    #: The trial's MLflow child run: its workers' system metrics go there.
    mlflow_run: RunHandle | None = None


def sweep_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker`` for a trial; ``loop_config["setup"]`` a ``TrialSetup``."""
    setup: TrialSetup = loop_config["setup"]
    with node_system_metrics(setup.mlflow_run):
        train_trial(setup)


def train_trial(setup: TrialSetup) -> None:
    """Every fold of the trial in lock-step, one report per epoch (module docstring)."""
    config = setup.config
    env = WorkerEnv.current(bf16=config.bf16, channels_last=config.channels_last)
    folds = [
        FoldTrainer(
            config,
            item.fold,
            (setup.init, setup.scratch_model),
            (item.pixel_mean, item.pos_weight),
            setup.subjects,
            env,
        )
        for item in setup.folds
    ]
    best_val: dict[int, EvalOutput] = {}
    augment = FaceAugment(config.augment).to(env.device)
    shards = {
        (split, trainer.fold.index): ray.train.get_dataset_shard(
            f"{split}_fold{trainer.fold.index}"
        )
        for trainer in folds
        for split in TRIAL_SPLITS
    }
    for epoch in range(1, config.max_epochs + 1):
        start = time.perf_counter()
        env.seed_epoch(config.seed, epoch)
        train_loss, train_n = 0.0, 0.0
        for trainer in folds:
            if trainer.stopping.stopped:
                continue
            k = trainer.fold.index
            stats = trainer.train_epoch(shards["train", k], augment, epoch)
            val, metrics, improved = trainer.validate(shards["val", k], stats, epoch)
            train_loss += metrics["train_loss"] * trainer.epoch_samples
            train_n += trainer.epoch_samples
            if improved:
                best_val[k] = val
        seconds = time.perf_counter() - start
        _report(setup, folds, best_val, epoch, train_loss / max(train_n, 1.0), seconds)
        if all(trainer.stopping.stopped for trainer in folds):
            break


def _report(
    setup: TrialSetup,
    folds: list[FoldTrainer],
    best_val: dict[int, EvalOutput],
    epoch: int,
    train_loss: float,
    seconds: float,
) -> None:
    """Every worker reports (Ray Train waits for all); Tune takes rank 0's figures."""
    gathered = gather_to_rank0([trainer.seen_codes() for trainer in folds])
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({"epoch": epoch})
        return
    config = setup.config
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": train_loss,
        "epoch_time_s": seconds,
    }
    fixed, tuned, losses = [], [], []
    for i, trainer in enumerate(folds):
        k = trainer.fold.index
        val = best_val.get(k)
        scored = val is not None and val.count > 0
        f1_fixed = (
            au_metrics(val.labels, val.probs, LABEL_COLUMNS, config.threshold).mean()["f1"]
            if scored
            else 0.0
        )
        f1_tuned = (
            crossfit_tuned_f1(val.labels, val.probs, val.columns["subjects"], val.columns["frames"])
            if scored
            else 0.0
        )
        fixed.append(f1_fixed)
        tuned.append(f1_tuned)
        losses.append(val.mean_loss if scored else math.nan)
        merged = merge_codes([part[i] for part in gathered])
        metrics.update(
            {
                f"fold{k}_val_f1_fixed": f1_fixed,
                f"fold{k}_val_f1_tuned": f1_tuned,
                f"fold{k}_best_epoch": trainer.stopping.best_epoch,
                f"fold{k}_stopped": int(trainer.stopping.stopped),
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
    metrics["folds_stopped"] = sum(int(trainer.stopping.stopped) for trainer in folds)
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
    #: The sweep's MLflow parent run, under which the driver makes each trial's child run.
    parent: RunHandle | None = None


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
    trial_id = tune.get_context().get_trial_id()
    run = trial_run(context.parent, trial_id) if context.parent is not None else None
    setup = TrialSetup(config, folds, context.init, context.scratch_model, context.subjects, run)
    trainer = torch_trainer(
        sweep_worker,
        setup,
        config,
        (Location.of(context.train_storage), f"{trial_id}-{time.time_ns()}"),
        datasets,
        sharded=[name for name in datasets if name.startswith("train_")],
        callbacks=[TuneReportCallback()],
    )
    trainer.fit()
