"""Typed configuration of `facs pretrain` (YAML + CLI flags) and the learning-rate schedule it names."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from training.augment_config import AugmentConfig
from training.model_config import ModelConfig

#: The name the best pre-trained model is registered under in the MLflow model registry.
REGISTERED_MODEL_NAME = "facs-vgg13-pretrained"


@dataclass
class PretrainConfig:
    """Everything a pre-training run needs: data, scale, optimiser, schedule, storage, tracking."""

    corpus: str = field(
        default="", metadata={"help": "corpus root: local folder or s3://bucket/prefix"}
    )
    version: int | None = field(
        default=None, metadata={"help": "corpus version to train on; none = the latest"}
    )
    subset: str | None = field(
        default=None, metadata={"help": "named corpus subset to train on; none = every row"}
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    workers: int = field(default=1, metadata={"help": "data-parallel training workers (DDP)"})
    gpus_per_worker: float = field(
        default=0.0, metadata={"help": "GPUs per worker; 0 trains on CPU (gloo), >0 on GPU (NCCL)"}
    )
    cpus_per_worker: float = field(
        default=1.0,
        metadata={"help": "CPUs reserved per worker (leave some free for Ray Data's read tasks)"},
    )
    batch_size: int = field(default=32, metadata={"help": "samples per step on each worker"})
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "samples per step over all workers; overrides batch_size (must divide evenly)"
        },
    )

    lr: float = field(
        default=0.001,
        metadata={
            "help": "Adam learning rate (the paper: 0.005, which collapses to a constant output "
            "here; see README: departures)"
        },
    )
    beta1: float = field(default=0.9, metadata={"help": "Adam beta1 (momentum)"})
    beta2: float = field(default=0.999, metadata={"help": "Adam beta2"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam L2 weight decay"})
    schedule: Literal["constant", "step", "cosine"] = field(
        default="constant",
        metadata={
            "help": "constant; step: lr x step_factors after step_epochs (the paper's); cosine: "
            "to 0 at max_epochs"
        },
    )
    step_epochs: list[int] = field(
        default_factory=lambda: [20, 40],
        metadata={"help": "epochs after which the step schedule changes the lr"},
    )
    step_factors: list[float] = field(
        default_factory=lambda: [0.5, 0.1],
        metadata={"help": "lr multipliers (of --lr) from each of step_epochs on"},
    )
    max_epochs: int = field(default=500, metadata={"help": "upper bound on epochs"})
    max_steps: int | None = field(
        default=None,
        metadata={
            "help": "optimizer-step budget: stop after this many steps in all (the last epoch "
            "is cut short), so runs on more or fewer images train alike; none = epochs decide"
        },
    )
    patience: int = field(
        default=20,
        metadata={"help": "stop after this many epochs without a lower val loss (0 = never)"},
    )
    min_delta: float = field(
        default=0.0, metadata={"help": "val loss must drop by more than this to count as better"}
    )
    batches_per_epoch: int | None = field(
        default=None,
        metadata={"help": "cap on training steps per epoch (smoke tests, benchmarks)"},
    )
    min_steps_per_epoch: int = field(
        default=0,
        metadata={
            "help": "an epoch repeats passes over the training split (each reshuffled) until it "
            "has taken this many steps: small subsets under a step budget otherwise spend most "
            "of their time validating and checkpointing (0 = one pass)"
        },
    )
    val_batches: int | None = field(
        default=None, metadata={"help": "cap on validation batches per worker per epoch"}
    )
    shuffle_buffer: int = field(
        default=4096, metadata={"help": "rows in each worker's local shuffle buffer (0 = off)"}
    )
    cache_data: bool = field(
        default=False,
        metadata={
            "help": "read the corpus once into Ray's object store when it fills at most half of it "
            "instead of streaming it from storage every epoch"
        },
    )
    prefetch_batches: int = field(
        default=4, metadata={"help": "batches each worker prepares ahead of the step"}
    )
    pixel_mean: float | None = field(
        default=None,
        metadata={"help": "mean pixel in [0, 1] to subtract; none = computed from the train split"},
    )
    seed: int = field(default=0, metadata={"help": "seed for weights, shuffling, augmentation"})

    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on GPU (ignored on CPU)"})
    channels_last: bool = field(
        default=True,
        metadata={"help": "channels_last memory format (CPU and GPU; 1.5x faster steps on CPU)"},
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})

    storage_path: str | None = field(
        default=None,
        metadata={
            "help": "where runs and checkpoints go: local folder (shared) or s3:// URI; none = "
            "$FACS_STORAGE_ROOT/pretrain, else ./runs/pretrain (refused in a Ray job, whose "
            "working dir is temporary)"
        },
    )
    run_name: str | None = field(
        default=None,
        metadata={"help": "name of the run's folder; none = pretrain-<UTC timestamp>"},
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "continue a stopped run (--run-name, else the newest) from its last checkpoint"
        },
    )
    max_failures: int = field(
        default=3,
        metadata={"help": "worker failures to recover from (from the last checkpoint); -1 = any"},
    )
    keep_checkpoints: int = field(
        default=1,
        metadata={"help": "best checkpoints (by val loss) kept besides the latest"},
    )

    mlflow_uri: str | None = field(
        default=None,
        metadata={
            "help": "MLflow tracking URI, e.g. http://host:5000; none = $MLFLOW_TRACKING_URI, "
            "else sqlite:///<cwd>/mlflow.db with artifacts in <cwd>/mlartifacts"
        },
    )
    experiment: str = field(default="facs-pretrain", metadata={"help": "MLflow experiment name"})
    register_as: str = field(
        default=REGISTERED_MODEL_NAME,
        metadata={"help": "registered model name for the best model ('' = do not register)"},
    )

    log_every: int = field(
        default=0, metadata={"help": "print progress every N steps within an epoch (0 = off)"}
    )

    def __post_init__(self) -> None:
        checks = [
            (self.version is None or self.version >= 1, f"version >= 1, got {self.version}"),
            (self.workers >= 1, f"workers >= 1, got {self.workers}"),
            (self.gpus_per_worker >= 0, f"gpus_per_worker >= 0, got {self.gpus_per_worker}"),
            (self.cpus_per_worker > 0, f"cpus_per_worker > 0, got {self.cpus_per_worker}"),
            (self.batch_size >= 1, f"batch_size >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr > 0, got {self.lr}"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 in [0, 1)"),
            (self.max_epochs >= 1, f"max_epochs >= 1, got {self.max_epochs}"),
            (
                self.max_steps is None or self.max_steps >= 1,
                f"max_steps >= 1, got {self.max_steps}",
            ),
            (self.patience >= 0, f"patience >= 0, got {self.patience}"),
            (self.shuffle_buffer >= 0, f"shuffle_buffer >= 0, got {self.shuffle_buffer}"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints >= 1, got {self.keep_checkpoints}"),
            (
                len(self.step_epochs) == len(self.step_factors),
                f"as many step_factors as step_epochs, got {self.step_factors} "
                f"for {self.step_epochs}",
            ),
            (
                list(self.step_epochs) == sorted(self.step_epochs),
                f"step_epochs in increasing order, got {self.step_epochs}",
            ),
            (
                self.pixel_mean is None or 0.0 <= self.pixel_mean <= 1.0,
                f"pixel_mean in [0, 1] (pixels scaled to [0, 1]), got {self.pixel_mean}",
            ),
            (
                self.batches_per_epoch is None or self.batches_per_epoch >= 1,
                f"batches_per_epoch >= 1, got {self.batches_per_epoch}",
            ),
            (
                self.min_steps_per_epoch >= 0,
                f"min_steps_per_epoch >= 0, got {self.min_steps_per_epoch}",
            ),
            (
                self.val_batches is None or self.val_batches >= 1,
                f"val_batches >= 1, got {self.val_batches}",
            ),
        ]
        if self.global_batch_size is not None:
            checks.append(
                (
                    self.global_batch_size >= self.workers
                    and self.global_batch_size % self.workers == 0,
                    f"global_batch_size a multiple of workers ({self.workers}), "
                    f"got {self.global_batch_size}",
                )
            )
        for ok, expected in checks:
            if not ok:
                raise ValueError(f"PretrainConfig: expected {expected}")

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def worker_batch_size(self) -> int:
        if self.global_batch_size is not None:
            return self.global_batch_size // self.workers
        return self.batch_size


def lr_factor(config: PretrainConfig, epoch: int) -> float:
    """Multiplier of ``config.lr`` during 0-based ``epoch``.

    ``constant``: 1. ``step``: 1 until ``step_epochs[0]`` epochs are done, then ``step_factors[0]``, and so on (the
    paper's code: halve after 20 epochs, a tenth after 40). ``cosine``: half a cosine from 1 at
    epoch 0 to 0 at ``max_epochs``.
    """
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / config.max_epochs))
    factor = 1.0
    for boundary, step_factor in zip(config.step_epochs, config.step_factors, strict=True):
        if epoch >= boundary:
            factor = step_factor
    return factor
