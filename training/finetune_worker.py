"""The fine-tuning worker: Ray Train's ``train_loop_per_worker`` for one or more folds of one arm.

Replaces the 17-AU head with the 12 DISFA AUs, trains with early stopping on each fold's
validation monitor, and on rank 0 predicts each fold's test subjects with its best weights (see
``finetune``). A trainer given several folds steps them in lock-step (an epoch of each, then one
checkpoint holding every fold under ``fold<k>/``): one trainer start-up instead of one per fold,
which on a few CPU cores is a large share of a fold's time (``folds_per_trainer``). Each fold's
training itself is ``training.fold_trainer.FoldTrainer``, which sweep trials use too.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch

from pipeline.console import PRODUCT_TAG
from pipeline.disfa import Fold
from training.augment import FaceAugment
from training.checkpoints import (
    TrainingState,
    load_checkpoint,
    save_checkpoint,
)
from training.engine import (
    EpochStats,
    WorkerEnv,
    gather_to_rank0,
    report_epoch,
    restore_checkpoint,
)
from training.fault_injection import FaultPlan
from training.finetune_config import FinetuneConfig
from training.fold_trainer import FoldTrainer, merge_codes, snapshot, subject_of_code
from training.init_weights import InitWeights
from training.model import ModelConfig
from training.system_metrics import node_system_metrics
from training.tracking import RunHandle, log_metrics

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
    """What the driver hands every worker about one fold of its trainer (picklable)."""

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
    #: Test-only fault injection of the fold's trainer (``training.fault_injection``).
    fault: FaultPlan = field(default_factory=FaultPlan)


def finetune_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``; ``loop_config["setup"]`` is a list of
    ``FoldSetup`` (one arm's folds, stepped in lock-step; one fold per trainer is a list of one)."""
    setups: list[FoldSetup] = loop_config["setup"]
    with node_system_metrics([setup.mlflow_run for setup in setups]):
        finetune_with(setups)


def fold_part(fold: Fold) -> str:
    """The folder of a fold's part of its trainer's checkpoints: ``fold<k>``."""
    return f"fold{fold.index}"


def fold_folder(directory: str, fold: Fold) -> str:
    return str(Path(directory) / fold_part(fold))


def _read(directory: str) -> tuple[TrainingState, dict, dict[str, list[int]]]:
    state = load_checkpoint(directory)
    best = torch.load(Path(directory) / BEST_FILE, map_location="cpu", weights_only=True)
    seen = json.loads((Path(directory) / SUBJECTS_FILE).read_text()).get("codes", {})
    return state, best, seen


def _save(directory: str, state: TrainingState, best: dict, seen: dict[str, Any]) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    save_checkpoint(directory, state)
    torch.save(best, Path(directory) / BEST_FILE)
    (Path(directory) / SUBJECTS_FILE).write_text(json.dumps(seen, indent=2))


class FoldRun:
    """One fold inside a trainer: its ``FoldTrainer``, kept weights and epoch count."""

    def __init__(self, setup: FoldSetup, env: WorkerEnv, restored: tuple | None) -> None:
        state, best, seen = restored or (None, None, {})
        self.setup = setup
        self.trainer = FoldTrainer(
            setup.config,
            setup.fold,
            (setup.init, setup.scratch_model),
            (setup.pixel_mean, setup.pos_weight),
            setup.subjects,
            env,
            state,
            seen,
        )
        self.best_state = best or snapshot(self.trainer.core)
        self.epoch = state.epoch if state is not None else 0
        self.reported: dict[str, float] = dict(state.metrics) if state is not None else {}

    @property
    def done(self) -> bool:
        return self.epoch >= self.setup.config.max_epochs or self.trainer.stopping.stopped

    def train_one_epoch(self, shards: dict[str, ray.data.DataIterator], augment) -> None:
        """Train and validate one epoch; log it (rank 0) and keep the best weights."""
        setup, trainer, env = self.setup, self.trainer, self.trainer.env
        self.epoch += 1
        epoch, start = self.epoch, time.perf_counter()
        stats = trainer.train_epoch(shards["train"], augment, epoch, step_logger(setup, env, epoch))
        _val, metrics, improved = trainer.validate(shards["val"], stats, epoch)
        if improved:
            self.best_state = snapshot(trainer.core)
        metrics["epoch_time_s"] = time.perf_counter() - start
        self.reported = {k: float(metrics[k]) for k in REPORTED if k in metrics}
        if env.rank == 0:
            log.info(
                f"{PRODUCT_TAG} {setup.arm} fold {setup.fold.index} epoch {epoch}/"
                f"{setup.config.max_epochs} train_loss {metrics['train_loss']:.4f} "
                f"val_loss {metrics['val_loss']:.4f} "
                f"val_f1 {metrics.get('val_f1_mean', math.nan):.3f} "
                f"{'(best)' if improved else ''}{' (early stop)' if trainer.stopping.stopped else ''}"
            )
            if setup.mlflow_run is not None:
                log_metrics(setup.mlflow_run, metrics, step=epoch)

    def write(self, directory: str, codes: dict[str, list[int]]) -> None:
        """Rank 0: the fold's current state, kept weights and subjects into the checkpoint."""
        state = self.trainer.training_state(self.epoch)
        state.metrics = dict(self.reported)
        _save(fold_folder(directory, self.setup.fold), state, self.best_state, {"codes": codes})


def finetune_with(setups: list[FoldSetup]) -> None:
    """Train the folds in lock-step with early stopping on each fold's validation subjects, one
    checkpoint per epoch holding every fold; then predict each fold's test subjects."""
    config = setups[0].config
    env = WorkerEnv.current(bf16=config.bf16, channels_last=config.channels_last)
    restored = restore_checkpoint(
        lambda directory: {s.fold.index: _read(fold_folder(directory, s.fold)) for s in setups}
    )
    runs = [FoldRun(setup, env, (restored or {}).get(setup.fold.index)) for setup in setups]
    augment = FaceAugment(config.augment).to(env.device)
    shards = {
        run.setup.fold.index: {
            split: ray.train.get_dataset_shard(dataset_name(split, run.setup.fold))
            for split in SPLITS
        }
        for run in runs
    }
    step = max(run.epoch for run in runs)
    while not all(run.done for run in runs):
        step += 1
        setups[0].fault.maybe_fail(step, env.rank)
        env.seed_epoch(config.seed, step)
        for run in runs:
            if not run.done:
                run.train_one_epoch(shards[run.setup.fold.index], augment)
        codes = [merge_codes(gather_to_rank0(run.trainer.seen_codes())) for run in runs]

        def write(directory: str, codes=codes) -> None:
            # Rank 0 only (report_epoch): the other workers copy no weights to the CPU.
            for run, merged in zip(runs, codes, strict=True):
                run.write(directory, merged)

        report_epoch(env, group_metrics(runs, step), write, epoch=step)
    writers = [predict_test(run, shards[run.setup.fold.index]) for run in runs]
    if env.rank != 0:
        ray.train.report({"final": True})
        return

    def write_final(directory: str) -> None:
        for run, write in zip(runs, writers, strict=True):
            write(fold_folder(directory, run.setup.fold))

    report_epoch(
        env, {"final": True, **group_metrics(runs, step)}, write_final, prefix=FINAL_PREFIX
    )


#: The splits each fold reads; its datasets are named ``<split>_fold<k>``.
SPLITS: tuple[str, ...] = ("train", "val", "test")


def dataset_name(split: str, fold: Fold) -> str:
    return f"{split}_fold{fold.index}"


def group_metrics(runs: list[FoldRun], step: int) -> dict[str, float]:
    """What a trainer reports to Ray Train per epoch: each fold's figures, named by fold."""
    metrics: dict[str, float] = {"epoch": float(step)}
    for run in runs:
        for key, value in run.reported.items():
            metrics[f"fold{run.setup.fold.index}_{key}"] = value
    return metrics


def step_logger(setup: FoldSetup, env: WorkerEnv, epoch: int):
    """A progress line every ``log_every`` steps (rank 0), or no hook at all."""
    every = setup.config.log_every
    if not every or env.rank != 0:
        return None

    def on_step(stats: EpochStats, loss: torch.Tensor) -> None:
        if stats.steps % every == 0:
            log.info(
                f"{PRODUCT_TAG} fold %d epoch %d step %d loss %.4f",
                setup.fold.index,
                epoch,
                stats.steps,
                float(loss.detach()),
            )

    return on_step


def predict_test(
    run: FoldRun, shards: dict[str, ray.data.DataIterator]
) -> Callable[[str], None] | None:
    """The kept (best) weights predict every validation and test frame (rank 0); returns what
    writes the fold's final checkpoint part (``None`` on the other ranks).

    The validation predictions are what per-AU thresholds are tuned on (never the test frames).
    """
    trainer, setup = run.trainer, run.setup
    merged = merge_codes(gather_to_rank0(trainer.seen_codes()))
    if trainer.env.rank != 0:
        return None
    trainer.core.load_state_dict(run.best_state)
    val_best = trainer.evaluate(shards["val"])
    test = trainer.evaluate(shards["test"], whole=True)
    merged["test"] = sorted(int(c) for c in np.unique(test.columns["subjects"]))
    stopping = trainer.stopping
    final_state = trainer.training_state(run.epoch, best=run.best_state)
    final_state.metrics = {
        "best_monitor": stopping.best_value,
        "best_epoch": float(stopping.best_epoch),
    }
    seen_names = {
        split: [subject_of_code(setup.subjects, c) for c in values]
        for split, values in merged.items()
    }

    def write(directory: str) -> None:
        _save(directory, final_state, run.best_state, {"codes": merged, "subjects": seen_names})
        for name, output in ((PREDICTIONS_FILE, test), (VAL_PREDICTIONS_FILE, val_best)):
            codes = output.columns["subjects"]
            np.savez_compressed(
                Path(directory) / name,
                subjects=np.array([subject_of_code(setup.subjects, int(c)) for c in codes], str),
                frames=output.columns["frames"].astype(np.int64),
                y_true=output.labels,
                y_prob=output.probs,
            )

    return write
