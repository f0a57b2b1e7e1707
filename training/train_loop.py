"""The per-worker pre-training loop that Ray Train runs on every worker (plain PyTorch + DDP)."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from pipeline.console import PRODUCT_TAG
from pipeline.progress import format_duration
from pipeline.storage import Location
from pipeline.vocabulary import PAPER_COMPARISON_AUS
from training.augment import FaceAugment, to_model_input
from training.checkpoints import (
    TrainingState,
    load_checkpoint,
    save_checkpoint,
    unwrapped_state_dict,
)
from training.data import LABEL_COLUMNS, BatchOptions, device_batches, epoch_batches
from training.metrics import au_metrics
from training.model import build_model
from training.pretrain_config import PretrainConfig, lr_factor
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
    #: Test-only fault injection (``training.pretrain.fault_injection``): worker ``fail_rank``
    #: exits during epoch ``fail_at_epoch`` (0 = never).
    fail_at_epoch: int = 0
    fail_rank: int = 1
    #: A file in the run's storage written just before the injected failure: first attempt only.
    fault_marker: str = ""


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    samples: int = 0
    steps: int = 0
    seconds: float = 0.0
    wait_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Autocast:
    """bf16 autocast on CUDA when asked; a no-op context elsewhere."""

    def __init__(self, device: torch.device, bf16: bool) -> None:
        self.enabled = device.type == "cuda" and bf16
        self.device_type = device.type

    def __call__(self):
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.enabled)


def timed(batches: Iterator, stats: EpochStats) -> Iterator:
    """Yield from ``batches``, adding the time spent waiting for each one to ``stats``."""
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        stats.wait_seconds += time.perf_counter() - start
        yield batch


def inject_failure(setup: WorkerSetup, epoch: int, rank: int) -> None:
    """Kill this worker's process (as a lost node would) once, if the config asks for it.

    It first waits until Ray Train has committed the previous epoch's checkpoint: the controller
    registers a checkpoint only once it has collected every worker's report (it polls them every
    few seconds), so a worker that dies sooner than that loses the checkpoint too, and recovery
    would restart one epoch earlier than the test expects.
    """
    if setup.fail_at_epoch != epoch or rank != setup.fail_rank or not setup.fault_marker:
        return
    marker = Location.of(setup.fault_marker)
    if marker.exists():
        return
    try:
        ray.train.get_all_reported_checkpoints(
            consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120
        )
    except Exception as error:  # an alpha API: fall back to outlasting the controller's polls
        log.warning("fault injection: cannot wait for the checkpoint commit (%s); sleeping", error)
        time.sleep(10)
    marker.write_bytes(f"worker {rank} exited during epoch {epoch}\n".encode())
    log.warning("fault injection: worker %d exits during epoch %d", rank, epoch)
    os._exit(1)


def all_reduce(values: list[float], device: torch.device, op=None) -> list[float]:
    """Sum (or ``op``) floats over all workers; the identity when training alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor.tolist()


def gather_to_rank0(array: np.ndarray) -> list[np.ndarray]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [array]
    parts: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(array, parts, dst=0)
    return parts or []


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    augment: FaceAugment,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    pixel_mean: float,
    device: torch.device,
    autocast: Autocast,
    channels_last: bool,
    on_step=None,
) -> EpochStats:
    """One pass over the worker's shard: uint8 -> normalised -> augmented -> step. Loss summed."""
    stats = EpochStats()
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    augment.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    start = time.perf_counter()
    for faces, labels in timed(iter(batches), stats):
        images = augment(to_model_input(faces, pixel_mean, channels_last=channels_last))
        targets = labels.to(torch.float32)
        with autocast():
            logits = model(images)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(targets)
        stats.samples += len(targets)
        stats.steps += 1
        if on_step is not None:
            on_step(stats, loss)
    stats.loss_sum = float(loss_sum)  # one device sync per epoch, not per step
    stats.seconds = time.perf_counter() - start
    return stats


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    pixel_mean: float,
    autocast: Autocast,
    channels_last: bool,
) -> tuple[float, int, np.ndarray, np.ndarray]:
    """``(loss sum, samples, labels (N, K), probabilities (N, K))`` on this worker's shard."""
    model.eval()
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    loss_sum, count = 0.0, 0
    all_labels, all_probs = [], []
    for faces, labels in batches:
        images = to_model_input(faces, pixel_mean, channels_last=channels_last)
        with autocast():
            logits = model(images).float()
        targets = labels.to(torch.float32)
        # BCE summed over AUs; divided by the AU count below so it matches the training loss.
        loss_sum += float(loss_fn(logits, targets)) / targets.shape[1]
        count += len(targets)
        all_labels.append(labels.cpu().numpy())
        all_probs.append(torch.sigmoid(logits).cpu().numpy())
    width = len(LABEL_COLUMNS)
    labels_array = np.concatenate(all_labels) if all_labels else np.zeros((0, width), np.uint8)
    probs_array = np.concatenate(all_probs) if all_probs else np.zeros((0, width), np.float32)
    return loss_sum, count, labels_array, probs_array


def restore_state() -> TrainingState | None:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_checkpoint(directory)


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``; ``loop_config["setup"]`` is a ``WorkerSetup``."""
    setup = loop_config["setup"]
    with node_system_metrics(setup.mlflow_run):
        train_with(setup)


def train_with(setup: WorkerSetup) -> None:
    """Resume from Ray's latest checkpoint if any, then train, validate, checkpoint each epoch."""
    config = setup.config
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    channels_last = config.channels_last  # CPU too: benchmarks/cpu_memory_format.py
    autocast = Autocast(device, config.bf16)
    if on_gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(config.seed)  # identical initial weights everywhere (DDP also broadcasts)
    core = build_model(config.model)
    state = restore_state()
    if state is not None:
        core.load_state_dict(state.model_state)
    if channels_last:
        core = core.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(core)
    if config.compile:
        model = torch.compile(model)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
    )
    if state is not None and state.optimizer_state is not None:
        optimizer.load_state_dict(state.optimizer_state)
    augment = FaceAugment(config.augment).to(device)

    start_epoch = state.epoch if state is not None else 0
    steps_done = int(state.metrics.get("steps", 0)) if state is not None else 0
    best_val_loss = state.best_score if state is not None else math.inf
    best_epoch = state.best_epoch if state is not None else 0
    waiting = state.epochs_without_improvement if state is not None else 0
    if state is not None and rank == 0:
        log.info(f"{PRODUCT_TAG} resumed from the checkpoint of epoch %d", start_epoch)
    budget_spent = bool(config.max_steps) and steps_done >= config.max_steps
    if (
        start_epoch >= config.max_epochs
        or (config.patience and waiting >= config.patience)
        or budget_spent
    ):
        if rank == 0:
            log.info("nothing to do: %d epochs done already", start_epoch)
        return

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    options = BatchOptions(
        batch_size=config.worker_batch_size,
        shuffle_buffer=config.shuffle_buffer,
        prefetch_batches=config.prefetch_batches,
        drop_last=True,
    )
    val_options = BatchOptions(
        batch_size=config.worker_batch_size * 2,
        prefetch_batches=config.prefetch_batches,
        drop_last=False,
    )
    epoch_seconds: list[float] = []
    for epoch in range(start_epoch + 1, config.max_epochs + 1):
        epoch_start = time.perf_counter()
        # Different augmentation and shuffling on every worker and epoch, reproducible by seed.
        torch.manual_seed(config.seed + 1_000_003 * epoch + rank)
        lr = config.lr * lr_factor(config, epoch - 1)
        for group in optimizer.param_groups:
            group["lr"] = lr

        def on_step(stats: EpochStats, loss: torch.Tensor, epoch: int = epoch) -> None:
            if stats.steps == 1:
                inject_failure(setup, epoch, rank)
            if config.log_every and rank == 0 and stats.steps % config.log_every == 0:
                log.info(
                    f"{PRODUCT_TAG} pretrain epoch %d step %d loss %.4f",
                    epoch,
                    stats.steps,
                    float(loss),
                )

        train_options = replace(options, seed=config.seed + epoch * world + rank)
        limit = config.batches_per_epoch
        if config.max_steps:
            left = config.max_steps - steps_done
            limit = left if limit is None else min(limit, left)
        stats = train_one_epoch(
            model,
            optimizer,
            augment,
            epoch_batches(train_shard, train_options, device, limit, config.min_steps_per_epoch),
            pixel_mean=setup.pixel_mean,
            device=device,
            autocast=autocast,
            channels_last=channels_last,
            on_step=on_step,
        )
        if stats.steps == 0:
            raise RuntimeError(
                f"worker {rank}: no training batch of {options.batch_size} in its shard of the "
                "train split; use a smaller batch size or fewer workers"
            )
        val_loss_sum, val_count, labels, probs = evaluate(
            core,
            device_batches(val_shard, val_options, device, config.val_batches),
            pixel_mean=setup.pixel_mean,
            autocast=autocast,
            channels_last=channels_last,
        )
        totals = all_reduce(
            [
                stats.loss_sum,
                stats.samples,
                val_loss_sum,
                val_count,
                stats.wait_seconds / stats.seconds,
            ],
            device,
        )
        (train_loss_sum, train_samples, val_sum, val_samples, wait_fraction_sum) = totals
        slowest = all_reduce([stats.seconds], device, op=dist.ReduceOp.MAX)[0]
        parts_labels = gather_to_rank0(labels)
        parts_probs = gather_to_rank0(probs)

        if not val_samples:
            raise RuntimeError(
                "the val split gave no samples: pre-training needs the corpus's validation "
                "identities (split == 'val') for early stopping and checkpoint selection"
            )
        val_loss = val_sum / val_samples
        steps_done += stats.steps
        improved = val_loss < best_val_loss - config.min_delta
        if improved:
            best_val_loss, best_epoch, waiting = val_loss, epoch, 0
        else:
            waiting += 1
        stop = bool(config.patience) and waiting >= config.patience
        budget_spent = bool(config.max_steps) and steps_done >= config.max_steps
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss_sum / train_samples,
            "val_loss": val_loss,
            "samples_per_s": train_samples / slowest,
            "data_wait_fraction": wait_fraction_sum / world,
            "best_val_loss": best_val_loss,
            "best_epoch": best_epoch,
            "epochs_without_improvement": waiting,
            "stopped_early": stop,
            "steps": steps_done,
        }
        if rank == 0:
            au = au_metrics(
                np.concatenate(parts_labels), np.concatenate(parts_probs), LABEL_COLUMNS
            )
            metrics.update(au.as_flat_dict("val", subsets={"paper": PAPER_COMPARISON_AUS}))
        metrics["epoch_time_s"] = time.perf_counter() - epoch_start
        epoch_seconds.append(metrics["epoch_time_s"])

        new_state = TrainingState(
            epoch=epoch,
            model_state=unwrapped_state_dict(core),
            model_config=asdict(config.model),
            pixel_mean=setup.pixel_mean,
            optimizer_state=optimizer.state_dict(),
            best_score=best_val_loss,
            best_epoch=best_epoch,
            epochs_without_improvement=waiting,
            metrics={k: float(v) for k, v in metrics.items() if k in REPORTED},
        )
        reported = {k: metrics[k] for k in REPORTED if k in metrics}
        if rank == 0:
            remaining = config.max_epochs - epoch
            if config.max_steps:
                per_epoch = steps_done / (epoch - start_epoch) if epoch > start_epoch else 1
                left = max(config.max_steps - steps_done, 0)
                remaining = min(remaining, math.ceil(left / max(per_epoch, 1e-9)))
            eta = 0.0 if stop or budget_spent else float(np.mean(epoch_seconds)) * remaining
            log.info(
                f"{PRODUCT_TAG} pretrain epoch {epoch}/{config.max_epochs} train_loss {metrics['train_loss']:.4f} "
                f"val_loss {val_loss:.4f} val_f1 {metrics.get('val_f1_mean', math.nan):.3f} "
                f"{metrics['samples_per_s']:.0f} samples/s "
                f"data-wait {100 * metrics['data_wait_fraction']:.1f}% "
                f"lr {lr:.2e} step {steps_done}"
                + (f"/{config.max_steps}" if config.max_steps else "")
                + f" ETA {format_duration(eta)}"
                + (" (early stop)" if stop else "")
                + (" (step budget spent)" if budget_spent and not stop else "")
            )
            with tempfile.TemporaryDirectory() as directory:
                save_checkpoint(directory, new_state)
                ray.train.report(
                    reported,
                    checkpoint=ray.train.Checkpoint.from_directory(directory),
                    checkpoint_dir_name=f"epoch-{epoch:04d}-{time.time_ns()}",
                )
            # After the report: an epoch lost to a failure before it is checkpointed is trained
            # again, and is then logged once (unless the failure falls between the two).
            if setup.mlflow_run is not None:
                log_metrics(setup.mlflow_run, metrics, step=epoch)
        else:
            ray.train.report(reported)
        if stop or budget_spent:
            break
