"""The settings every training job shares: network, resources, optimizer, stopping, data
options, storage and tracking. ``PretrainConfig`` and ``FinetuneConfig`` extend it (flat fields:
the flags and YAML keys are the same as each job's own), overriding a default where the job's
differs (epochs, patience, caching, failures, the MLflow names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.options import Checks, at_least, at_least_each, option
from pipeline.run_options import DEFAULT_TRACKING, RayWorkers, mlflow_uri_field
from training.augment_config import AugmentConfig
from training.model_config import ModelConfig


@dataclass
class TrainingJobConfig(RayWorkers):
    """What pre-training and fine-tuning configure alike (their workers: ``RayWorkers``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    batch_size: int = option(32, "samples per step on each worker")

    lr: float = option(0.001, "Adam learning rate (see README: departures from the paper)")
    beta1: float = option(0.9, "Adam beta1 (momentum)")
    beta2: float = option(0.999, "Adam beta2")
    weight_decay: float = option(0.0, "Adam L2 weight decay")
    max_epochs: int = option(100, "upper bound on epochs")
    patience: int = option(10, "stop after this many epochs without a better monitor (0 = never)")
    min_delta: float = option(0.0, "the monitor must improve by more than this to count")
    batches_per_epoch: int | None = option(
        None, "cap on training steps per epoch (tests, benchmarks)"
    )
    val_batches: int | None = option(None, "cap on validation batches per worker per epoch")
    shuffle_buffer: int = option(4096, "rows in each worker's local shuffle buffer (0 = off)")
    cache_data: bool = option(False, "read the data once into Ray's object store")
    prefetch_batches: int = option(4, "batches each worker prepares ahead of the step")
    pixel_mean: float | None = option(
        None, "mean pixel in [0, 1] to subtract; none = that of the training data"
    )
    seed: int = option(0, "seed for weights, shuffling, augmentation")

    bf16: bool = option(True, "bf16 autocast on GPU (ignored on CPU)")
    channels_last: bool = option(
        True, "channels_last memory format (CPU and GPU; 1.5x faster steps on CPU)"
    )

    storage_path: str | None = option(
        None,
        "where runs and checkpoints go: local folder (shared) or s3:// URI; none = "
        "$FACS_STORAGE_ROOT/pretrain (or /finetune), else ./runs/pretrain (./runs/finetune; "
        "refused in a Ray job, whose working dir is temporary)",
    )
    run_name: str | None = option(
        None, "name of the run's folder; none = pretrain- (finetune-) <UTC timestamp>"
    )
    max_failures: int = option(
        1, "worker failures to recover from (from the last checkpoint); -1 = any"
    )
    mlflow_uri: str | None = mlflow_uri_field(
        ", e.g. http://host:5000", f"{DEFAULT_TRACKING} with artifacts in <cwd>/mlartifacts"
    )
    experiment: str = option("facs", "MLflow experiment name")
    register_as: str = option("", "registered model name of the final model ('' = do not register)")
    log_every: int = option(0, "print progress every N steps within an epoch (0 = off)")

    def job_checks(self) -> Checks:
        """The checks of the shared fields (each job adds its own)."""
        return [
            *self.worker_checks(),
            at_least("batch_size", self.batch_size, 1),
            (self.lr > 0, f"lr > 0, got {self.lr}"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 in [0, 1)"),
            *at_least_each(self, max_epochs=1, patience=0, shuffle_buffer=0),
            (
                self.pixel_mean is None or 0.0 <= self.pixel_mean <= 1.0,
                f"pixel_mean in [0, 1] (pixels scaled to [0, 1]), got {self.pixel_mean}",
            ),
            at_least("batches_per_epoch", self.batches_per_epoch, 1, optional=True),
            at_least("val_batches", self.val_batches, 1, optional=True),
        ]
