"""Typed configuration of `facs finetune`: DISFA folds, weight source, optimiser, stopping, tracking."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.disfa import DisfaConfig
from training.augment_config import AugmentConfig
from training.model_config import ModelConfig

#: The name the fine-tuned DISFA model is registered under in the MLflow model registry.
REGISTERED_MODEL_NAME = "facs-vgg13-disfa"
#: The validation figure early stopping and checkpoint selection watch, and whether lower is better.
MONITORS: dict[str, bool] = {"val_loss": True, "val_f1_mean": False, "val_pr_auc_mean": False}


@dataclass
class FinetuneConfig:
    """Everything a cross-validated fine-tuning run needs (one Ray Train trainer per fold)."""

    disfa: DisfaConfig = field(default_factory=DisfaConfig)
    pretrained: str = field(
        default="",
        metadata={
            "help": "pre-trained weights: models:/facs-vgg13-pretrained/3, runs:/<id>/model or a "
            "checkpoint folder (local or s3://)"
        },
    )
    init: Literal["pretrained", "scratch"] = field(
        default="pretrained",
        metadata={"help": "start from --pretrained, or from random weights (the baseline)"},
    )
    compare_init: bool = field(
        default=False,
        metadata={
            "help": "run scratch and pretrained side by side (same folds, seeds and budget) and "
            "report both"
        },
    )

    head_init: Literal["fresh", "pretrained_rows"] = field(
        default="pretrained_rows",
        metadata={
            "help": "the new 12-AU head: fresh (the paper: a newly initialised output layer) or "
            "pretrained_rows (each DISFA AU's logit starts from the pre-trained 17-AU head's row "
            "of that AU); scratch networks always start fresh"
        },
    )
    labeler_openface: str = field(
        default="",
        metadata={
            "help": "folder of OpenFace 2.0 FeatureExtraction CSVs of the DISFA videos (one per "
            "video, named like it: RightVideoSN001_comp.csv): the labeler is scored on each "
            "fold's test frames as Table III's 'OpenFace 2.0 (measured here)' row"
        },
    )

    folds: int = field(default=3, metadata={"help": "cross-validation folds (the paper: 3)"})
    fold_scheme: Literal["paper", "seeded"] = field(
        default="paper",
        metadata={
            "help": "paper: the released fold<k>_test.csv subjects (restricted to those present); "
            "seeded: a random subject split"
        },
    )
    fold_seed: int = field(
        default=0, metadata={"help": "seed of the seeded split and of the validation subjects"}
    )
    val_subjects: int = field(
        default=2,
        metadata={"help": "training subjects per fold held out (by subject) for early stopping"},
    )
    only_folds: list[int] = field(
        default_factory=list,
        metadata={"help": "run only these folds (1-based); empty = all"},
    )
    concurrent_folds: int = field(
        default=1,
        metadata={
            "help": "folds trained at the same time (each its own trainer); 0 = all at once. "
            "Ray queues trainers that do not fit the cluster"
        },
    )

    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    freeze_blocks: int = field(
        default=0, metadata={"help": "freeze the first k conv blocks (0-4) of the network"}
    )
    freeze_classifier: bool = field(
        default=False,
        metadata={
            "help": "also freeze the two FC layers (no dropout there); with --freeze-blocks 4 "
            "only the new head learns: a linear probe of the pre-trained features"
        },
    )
    dropout: float | None = field(
        default=None,
        metadata={
            "help": "dropout of the fully connected layers while fine-tuning; none = the "
            "network's own (model.dropout_fc, or the pre-trained model's)"
        },
    )
    class_weighting: bool = field(
        default=True,
        metadata={
            "help": "weight each AU's positives by negatives/positives of the training frames "
            "(BCE pos_weight)"
        },
    )
    max_pos_weight: float = field(
        default=5.0, metadata={"help": "upper bound on an AU's positive weight"}
    )

    workers: int = field(default=1, metadata={"help": "data-parallel workers per fold (DDP)"})
    gpus_per_worker: float = field(
        default=0.0, metadata={"help": "GPUs per worker; 0 trains on CPU"}
    )
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs reserved per worker"})
    batch_size: int = field(default=32, metadata={"help": "samples per step on each worker"})
    lr: float = field(
        default=1e-3,
        metadata={"help": "Adam learning rate (the paper: 1e-4; see README: departures)"},
    )
    beta1: float = field(default=0.9, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.999, metadata={"help": "Adam beta2"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam L2 weight decay"})
    max_epochs: int = field(default=100, metadata={"help": "upper bound on epochs per fold"})
    patience: int = field(
        default=10,
        metadata={"help": "stop a fold after this many epochs without a better monitor value"},
    )
    monitor: Literal["val_loss", "val_f1_mean", "val_pr_auc_mean"] = field(
        default="val_f1_mean",
        metadata={"help": "validation figure for early stopping and the kept (best) weights"},
    )
    min_delta: float = field(
        default=0.0, metadata={"help": "the monitor must improve by more than this"}
    )
    batches_per_epoch: int | None = field(
        default=None, metadata={"help": "cap on training steps per epoch (tests, benchmarks)"}
    )
    val_batches: int | None = field(
        default=None, metadata={"help": "cap on validation batches per worker per epoch"}
    )
    shuffle_buffer: int = field(
        default=4096, metadata={"help": "rows in each worker's local shuffle buffer (0 = off)"}
    )
    cache_data: bool = field(
        default=True,
        metadata={
            "help": "read each fold once in the driver into Ray's object store (else stream it "
            "from the cache every epoch)"
        },
    )
    prefetch_batches: int = field(default=4, metadata={"help": "batches prepared ahead"})
    pixel_mean: float | None = field(
        default=None,
        metadata={"help": "mean pixel in [0, 1]; none = the mean of each fold's training frames"},
    )
    threshold: float = field(
        default=0.5, metadata={"help": "probability at which an AU counts as present (F1)"}
    )
    threshold_policy: Literal["fixed", "tuned"] = field(
        default="fixed",
        metadata={
            "help": "fixed: every AU at --threshold (the paper, Table III); tuned: per-AU "
            "thresholds tuned on each fold's validation subjects. Both are logged either way; "
            "this names the headline one"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for the head, shuffling, augmentation"})

    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on GPU (ignored on CPU)"})
    channels_last: bool = field(
        default=True,
        metadata={"help": "channels_last memory format (CPU and GPU; 1.5x faster steps on CPU)"},
    )

    storage_path: str | None = field(
        default=None,
        metadata={
            "help": "where fold checkpoints and the report go (local or s3://); none = "
            "$FACS_STORAGE_ROOT/finetune, else ./runs/finetune (refused in a Ray job)"
        },
    )
    run_name: str | None = field(
        default=None, metadata={"help": "the run's folder name; none = finetune-<UTC timestamp>"}
    )
    max_failures: int = field(
        default=1, metadata={"help": "worker failures a fold recovers from (last checkpoint)"}
    )
    final_model: Literal["best_fold", "none"] = field(
        default="best_fold",
        metadata={
            "help": "best_fold: log and register the fold model with the best validation monitor"
        },
    )
    plots: bool = field(default=True, metadata={"help": "write per-AU PR and ROC curve PNGs"})

    mlflow_uri: str | None = field(
        default=None,
        metadata={
            "help": "MLflow tracking URI; none = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db"
        },
    )
    experiment: str = field(default="facs-finetune", metadata={"help": "MLflow experiment"})
    register_as: str = field(
        default=REGISTERED_MODEL_NAME,
        metadata={"help": "registered model name of the final model ('' = do not register)"},
    )
    log_every: int = field(default=0, metadata={"help": "print progress every N steps (0 = off)"})

    def __post_init__(self) -> None:
        checks = [
            (self.folds >= 2, f"folds >= 2, got {self.folds}"),
            (
                self.head_init in ("fresh", "pretrained_rows"),
                f"head_init fresh or pretrained_rows, got {self.head_init!r}",
            ),
            (self.val_subjects >= 1, f"val_subjects >= 1, got {self.val_subjects}"),
            (
                all(1 <= k <= self.folds for k in self.only_folds),
                f"only_folds within 1..{self.folds}, got {self.only_folds}",
            ),
            (self.concurrent_folds >= 0, f"concurrent_folds >= 0, got {self.concurrent_folds}"),
            (0 <= self.freeze_blocks <= 4, f"freeze_blocks in 0..4, got {self.freeze_blocks}"),
            (self.max_pos_weight >= 1, f"max_pos_weight >= 1, got {self.max_pos_weight}"),
            (self.workers >= 1, f"workers >= 1, got {self.workers}"),
            (self.gpus_per_worker >= 0, f"gpus_per_worker >= 0, got {self.gpus_per_worker}"),
            (self.cpus_per_worker > 0, f"cpus_per_worker > 0, got {self.cpus_per_worker}"),
            (self.batch_size >= 1, f"batch_size >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr > 0, got {self.lr}"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 in [0, 1)"),
            (self.max_epochs >= 1, f"max_epochs >= 1, got {self.max_epochs}"),
            (self.patience >= 0, f"patience >= 0, got {self.patience}"),
            (self.monitor in MONITORS, f"monitor one of {sorted(MONITORS)}, got {self.monitor}"),
            (0 < self.threshold < 1, f"threshold in (0, 1), got {self.threshold}"),
            (
                self.threshold_policy in ("fixed", "tuned"),
                f"threshold_policy fixed or tuned, got {self.threshold_policy!r}",
            ),
            (
                self.dropout is None or 0.0 <= self.dropout < 1.0,
                f"dropout in [0, 1), got {self.dropout}",
            ),
            (
                self.pixel_mean is None or 0.0 <= self.pixel_mean <= 1.0,
                f"pixel_mean in [0, 1], got {self.pixel_mean}",
            ),
            (
                self.batches_per_epoch is None or self.batches_per_epoch >= 1,
                f"batches_per_epoch >= 1, got {self.batches_per_epoch}",
            ),
            (
                self.val_batches is None or self.val_batches >= 1,
                f"val_batches >= 1, got {self.val_batches}",
            ),
        ]
        for ok, expected in checks:
            if not ok:
                raise ValueError(f"FinetuneConfig: expected {expected}")

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def lower_is_better(self) -> bool:
        return MONITORS[self.monitor]

    def inits(self) -> list[str]:
        """The arms to run, in order: ``["scratch", "pretrained"]`` or just ``[init]``."""
        return ["scratch", "pretrained"] if self.compare_init else [self.init]
