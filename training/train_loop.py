"""The pre-training worker: Ray Train's ``train_loop_per_worker`` on every worker (DDP).

It reads like torchvision's classification reference: build (or restore) the model and
optimizer, then per epoch :func:`training.engine.train_epoch` on the worker's shard of the train
split, :func:`training.engine.evaluate` on its shard of the validation split, early stopping on
the validation loss, and rank 0's checkpoint-and-report.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from torch import nn

from pipeline.console import PRODUCT_TAG
from pipeline.progress import format_duration
from pipeline.vocabulary import PAPER_COMPARISON_AUS
from training.augment import FaceAugment
from training.checkpoints import (
    TrainingState,
    load_checkpoint,
    save_checkpoint,
    unwrapped_state_dict,
)
from training.data import LABEL_COLUMNS, BatchOptions, device_batches, epoch_batches
from training.engine import (
    EarlyStopping,
    EpochStats,
    WorkerEnv,
    adam,
    all_reduce,
    evaluate,
    gather_to_rank0,
    report_epoch,
    restore_checkpoint,
    set_lr,
    train_epoch,
)
from training.fault_injection import FaultPlan
from training.metrics import au_metrics
from training.model import build_model
from training.pretrain_config import PretrainConfig, lr_factor, lr_per_step
from training.system_metrics import node_system_metrics
from training.tracking import RunHandle, log_metrics

log = logging.getLogger(__name__)

#: The metrics every worker reports to Ray Train each epoch (per-AU ones go to MLflow only).
REPORTED = (
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    "val_f1_mean",
    "val_pr_auc_mean",
    "val_roc_auc_mean",
    "samples_per_s",
    "data_wait_fraction",
    "epoch_time_s",
    "best_val_loss",
    "best_epoch",
    "stopped_early",
    "steps",
)


@dataclass
class WorkerSetup:
    """What the driver hands every worker, besides the config (picklable)."""

    config: PretrainConfig
    pixel_mean: float
    mlflow_run: RunHandle | None
    #: Test-only fault injection (``training.fault_injection``).
    fault: FaultPlan = field(default_factory=FaultPlan)


@dataclass
class Progress:
    """What one epoch hands the next (and a checkpoint the resumed run)."""

    epoch: int
    steps: int
    stopping: EarlyStopping

    def budget_spent(self, config: PretrainConfig) -> bool:
        return bool(config.max_steps) and self.steps >= config.max_steps

    def finished(self, config: PretrainConfig) -> bool:
        return self.epoch >= config.max_epochs or self.stopping.stopped or self.budget_spent(config)


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``; ``loop_config["setup"]`` is a ``WorkerSetup``."""
    setup = loop_config["setup"]
    with node_system_metrics(setup.mlflow_run):
        train_with(setup)


def train_with(setup: WorkerSetup) -> None:
    """Resume from Ray's latest checkpoint if any, then train, validate, checkpoint each epoch."""
    config = setup.config
    env = WorkerEnv.current(bf16=config.bf16, channels_last=config.channels_last)
    state: TrainingState | None = restore_checkpoint(load_checkpoint)
    torch.manual_seed(config.seed)  # identical initial weights everywhere (DDP also broadcasts)
    core = build_model(config.model)
    if state is not None:
        core.load_state_dict(state.model_state)
    model = env.prepare(core, compile_model=config.compile)
    optimizer = adam(model, config)
    if state is not None and state.optimizer_state is not None:
        optimizer.load_state_dict(state.optimizer_state)
    progress = Progress(
        epoch=state.epoch if state is not None else 0,
        steps=int(state.metrics.get("steps", 0)) if state is not None else 0,
        stopping=EarlyStopping(config.patience, config.min_delta).restore(state),
    )
    if state is not None and env.rank == 0:
        log.info(f"{PRODUCT_TAG} resumed from the checkpoint of epoch %d", progress.epoch)
    if progress.finished(config):
        if env.rank == 0:
            log.info("nothing to do: %d epochs done already", progress.epoch)
        return
    augment = FaceAugment(config.augment).to(env.device)
    loss_fn = nn.BCEWithLogitsLoss()
    first_epoch, epoch_seconds = progress.epoch + 1, []
    for epoch in range(first_epoch, config.max_epochs + 1):
        epoch_start = time.perf_counter()
        env.seed_epoch(config.seed, epoch)
        lr = config.lr * lr_factor(config, epoch - 1, progress.steps)
        set_lr(optimizer, lr)
        stats = train_epoch(
            model,
            optimizer,
            augment,
            train_batches(config, env, epoch, progress.steps),
            loss_fn,
            env,
            pixel_mean=setup.pixel_mean,
            on_step=step_hook(setup, env, epoch, optimizer, progress.steps),
        )
        if stats.steps == 0:
            raise RuntimeError(
                f"worker {env.rank}: no training batch of {config.worker_batch_size} in its "
                "shard of the train split; use a smaller batch size or fewer workers"
            )
        metrics = validate(core, setup, env, stats, progress, epoch)
        metrics.update(lr=lr, epoch_time_s=time.perf_counter() - epoch_start)
        epoch_seconds.append(metrics["epoch_time_s"])
        new_state = TrainingState(
            epoch=epoch,
            model_state=unwrapped_state_dict(core),
            model_config=asdict(config.model),
            pixel_mean=setup.pixel_mean,
            optimizer_state=optimizer.state_dict(),
            best_score=progress.stopping.best_score,
            best_epoch=progress.stopping.best_epoch,
            epochs_without_improvement=progress.stopping.waiting,
            metrics={k: float(v) for k, v in metrics.items() if k in REPORTED},
        )
        if env.rank == 0:
            log.info(epoch_line(config, metrics, progress, epoch_seconds, epoch - first_epoch + 1))
        report_epoch(
            env,
            {k: metrics[k] for k in REPORTED if k in metrics},
            lambda directory, state=new_state: save_checkpoint(directory, state),
            epoch=epoch,
        )
        # After the report: an epoch lost to a failure before it is checkpointed is trained
        # again, and is then logged once (unless the failure falls between the two).
        if env.rank == 0 and setup.mlflow_run is not None:
            log_metrics(setup.mlflow_run, metrics, step=epoch)
        if progress.finished(config):
            break


def train_batches(
    config: PretrainConfig, env: WorkerEnv, epoch: int, steps_done: int
) -> Iterator[dict[str, torch.Tensor]]:
    """The epoch's training batches of this worker, cut to the step budget's remainder."""
    options = BatchOptions(
        batch_size=config.worker_batch_size,
        shuffle_buffer=config.shuffle_buffer,
        prefetch_batches=config.prefetch_batches,
        drop_last=True,
        seed=env.shuffle_seed(config.seed, epoch),
    )
    limit = config.batches_per_epoch
    if config.max_steps:
        left = config.max_steps - steps_done
        limit = left if limit is None else min(limit, left)
    shard = ray.train.get_dataset_shard("train")
    return epoch_batches(shard, options, env.device, limit, config.min_steps_per_epoch)


def step_hook(
    setup: WorkerSetup,
    env: WorkerEnv,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    steps_before: int,
):
    """Per step: the test-only fault injection, the next step's learning rate (a per-step
    schedule), and a progress line every ``log_every`` steps."""
    config = setup.config
    per_step = lr_per_step(config)

    def on_step(stats: EpochStats, loss: torch.Tensor) -> None:
        if stats.steps == 1:
            setup.fault.maybe_fail(epoch, env.rank)
        if per_step:
            set_lr(optimizer, config.lr * lr_factor(config, epoch - 1, steps_before + stats.steps))
        if config.log_every and env.rank == 0 and stats.steps % config.log_every == 0:
            log.info(
                f"{PRODUCT_TAG} pretrain epoch %d step %d loss %.4f",
                epoch,
                stats.steps,
                float(loss.detach()),
            )

    return on_step


def validate(
    core: nn.Module,
    setup: WorkerSetup,
    env: WorkerEnv,
    stats: EpochStats,
    progress: Progress,
    epoch: int,
) -> dict[str, Any]:
    """Validate on every worker's shard, reduce over workers, advance ``progress``; the metrics."""
    config = setup.config
    options = BatchOptions(
        batch_size=config.worker_batch_size * 2,
        prefetch_batches=config.prefetch_batches,
        drop_last=False,
    )
    shard = ray.train.get_dataset_shard("val")
    val = evaluate(
        core,
        device_batches(shard, options, env.device, config.val_batches),
        env,
        pixel_mean=setup.pixel_mean,
        width=len(LABEL_COLUMNS),
    )
    train_sum, train_n, val_sum, val_n, wait_sum = all_reduce(
        [stats.loss_sum, stats.samples, val.loss_sum, val.count, stats.wait_fraction], env.device
    )
    slowest = all_reduce([stats.seconds], env.device, op=dist.ReduceOp.MAX)[0]
    parts_labels, parts_probs = gather_to_rank0(val.labels), gather_to_rank0(val.probs)
    if not val_n:
        raise RuntimeError(
            "the val split gave no samples: pre-training needs the corpus's validation "
            "identities (split == 'val') for early stopping and checkpoint selection"
        )
    val_loss = val_sum / val_n
    progress.epoch, progress.steps = epoch, progress.steps + stats.steps
    progress.stopping.update(epoch, val_loss)
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": train_sum / train_n,
        "val_loss": val_loss,
        "samples_per_s": train_n / slowest,
        "data_wait_fraction": wait_sum / env.world,
        "best_val_loss": progress.stopping.best_score,
        "best_epoch": progress.stopping.best_epoch,
        "epochs_without_improvement": progress.stopping.waiting,
        "stopped_early": progress.stopping.stopped,
        "steps": progress.steps,
    }
    if env.rank == 0:
        au = au_metrics(np.concatenate(parts_labels), np.concatenate(parts_probs), LABEL_COLUMNS)
        metrics.update(au.as_flat_dict("val", subsets={"paper": PAPER_COMPARISON_AUS}))
    return metrics


def epoch_line(
    config: PretrainConfig,
    metrics: dict[str, Any],
    progress: Progress,
    epoch_seconds: list[float],
    epochs_run: int,
) -> str:
    """Rank 0's console line for an epoch, with the time left by the epochs or the step budget."""
    remaining = config.max_epochs - progress.epoch
    if config.max_steps:
        per_epoch = progress.steps / epochs_run if epochs_run else 1
        left = max(config.max_steps - progress.steps, 0)
        remaining = min(remaining, math.ceil(left / max(per_epoch, 1e-9)))
    spent = progress.budget_spent(config)
    stopped = progress.stopping.stopped
    eta = 0.0 if stopped or spent else float(np.mean(epoch_seconds)) * remaining
    return (
        f"{PRODUCT_TAG} pretrain epoch {progress.epoch}/{config.max_epochs} "
        f"train_loss {metrics['train_loss']:.4f} val_loss {metrics['val_loss']:.4f} "
        f"val_f1 {metrics.get('val_f1_mean', math.nan):.3f} "
        f"{metrics['samples_per_s']:.0f} samples/s "
        f"data-wait {100 * metrics['data_wait_fraction']:.1f}% "
        f"lr {metrics['lr']:.2e} step {progress.steps}"
        + (f"/{config.max_steps}" if config.max_steps else "")
        + f" ETA {format_duration(eta)}"
        + (" (early stop)" if stopped else "")
        + (" (step budget spent)" if spent and not stopped else "")
    )
