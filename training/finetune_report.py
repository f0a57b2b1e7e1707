"""Cross-validation reporting: Table III and the metrics to MLflow, the DISFA dataset inputs,
the final model registered with its aliases."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pipeline.disfa import DisfaFrames, Fold
from pipeline.storage import Location
from pipeline.vocabulary import PAPER_COMPARISON_AUS
from training.checkpoints import (
    load_checkpoint,
    model_from_state,
)
from training.evaluate import (
    LABELER_ROW,
    CVMetrics,
    table3_markdown,
    table3_rows,
    write_report,
)
from training.finetune_config import FinetuneConfig
from training.finetune_data import LABEL_COLUMNS
from training.finetune_results import ArmResult, CVResult, FoldResult, choose_final
from training.metrics import METRIC_NAMES
from training.model_aliases import Evaluation
from training.model_logging import LoggedModel, log_model
from training.tracking import (
    DatasetRef,
    RunHandle,
    log_dataset,
)

#: Table III row names of the arms.
ARM_LABELS: dict[str, str] = {
    "scratch": "VGG13 from scratch (this run)",
    "pretrained": "VGG13 pre-trained (this run)",
}


def log_disfa_input(
    run: RunHandle, frames: DisfaFrames, fold: Fold | None = None, context: str = "training"
) -> DatasetRef:
    """The DISFA cache entry as the run's MLflow dataset input (digest: the entry's key); a
    fold's run gets the fold's view, with its subjects and frames per split."""
    profile: dict[str, Any] = {
        "frames_accepted": frames.manifest.accepted,
        "frames_rejected": frames.manifest.rejected,
        "rows_read": frames.manifest.rows_read,
        "subjects": len(frames.subjects()),
    }
    if fold is not None:
        per_subject = frames.manifest.accepted_per_subject
        for split in ("train", "val", "test"):
            subjects = getattr(fold, f"{split}_subjects")
            profile[f"{split}_subjects"] = len(subjects)
            profile[f"{split}_frames"] = sum(per_subject.get(s, 0) for s in subjects)
    ref = disfa_dataset(frames, fold)
    return log_dataset(run, ref.name, frames.uri, ref.digest, profile, context)


def disfa_dataset(frames: DisfaFrames, fold: Fold | None = None) -> DatasetRef:
    """The MLflow dataset of a DISFA cache entry (digest: its key); MLflow keeps one dataset per
    (name, digest), so a fold's split is its own named view."""
    name = f"disfa-{frames.manifest.key}" + (f"-fold{fold.index}" if fold is not None else "")
    return DatasetRef.of(name, frames.manifest.key)


def cv_metrics(metrics: CVMetrics, prefix: str = "test") -> dict[str, float]:
    """MLflow metrics of a cross-validation: the fold-mean headline per AU and averaged
    (``test_f1_mean``, ``test_f1_mean_paper``, ``test_f1_AU01``, ...), per fold, and pooled."""
    flat: dict[str, float] = {}
    for name in METRIC_NAMES:
        for au, value in metrics.per_au(name).items():
            flat[f"{prefix}_{name}_{au}"] = value
        flat[f"{prefix}_{name}_mean"] = metrics.mean(name)
        flat[f"{prefix}_{name}_mean_paper"] = metrics.mean(name, PAPER_COMPARISON_AUS)
    for k, fold_metrics in metrics.per_fold.items():
        flat[f"{prefix}_fold{k}_f1_mean"] = fold_metrics.mean()["f1"]
        flat[f"{prefix}_fold{k}_f1_mean_paper"] = fold_metrics.mean(PAPER_COMPARISON_AUS)["f1"]
    flat[f"{prefix}_not_applicable_f1_cells"] = len(metrics.not_applicable("f1"))
    flat.update(
        metrics.pooled.as_flat_dict(f"{prefix}_pooled", subsets={"paper": PAPER_COMPARISON_AUS})
    )
    return flat


def log_final_model(
    config: FinetuneConfig,
    arm: ArmResult,
    final: FoldResult,
    frames: DisfaFrames,
    parent: RunHandle,
) -> LoggedModel:
    """Log (and register, with ``register_as``) the chosen fold's model under the arm's parent
    run, tagged with where it came from and scored by the arm's cross-validation."""
    state = load_checkpoint(final.checkpoint)
    return log_model(
        parent,
        model_from_state(state),
        pixel_mean=state.pixel_mean,
        register_as=config.register_as or None,
        version_tags={
            "init": arm.arm,
            "init_source": arm.init_source,
            "fold": final.fold.index,
            "test_subjects": ",".join(final.fold.test_subjects),
            "best_epoch": final.best_epoch,
            f"val_{config.monitor.removeprefix('val_')}": final.best_monitor,
            "cv_test_f1_mean": arm.mean_f1,
            "cv_test_f1_mean_paper8": arm.mean_f1_paper8,
            "checkpoint": final.checkpoint,
            "disfa_cache": frames.uri,
        },
        metadata={
            "au_names": ",".join(LABEL_COLUMNS),
            "fold": final.fold.index,
            "model_config": dict(state.model_config),
        },
        evaluation=Evaluation(
            key=(
                f"{frames.uri}, {config.folds} {config.fold_scheme} folds (seed "
                f"{config.fold_seed}, {config.val_subjects} val subjects), "
                f"run {config.only_folds or 'all'}"
            ),
            metric="cv_test_f1_mean_paper8",
            value=arm.mean_f1_paper8,
            higher_is_better=True,
        ),
        # The model's own scores: this arm's cross-validation on the DISFA cache entry.
        scores={
            "cv_test_f1_mean": arm.mean_f1,
            "cv_test_f1_mean_paper8": arm.mean_f1_paper8,
            "cv_test_pr_auc_mean_paper8": arm.metrics.mean("pr_auc", PAPER_COMPARISON_AUS),
            "cv_test_roc_auc_mean_paper8": arm.metrics.mean("roc_auc", PAPER_COMPARISON_AUS),
        },
        scored_on=disfa_dataset(frames),
    )


def report_and_register(
    config: FinetuneConfig,
    name: str,
    root: Location,
    tracking_uri: str,
    frames: DisfaFrames,
    arms: dict[str, ArmResult],
    parents: dict[str, RunHandle],
    compare_run: RunHandle | None,
    labeler: CVMetrics | None = None,
) -> CVResult:
    results = {LABELER_ROW: labeler} if labeler is not None else {}
    results.update({arm.label: arm.metrics for arm in arms.values()})
    predictions = {arm.label: [f.predictions for f in arm.folds] for arm in arms.values()}
    report = root.join("report")
    with tempfile.TemporaryDirectory(prefix="facs-report-") as local:
        written = write_report(local, results, predictions, plots=config.plots)
        for path in written:
            relative = Path(path).name
            report.join(relative).write_bytes(Path(path).read_bytes())
        for run in (compare_run, *parents.values()):
            if run is not None:
                run.client().log_artifacts(run.run_id, local, artifact_path="report")
    folds = max(len(arm.folds) for arm in arms.values())
    table = table3_markdown(table3_rows(results), folds, results)
    result = CVResult(
        run_name=name,
        run_uri=root.uri,
        report_uri=report.uri,
        tracking_uri=tracking_uri,
        disfa_cache=frames.uri,
        arms=arms,
        table3=table,
        report_files=[report.join(Path(p).name).uri for p in written],
        compare_run_id=compare_run.run_id if compare_run else None,
        labeler=labeler,
    )
    if config.final_model == "none":
        return result
    arm = arms.get("pretrained") or next(iter(arms.values()))
    final = choose_final(config, arm)
    logged = log_final_model(config, arm, final, frames, parents[arm.arm])
    result.model_uri = logged.model_uri
    result.registered_model = logged.registered_name
    result.registered_version = logged.registered_version
    result.final_fold = final.fold.index
    print(
        f"[facs] finetune {name} done: "
        + ", ".join(
            f"{a.label} F1 {100 * a.mean_f1:.1f} (8 AUs {100 * a.mean_f1_paper8:.1f})"
            for a in arms.values()
        )
        + f"; report {report.uri}"
        + (
            f"; registered {logged.registered_name} v{logged.registered_version}"
            if logged.registered_version
            else ""
        ),
        flush=True,
    )
    return result
