"""The worker engine every training job runs on: pre-training, each fold of fine-tuning, and
each fold inside a sweep trial.

Two verbs, :func:`train_epoch` and :func:`evaluate`, over the batches of ``training.data``; the
worker's environment (:class:`WorkerEnv`: rank, device, autocast, memory format, backend
flags); the optimizer (:func:`adam`); early stopping (:class:`EarlyStopping`); and rank 0's
checkpoint-and-report (:func:`report_epoch`). What differs between the jobs (label columns,
subject codes, class weights, fault injection) reaches the loop through ``loss_fn`` and the
``on_batch`` / ``on_step`` hooks. Losses accumulate on the device and are read once per epoch:
the hot loop never waits for the device.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from training.augment import FaceAugment, to_model_input
from training.checkpoints import TrainingState


class Autocast:
    """bf16 autocast on CUDA when asked; a no-op context elsewhere."""

    def __init__(self, device: torch.device, bf16: bool) -> None:
        self.enabled = device.type == "cuda" and bf16
        self.device_type = device.type

    def __call__(self):
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.enabled)


@dataclass(frozen=True)
class WorkerEnv:
    """Where this worker runs and how: its rank, device, autocast and memory format."""

    rank: int
    world: int
    device: torch.device
    autocast: Autocast
    channels_last: bool

    @classmethod
    def current(cls, *, bf16: bool, channels_last: bool) -> WorkerEnv:
        """This Ray Train worker's environment; on a GPU also cudnn autotuning and TF32 matmuls."""
        context = ray.train.get_context()
        device = ray.train.torch.get_device()
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return cls(
            rank=context.get_world_rank(),
            world=context.get_world_size(),
            device=device,
            autocast=Autocast(device, bf16),
            channels_last=channels_last,  # CPU too: benchmarks/cpu_memory_format.py
        )

    def prepare(self, core: nn.Module, compile_model: bool = False) -> nn.Module:
        """``core`` moved to the device (in place) in the memory format, wrapped for DDP.

        Returns the wrapped model to train; ``core`` itself stays the module to evaluate and
        checkpoint (rank 0 evaluates alone, outside DDP's collectives).
        """
        core.to(self.device)
        if self.channels_last:
            core.to(memory_format=torch.channels_last)
        model = ray.train.torch.prepare_model(core)
        return torch.compile(model) if compile_model else model

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Different augmentation on every worker and epoch, reproducible by seed."""
        torch.manual_seed(seed + 1_000_003 * epoch + self.rank)

    def shuffle_seed(self, seed: int, epoch: int) -> int:
        """The local shuffle's seed of this worker in ``epoch``."""
        return seed + epoch * self.world + self.rank

    def inputs(self, faces: torch.Tensor, pixel_mean: float) -> torch.Tensor:
        return to_model_input(faces, pixel_mean, channels_last=self.channels_last)


class AdamSettings(Protocol):
    lr: float
    beta1: float
    beta2: float
    weight_decay: float


def adam(model: nn.Module, settings: AdamSettings) -> torch.optim.Adam:
    """Adam over the model's trainable parameters (frozen blocks are left out)."""
    return torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=settings.lr,
        betas=(settings.beta1, settings.beta2),
        weight_decay=settings.weight_decay,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    samples: int = 0
    steps: int = 0
    seconds: float = 0.0
    wait_seconds: float = 0.0

    @property
    def wait_fraction(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0


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


Batch = dict[str, torch.Tensor]


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    augment: FaceAugment,
    batches: Iterable[Batch],
    loss_fn: nn.Module,
    env: WorkerEnv,
    *,
    pixel_mean: float,
    on_batch: Callable[[Batch], None] | None = None,
    on_step: Callable[[EpochStats, torch.Tensor], None] | None = None,
) -> EpochStats:
    """One pass: uint8 faces -> normalised -> augmented -> step; the loss summed over samples.

    ``on_batch`` sees every batch before its step (e.g. to mark the subjects it holds, on the
    device); ``on_step`` sees the running stats and the step's loss tensor after it.
    """
    stats = EpochStats()
    model.train()
    augment.train()
    loss_sum = torch.zeros((), device=env.device, dtype=torch.float64)
    start = time.perf_counter()
    for batch in timed(iter(batches), stats):
        if on_batch is not None:
            on_batch(batch)
        images = augment(env.inputs(batch["faces"], pixel_mean))
        targets = batch["labels"].to(torch.float32)
        with env.autocast():
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
    stats.loss_sum = float(loss_sum)  # the epoch's one device sync
    stats.seconds = time.perf_counter() - start
    return stats


@dataclass
class EvalOutput:
    """Summed loss, sample count, and every row's labels and probabilities (plus kept columns)."""

    loss_sum: float
    count: int
    labels: np.ndarray
    probs: np.ndarray
    #: The other batch columns asked for (``keep``), e.g. subject codes and frame numbers.
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls, width: int, keep: Sequence[str] = ()) -> EvalOutput:
        return cls(
            0.0,
            0,
            np.zeros((0, width), np.uint8),
            np.zeros((0, width), np.float32),
            {name: np.zeros(0, np.int64) for name in keep},
        )

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.count if self.count else math.nan


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    env: WorkerEnv,
    *,
    pixel_mean: float,
    width: int,
    keep: Sequence[str] = (),
) -> EvalOutput:
    """Unweighted BCE (summed over samples, averaged over AUs, as the training loss) and every
    row's probabilities; ``width`` is the number of AUs (the shape of an empty result)."""
    model.eval()
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    loss_sum = torch.zeros((), device=env.device, dtype=torch.float64)
    count = 0
    parts: dict[str, list[torch.Tensor]] = {"labels": [], "probs": [], **{k: [] for k in keep}}
    for batch in batches:
        images = env.inputs(batch["faces"], pixel_mean)
        with env.autocast():
            logits = model(images).float()
        targets = batch["labels"].to(torch.float32)
        loss_sum += loss_fn(logits, targets).double() / targets.shape[1]
        count += len(targets)
        parts["labels"].append(batch["labels"])
        parts["probs"].append(torch.sigmoid(logits))
        for name in keep:
            parts[name].append(batch[name])
    if not count:
        return EvalOutput.empty(width, keep)
    arrays = {name: torch.cat(values).cpu().numpy() for name, values in parts.items()}
    labels, probs = arrays.pop("labels"), arrays.pop("probs")
    return EvalOutput(float(loss_sum), count, labels, probs, arrays)


@dataclass
class EarlyStopping:
    """Patience on a monitored value; ``best_score`` is ``sign * value`` (lower is better)."""

    patience: int
    min_delta: float = 0.0
    lower_is_better: bool = True
    best_score: float = math.inf
    best_epoch: int = 0
    waiting: int = 0

    @property
    def sign(self) -> float:
        return 1.0 if self.lower_is_better else -1.0

    @property
    def best_value(self) -> float:
        return self.sign * self.best_score

    @property
    def stopped(self) -> bool:
        return bool(self.patience) and self.waiting >= self.patience

    def update(self, epoch: int, value: float) -> bool:
        """Record ``epoch``'s value; whether it is a new best (by more than ``min_delta``)."""
        score = self.sign * value
        if score < self.best_score - self.min_delta:
            self.best_score, self.best_epoch, self.waiting = score, epoch, 0
            return True
        self.waiting += 1
        return False

    def restore(self, state: TrainingState | None) -> EarlyStopping:
        if state is not None:
            self.best_score = state.best_score
            self.best_epoch = state.best_epoch
            self.waiting = state.epochs_without_improvement
        return self


def all_reduce(values: list[float], device: torch.device, op=None) -> list[float]:
    """Sum (or ``op``) floats over all workers; the identity when training alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor.tolist()


def gather_to_rank0(value: Any) -> list[Any]:
    """Every worker's ``value`` on rank 0 (in rank order); ``[]`` elsewhere."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    parts: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, parts, dst=0)
    return parts or []


def restore_checkpoint(read: Callable[[str], Any]) -> Any | None:
    """``read(folder)`` of Ray Train's latest checkpoint of this run; ``None`` on a fresh start."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return read(directory)


def report_epoch(
    env: WorkerEnv,
    metrics: dict[str, Any],
    write: Callable[[str], None] | None = None,
    prefix: str = "epoch",
    epoch: int = 0,
) -> None:
    """Every worker reports (Ray Train waits for all); rank 0 also ``write``s the checkpoint."""
    if env.rank != 0 or write is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        write(directory)
        name = f"{prefix}-{epoch:04d}-{time.time_ns()}" if epoch else f"{prefix}-{time.time_ns()}"
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=name,
        )


class SubjectsSeen:
    """The subject codes a worker's batches held, marked on the device (no per-batch sync)."""

    def __init__(self, count: int, device: torch.device, codes: Iterable[int] = ()) -> None:
        # Slot 0 is code -1: a subject missing from the list.
        self.mask = torch.zeros(count + 1, dtype=torch.bool, device=device)
        for code in codes:
            self.mask[int(code) + 1] = True

    def mark(self, codes: torch.Tensor) -> None:
        self.mask[codes + 1] = True

    def codes(self) -> list[int]:
        return [int(i) - 1 for i in torch.nonzero(self.mask).flatten().tolist()]
