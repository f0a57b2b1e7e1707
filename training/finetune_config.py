"""Typed configuration of `facs finetune`: DISFA folds, weight source, optimiser, stopping, tracking."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.disfa import DisfaConfig
from pipeline.options import at_least, option, raise_failed
from training.job_config import TrainingJobConfig

#: The name the fine-tuned DISFA model is registered under in the MLflow model registry.
REGISTERED_MODEL_NAME = "facs-vgg13-disfa"
#: The validation figure early stopping and checkpoint selection watch, and whether lower is better.
MONITORS: dict[str, bool] = {"val_loss": True, "val_f1_mean": False, "val_pr_auc_mean": False}


@dataclass
class FinetuneConfig(TrainingJobConfig):
    """Everything a cross-validated fine-tuning run needs (one Ray Train trainer per fold)."""

    cache_data: bool = option(
        True,
        "read each fold once in the driver into Ray's object store (else stream it "
        "from the cache every epoch)",
    )
    lr: float = option(1e-3, "Adam learning rate (the paper: 1e-4; see README: departures)")
    pixel_mean: float | None = option(
        None, "mean pixel in [0, 1]; none = the mean of each fold's training frames"
    )
    experiment: str = option("facs-finetune", "MLflow experiment")
    register_as: str = option(
        REGISTERED_MODEL_NAME, "registered model name of the final model ('' = do not register)"
    )

    disfa: DisfaConfig = field(default_factory=DisfaConfig)
    pretrained: str = option(
        "",
        "pre-trained weights: models:/facs-vgg13-pretrained/3, runs:/<id>/model or a "
        "checkpoint folder (local or s3://)",
    )
    init: Literal["pretrained", "scratch"] = option(
        "pretrained", "start from --pretrained, or from random weights (the baseline)"
    )
    compare_init: bool = option(
        False,
        "run scratch and pretrained side by side (same folds, seeds and budget) and report both",
    )

    head_init: Literal["fresh", "pretrained_rows"] = option(
        "pretrained_rows",
        "the new 12-AU head: fresh (the paper: a newly initialised output layer) or "
        "pretrained_rows (each DISFA AU's logit starts from the pre-trained 17-AU head's row "
        "of that AU); scratch networks always start fresh",
    )
    labeler_openface: str = option(
        "",
        "folder of OpenFace 2.0 FeatureExtraction CSVs of the DISFA videos (one per "
        "video, named like it: RightVideoSN001_comp.csv): the labeler is scored on each "
        "fold's test frames as Table III's 'OpenFace 2.0 (measured here)' row",
    )

    folds: int = option(3, "cross-validation folds (the paper: 3)")
    fold_scheme: Literal["paper", "seeded"] = option(
        "paper",
        "paper: the released fold<k>_test.csv subjects (restricted to those present); "
        "seeded: a random subject split",
    )
    fold_seed: int = option(0, "seed of the seeded split and of the validation subjects")
    val_subjects: int = option(
        2, "training subjects per fold held out (by subject) for early stopping"
    )
    only_folds: list[int] = option(factory=list, help="run only these folds (1-based); empty = all")
    concurrent_folds: int = option(
        1,
        "trainers running at the same time (each steps folds_per_trainer folds); "
        "0 = all at once. Ray queues trainers that do not fit the cluster",
    )
    folds_per_trainer: int = option(
        1,
        "folds of an arm one trainer steps in lock-step (0 = all of them): fewer "
        "trainer start-ups (about 20 s each on 2 CPU cores), less fold parallelism",
    )

    freeze_blocks: int = option(0, "freeze the first k conv blocks (0-4) of the network")
    freeze_classifier: bool = option(
        False,
        "also freeze the two FC layers (no dropout there); with --freeze-blocks 4 "
        "only the new head learns: a linear probe of the pre-trained features",
    )
    dropout: float | None = option(
        None,
        "dropout of the fully connected layers while fine-tuning; none = the "
        "network's own (model.dropout_fc, or the pre-trained model's)",
    )
    class_weighting: bool = option(
        True,
        "weight each AU's positives by negatives/positives of the training frames (BCE pos_weight)",
    )
    max_pos_weight: float = option(5.0, "upper bound on an AU's positive weight")

    monitor: Literal["val_loss", "val_f1_mean", "val_pr_auc_mean"] = option(
        "val_f1_mean", "validation figure for early stopping and the kept (best) weights"
    )
    threshold: float = option(0.5, "probability at which an AU counts as present (F1)")
    threshold_policy: Literal["fixed", "tuned"] = option(
        "fixed",
        "fixed: every AU at --threshold (the paper, Table III); tuned: per-AU "
        "thresholds tuned on each fold's validation subjects. Both are logged either way; "
        "this names the headline one",
    )

    final_model: Literal["best_fold", "none"] = option(
        "best_fold", "best_fold: log and register the fold model with the best validation monitor"
    )
    plots: bool = option(True, "write per-AU PR and ROC curve PNGs")

    def __post_init__(self) -> None:
        checks = self.job_checks() + [
            at_least("folds", self.folds, 2),
            (
                self.head_init in ("fresh", "pretrained_rows"),
                f"head_init fresh or pretrained_rows, got {self.head_init!r}",
            ),
            at_least("val_subjects", self.val_subjects, 1),
            (
                all(1 <= k <= self.folds for k in self.only_folds),
                f"only_folds within 1..{self.folds}, got {self.only_folds}",
            ),
            at_least("concurrent_folds", self.concurrent_folds, 0),
            at_least("folds_per_trainer", self.folds_per_trainer, 0),
            (0 <= self.freeze_blocks <= 4, f"freeze_blocks in 0..4, got {self.freeze_blocks}"),
            at_least("max_pos_weight", self.max_pos_weight, 1),
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
        ]
        raise_failed(checks, "FinetuneConfig")

    @property
    def lower_is_better(self) -> bool:
        return MONITORS[self.monitor]

    def inits(self) -> list[str]:
        """The arms to run, in order: ``["scratch", "pretrained"]`` or just ``[init]``."""
        return ["scratch", "pretrained"] if self.compare_init else [self.init]
