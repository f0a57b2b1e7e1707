"""Typed configuration of `facs pretrain` (YAML + CLI flags) and the learning-rate schedule it names."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pipeline.options import at_least, option, raise_failed
from training.job_config import TrainingJobConfig

#: The name the best pre-trained model is registered under in the MLflow model registry.
REGISTERED_MODEL_NAME = "facs-vgg13-pretrained"


@dataclass
class PretrainConfig(TrainingJobConfig):
    """Everything a pre-training run needs: data, scale, optimiser, schedule, storage, tracking."""

    lr: float = option(
        0.002,
        "Adam learning rate (the paper: 0.005, which collapses to a constant output "
        "here; 2e-3 learned most at the demo's budget: README, departures)",
    )
    max_epochs: int = option(500, "upper bound on epochs")
    patience: int = option(20, "stop after this many epochs without a lower val loss (0 = never)")
    cache_data: bool = option(
        True,
        "read the corpus (or subset) once into Ray's object store when it fills at "
        "most half of it, instead of streaming and filtering it from storage every epoch; a "
        "larger one streams (measured: a 2,000-image subset, streamed, spent 30 to 75 percent of "
        "each epoch waiting for data)",
    )
    max_failures: int = option(
        3, "worker failures to recover from (from the last checkpoint); -1 = any"
    )
    pixel_mean: float | None = option(
        None, "mean pixel in [0, 1] to subtract; none = computed from the train split"
    )
    experiment: str = option("facs-pretrain", "MLflow experiment name")
    register_as: str = option(
        REGISTERED_MODEL_NAME, "registered model name for the best model ('' = do not register)"
    )

    corpus: str = option("", "corpus root: local folder or s3://bucket/prefix")
    version: int | None = option(None, "corpus version to train on; none = the latest")
    subset: str | None = option(None, "named corpus subset to train on; none = every row")

    global_batch_size: int | None = option(
        None, "samples per step over all workers; overrides batch_size (must divide evenly)"
    )

    schedule: Literal["constant", "step", "cosine"] = option(
        "constant",
        "constant; step: lr x step_factors after step_epochs (the paper's); cosine: "
        "half a cosine to 0 at the step budget (max_steps, step by step), else at max_epochs",
    )
    step_epochs: list[int] = option(
        factory=lambda: [20, 40], help="epochs after which the step schedule changes the lr"
    )
    step_factors: list[float] = option(
        factory=lambda: [0.5, 0.1], help="lr multipliers (of --lr) from each of step_epochs on"
    )
    max_steps: int | None = option(
        None,
        "optimizer-step budget: stop after this many steps in all (the last epoch "
        "is cut short), so runs on more or fewer images train alike; none = epochs decide",
    )
    min_steps_per_epoch: int = option(
        0,
        "an epoch repeats passes over the training split (each reshuffled) until it "
        "has taken this many steps: small subsets under a step budget otherwise spend most "
        "of their time validating and checkpointing (0 = one pass)",
    )

    compile: bool = option(False, "torch.compile the model")

    resume: bool = option(
        False, "continue a stopped run (--run-name, else the newest) from its last checkpoint"
    )
    keep_checkpoints: int = option(1, "best checkpoints (by val loss) kept besides the latest")

    def __post_init__(self) -> None:
        checks = self.job_checks() + [
            at_least("version", self.version, 1, optional=True),
            at_least("max_steps", self.max_steps, 1, optional=True),
            at_least("keep_checkpoints", self.keep_checkpoints, 1),
            at_least("min_steps_per_epoch", self.min_steps_per_epoch, 0),
            (
                len(self.step_epochs) == len(self.step_factors),
                f"as many step_factors as step_epochs, got {self.step_factors} "
                f"for {self.step_epochs}",
            ),
            (
                list(self.step_epochs) == sorted(self.step_epochs),
                f"step_epochs in increasing order, got {self.step_epochs}",
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
        raise_failed(checks, "PretrainConfig")

    @property
    def worker_batch_size(self) -> int:
        if self.global_batch_size is not None:
            return self.global_batch_size // self.workers
        return self.batch_size


def lr_factor(config: PretrainConfig, epoch: int, step: int = 0) -> float:
    """Multiplier of ``config.lr`` during 0-based ``epoch``, after ``step`` optimizer steps.

    ``constant``: 1. ``step``: 1 until ``step_epochs[0]`` epochs are done, then
    ``step_factors[0]``, and so on (the paper's code: halve after 20 epochs, a tenth after 40).
    ``cosine``: half a cosine from 1 to 0, over the step budget when there is one (set before
    every step: a budget of a few thousand steps spans only a few epochs), else over
    ``max_epochs``.
    """
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "cosine":
        if config.max_steps:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, config.max_steps) / config.max_steps))
        return 0.5 * (1.0 + math.cos(math.pi * epoch / config.max_epochs))
    factor = 1.0
    for boundary, step_factor in zip(config.step_epochs, config.step_factors, strict=True):
        if epoch >= boundary:
            factor = step_factor
    return factor


def lr_per_step(config: PretrainConfig) -> bool:
    """Whether the learning rate changes within an epoch (cosine over a step budget)."""
    return config.schedule == "cosine" and bool(config.max_steps)
