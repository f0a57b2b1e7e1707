"""The fine-tuning worker: Ray Train's ``train_loop_per_worker`` for one fold of one arm.

Replaces the 17-AU head with the 12 DISFA AUs, trains with early stopping on the validation
monitor, and on rank 0 predicts the fold's test subjects with the best weights (see ``finetune``).
The fold's training itself is ``training.fold_trainer.FoldTrainer``, which sweep trials use too.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
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


def finetune_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``; ``loop_config["setup"]`` is a ``FoldSetup``."""
    setup = loop_config["setup"]
    with node_system_metrics(setup.mlflow_run):
        finetune_with(setup)


def _read(directory: str) -> tuple[TrainingState, dict, dict[str, list[int]]]:
    state = load_checkpoint(directory)
    best = torch.load(Path(directory) / BEST_FILE, map_location="cpu", weights_only=True)
    seen = json.loads((Path(directory) / SUBJECTS_FILE).read_text()).get("codes", {})
    return state, best, seen


def _save(directory: str, state: TrainingState, best: dict, seen: dict[str, Any]) -> None:
    save_checkpoint(directory, state)
    torch.save(best, Path(directory) / BEST_FILE)
    (Path(directory) / SUBJECTS_FILE).write_text(json.dumps(seen, indent=2))


def finetune_with(setup: FoldSetup) -> None:
    """Train with early stopping on the validation subjects, then predict the test subjects."""
    config, fold = setup.config, setup.fold
    env = WorkerEnv.current(bf16=config.bf16, channels_last=config.channels_last)
    state, best_state, seen = restore_checkpoint(_read) or (None, None, {})
    trainer = FoldTrainer(
        config,
        fold,
        (setup.init, setup.scratch_model),
        (setup.pixel_mean, setup.pos_weight),
        setup.subjects,
        env,
        state,
        seen,
    )
    best_state = best_state or snapshot(trainer.core)
    augment = FaceAugment(config.augment).to(env.device)
    shards = {split: ray.train.get_dataset_shard(split) for split in ("train", "val", "test")}
    epoch = state.epoch if state is not None else 0
    done = epoch >= config.max_epochs or trainer.stopping.stopped
    while not done:
        epoch += 1
        epoch_start = time.perf_counter()
        env.seed_epoch(config.seed, epoch)
        stats = trainer.train_epoch(shards["train"], augment, epoch, step_logger(setup, env, epoch))
        _val, metrics, improved = trainer.validate(shards["val"], stats, epoch)
        if improved:
            best_state = snapshot(trainer.core)
        done = trainer.stopping.stopped or epoch >= config.max_epochs
        metrics["epoch_time_s"] = time.perf_counter() - epoch_start
        merged = merge_codes(gather_to_rank0(trainer.seen_codes()))
        reported = {k: metrics[k] for k in REPORTED if k in metrics}
        if env.rank == 0:
            log.info(
                f"{PRODUCT_TAG} {setup.arm} fold {fold.index} epoch {epoch}/{config.max_epochs} "
                f"train_loss {metrics['train_loss']:.4f} val_loss {metrics['val_loss']:.4f} "
                f"val_f1 {metrics.get('val_f1_mean', math.nan):.3f} "
                f"{'(best)' if improved else ''}{' (early stop)' if trainer.stopping.stopped else ''}"
            )

        def write(directory: str, epoch=epoch, reported=reported, best=best_state, codes=merged):
            # Rank 0 only (report_epoch): the other workers copy no weights to the CPU.
            state = trainer.training_state(epoch)
            state.metrics = {k: float(v) for k, v in reported.items()}
            _save(directory, state, best, {"codes": codes})

        report_epoch(env, reported, write, epoch=epoch)
        if env.rank == 0 and setup.mlflow_run is not None:
            log_metrics(setup.mlflow_run, metrics, step=epoch)
    predict_test(trainer, setup, shards, best_state, epoch)


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
    trainer: FoldTrainer,
    setup: FoldSetup,
    shards: dict[str, ray.data.DataIterator],
    best_state: dict,
    epoch: int,
) -> None:
    """Rank 0: the kept (best) weights predict every validation and test frame; the final report.

    The validation predictions are what per-AU thresholds are tuned on (never the test frames).
    """
    merged = merge_codes(gather_to_rank0(trainer.seen_codes()))
    if trainer.env.rank != 0:
        ray.train.report({"final": True})
        return
    trainer.core.load_state_dict(best_state)
    val_best = trainer.evaluate(shards["val"])
    test = trainer.evaluate(shards["test"], whole=True)
    merged["test"] = sorted(int(c) for c in np.unique(test.columns["subjects"]))
    stopping = trainer.stopping
    final_state = trainer.training_state(epoch, best=best_state)
    final_state.metrics = {
        "best_monitor": stopping.best_value,
        "best_epoch": float(stopping.best_epoch),
    }
    seen_names = {
        split: [subject_of_code(setup.subjects, c) for c in values]
        for split, values in merged.items()
    }

    def write(directory: str) -> None:
        _save(directory, final_state, best_state, {"codes": merged, "subjects": seen_names})
        for name, output in ((PREDICTIONS_FILE, test), (VAL_PREDICTIONS_FILE, val_best)):
            codes = output.columns["subjects"]
            np.savez_compressed(
                Path(directory) / name,
                subjects=np.array([subject_of_code(setup.subjects, int(c)) for c in codes], str),
                frames=output.columns["frames"].astype(np.int64),
                y_true=output.labels,
                y_prob=output.probs,
            )

    final = {"final": True, "best_monitor": stopping.best_value, "best_epoch": stopping.best_epoch}
    report_epoch(trainer.env, final, write, prefix=FINAL_PREFIX)
