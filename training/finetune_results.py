"""A fold's, an arm's and a cross-validation's results: read back from each fold's final
checkpoint, checked for subject leakage, scored with thresholds tuned on validation only."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch

from pipeline.disfa import Fold
from pipeline.storage import Location
from pipeline.vocabulary import PAPER_COMPARISON_AUS
from training.checkpoints import (
    load_checkpoint,
)
from training.evaluate import (
    CVMetrics,
    FoldPredictions,
    evaluate_folds,
)
from training.finetune_config import FinetuneConfig
from training.finetune_data import FoldData
from training.finetune_worker import (
    FINAL_PREFIX,
    PREDICTIONS_FILE,
    SUBJECTS_FILE,
    VAL_PREDICTIONS_FILE,
    fold_part,
)
from training.metrics import au_metrics, tune_thresholds
from training.tracking import (
    RunHandle,
)


@dataclass
class FoldResult:
    """One fold of one arm: where it lives, how it stopped, what it saw, what it predicted."""

    arm: str
    fold: Fold
    mlflow_run_id: str
    checkpoint: str  # URI of the final checkpoint (best weights + test predictions)
    epochs: int
    best_epoch: int
    best_monitor: float
    stopped_early: bool
    pixel_mean: float
    #: Subjects whose frames actually reached the model, per split (train / val / test).
    subjects_seen: dict[str, list[str]]
    predictions: FoldPredictions
    seconds: float
    #: The kept weights' predictions on the validation subjects (for tuned thresholds).
    val_predictions: FoldPredictions | None = None


@dataclass
class ArmResult:
    """One cross-validation: its starting weights, folds, metrics and MLflow parent run."""

    arm: str
    label: str
    init_source: str
    mlflow_run_id: str
    folds: list[FoldResult]
    metrics: CVMetrics
    #: Test F1 with per-AU thresholds tuned on each fold's validation subjects (see
    #: ``tuned_threshold_metrics``); empty when a fold has no validation predictions.
    tuned: dict[str, float] = field(default_factory=dict)

    @property
    def mean_f1(self) -> float:
        """F1 per fold and AU, averaged over the folds, then over the 12 AUs (the headline)."""
        return self.metrics.mean("f1")

    @property
    def mean_f1_paper8(self) -> float:
        """The same over the paper's 8 AUs (Table III's Avg)."""
        return self.metrics.mean("f1", PAPER_COMPARISON_AUS)


@dataclass
class CVResult:
    """What ``run_cross_validation`` left behind, and where."""

    run_name: str
    run_uri: str
    report_uri: str
    tracking_uri: str
    disfa_cache: str
    arms: dict[str, ArmResult]
    table3: str  # markdown
    report_files: list[str] = field(default_factory=list)
    compare_run_id: str | None = None
    #: The labeler scored on the same test frames (``labeler_openface``), if given.
    labeler: CVMetrics | None = None
    model_uri: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    final_fold: int | None = None


def fold_result_metrics(result: FoldResult, threshold: float) -> dict[str, float]:
    p = result.predictions
    metrics = au_metrics(p.y_true, p.y_prob, p.au_names, threshold)
    return metrics.as_flat_dict("test", subsets={"paper": PAPER_COMPARISON_AUS})


def read_fold(
    config: FinetuneConfig,
    result: ray.train.Result,
    arm: str,
    data: FoldData,
    root: Location,
    fold_run: RunHandle,
    start: float,
) -> FoldResult:
    """One fold's part (``fold<k>/``) of its trainer's final checkpoint."""
    fold = data.fold
    checkpoint = result.checkpoint
    if checkpoint is None or not Path(checkpoint.path).name.startswith(FINAL_PREFIX):
        raise RuntimeError(
            f"{arm} fold {fold.index}: the trainer ended without its final checkpoint "
            f"(got {checkpoint.path if checkpoint else None})"
        )
    location = Location.of(root.uri_of(checkpoint.path)).join(fold_part(fold))
    uri = location.uri
    state = load_checkpoint(uri)
    with np.load(_local_bytes(location.join(PREDICTIONS_FILE)), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    val_predictions = None
    if location.join(VAL_PREDICTIONS_FILE).exists():
        with np.load(
            _local_bytes(location.join(VAL_PREDICTIONS_FILE)), allow_pickle=False
        ) as archive:
            val = {name: archive[name] for name in archive.files}
        val_predictions = FoldPredictions(fold.index, **val)
    seen = json.loads(location.join(SUBJECTS_FILE).read_text())["subjects"]
    predictions = FoldPredictions(
        fold=fold.index,
        subjects=arrays["subjects"],
        frames=arrays["frames"],
        y_true=arrays["y_true"],
        y_prob=arrays["y_prob"],
    )
    stopped = bool(config.patience) and state.epochs_without_improvement >= config.patience
    return FoldResult(
        arm=arm,
        fold=fold,
        mlflow_run_id=fold_run.run_id,
        checkpoint=uri,
        epochs=state.epoch,
        best_epoch=state.best_epoch,
        best_monitor=float(state.metrics.get("best_monitor", math.nan)),
        stopped_early=stopped,
        pixel_mean=data.pixel_mean,
        subjects_seen={split: sorted(values) for split, values in seen.items()},
        predictions=predictions,
        seconds=time.perf_counter() - start,
        val_predictions=val_predictions,
    )


def _local_bytes(location: Location):
    import io

    return io.BytesIO(location.read_bytes())


def check_no_leakage(result: FoldResult) -> None:
    """Raise when a test subject's frames reached training or validation, or the splits differ
    from the fold's subjects."""
    seen, fold = result.subjects_seen, result.fold
    leaked = sorted(
        set(seen.get("test", [])) & (set(seen.get("train", [])) | set(seen.get("val", [])))
    )
    if leaked:
        raise RuntimeError(
            f"{result.arm} fold {fold.index}: test subjects {leaked} were trained on"
        )
    for split, expected in (
        ("train", fold.train_subjects),
        ("val", fold.val_subjects),
        ("test", fold.test_subjects),
    ):
        extra = sorted(set(seen.get(split, [])) - set(expected))
        if extra:
            raise RuntimeError(
                f"{result.arm} fold {fold.index}: {split} batches held subjects {extra} outside "
                f"the fold's {split} subjects {list(expected)}"
            )


def tuned_threshold_metrics(folds: Sequence[FoldResult], default: float) -> dict[str, float]:
    """Test F1 with each fold's per-AU thresholds tuned on that fold's validation subjects.

    Per fold (``test_fold<k>_f1_mean_tuned``), their mean over folds then AUs
    (``test_f1_mean_tuned``, the headline's twin) and pooled (``test_pooled_f1_mean_tuned``:
    every fold's frames binarised at its own thresholds, then counted together). An AU without positive
    validation frames keeps ``default``. Empty when a fold lacks validation predictions.
    """
    if not folds or any(f.val_predictions is None for f in folds):
        return {}
    out: dict[str, float] = {}
    truth, decided = [], []
    for result in folds:
        val, test = result.val_predictions, result.predictions
        thresholds = tune_thresholds(val.y_true, val.y_prob, default)
        fold_f1 = au_metrics(test.y_true, test.y_prob, test.au_names, thresholds).mean()["f1"]
        out[f"test_fold{result.fold.index}_f1_mean_tuned"] = fold_f1
        truth.append(test.y_true)
        decided.append((test.y_prob >= thresholds[None, :]).astype(np.float32))
    au_names = folds[0].predictions.au_names
    fold_mean = evaluate_folds(
        [
            FoldPredictions(r.fold.index, r.predictions.subjects, r.predictions.frames, t, d)
            for r, t, d in zip(folds, truth, decided, strict=True)
        ]
    )
    out["test_f1_mean_tuned"] = fold_mean.mean("f1")
    out["test_f1_mean_paper_tuned"] = fold_mean.mean("f1", PAPER_COMPARISON_AUS)
    pooled = au_metrics(np.concatenate(truth), np.concatenate(decided), au_names, 0.5)
    out["test_pooled_f1_mean_tuned"] = pooled.mean()["f1"]
    out["test_pooled_f1_mean_paper_tuned"] = pooled.mean(PAPER_COMPARISON_AUS)["f1"]
    return out


def choose_final(config: FinetuneConfig, arm: ArmResult) -> FoldResult:
    """The fold whose best validation monitor is best (never chosen by test figures)."""
    sign = 1.0 if config.lower_is_better else -1.0
    return min(arm.folds, key=lambda f: (sign * f.best_monitor, f.fold.index))
