"""A scaling point: the settings every point shares, and one point's pre-training, evaluation and run."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from pipeline.storage import Location
from pipeline.vocabulary import PAPER_COMPARISON_AUS
from training.evaluate import CVMetrics
from training.finetune import prepared_folds, run_cross_validation
from training.finetune_config import FinetuneConfig
from training.init_weights import resolve_init, trained_model
from training.linear_probe import probe_cross_validation
from training.metrics import METRIC_NAMES
from training.pretrain import PretrainResult, run_pretraining
from training.pretrain_config import PretrainConfig
from training.tracking import RunHandle, closing_runs, create_run, log_metrics, log_params, set_tags
from tune.scaling_config import ScalingStudyConfig
from tune.scaling_plan import PlannedPoint


@dataclass
class PointResult:
    """One trained and evaluated point: its data, its runs, its DISFA figures (test folds pooled)."""

    key: str
    axes: list[str]
    subset: str | None
    images: int
    people: int
    val_images: int
    mlflow_run_id: str  # the point's child run under the experiment's parent run
    pretrain_run_id: str
    finetune_run_id: str  # the fine-tuning's parent run (pre-trained arm)
    pretrain_checkpoint: str
    pretrain_epochs: int
    pretrain_best_val_loss: float
    finetune_report: str
    #: ``{"f1": {"mean": ..., "mean_paper8": ...}, "pr_auc": ..., "roc_auc": ...}``
    means: dict[str, dict[str, float]]
    #: per-AU pooled test figures: ``{"AU01": {"f1": ..., "pr_auc": ..., "roc_auc": ...}, ...}``
    per_au: dict[str, dict[str, float]]
    seconds: float

    def mean(self, metric: str, paper8: bool = True) -> float:
        return self.means[metric]["mean_paper8" if paper8 else "mean"]

    def x(self, axis: str) -> int:
        """The point's position on an axis: training images or people."""
        return self.images if axis == "images" else self.people


def shared_pretrain(
    config: ScalingStudyConfig, version: int, root: Location, uri: str
) -> PretrainConfig:
    """The pre-training settings of every point (only ``subset`` and ``run_name`` vary)."""
    return replace(
        config.pretrain,
        corpus=config.corpus,
        version=version,
        subset=None,
        storage_path=root.join("pretrain").uri,
        run_name=None,
        resume=False,
        mlflow_uri=uri,
        register_as=config.pretrain.register_as if config.register_models else "",
    )


def shared_finetune(config: ScalingStudyConfig, root: Location, uri: str) -> FinetuneConfig:
    """The fine-tuning settings of every point (only ``pretrained`` and ``run_name`` vary)."""
    return replace(
        config.finetune,
        disfa=config.disfa,
        init="pretrained",
        compare_init=False,
        storage_path=root.join("finetune").uri,
        run_name=None,
        mlflow_uri=uri,
        register_as=config.finetune.register_as if config.register_models else "",
        final_model=config.finetune.final_model if config.register_models else "none",
    )


def point_figures(
    metrics: CVMetrics,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Means (12 AUs and the paper's 8) and per-AU figures: per fold, averaged over folds."""
    means = {
        m: {"mean": metrics.mean(m), "mean_paper8": metrics.mean(m, PAPER_COMPARISON_AUS)}
        for m in METRIC_NAMES
    }
    per_metric = {m: metrics.per_au(m) for m in METRIC_NAMES}
    per_au = {au: {m: per_metric[m][au] for m in METRIC_NAMES} for au in metrics.au_names}
    return means, per_au


def probe_point(checkpoint: str, finetune: FinetuneConfig) -> CVMetrics:
    """The declared cheaper evaluation: a linear probe of the checkpoint's frozen features on
    the same DISFA folds (``training.linear_probe``)."""
    frames, folds = prepared_folds(finetune)
    model = trained_model(resolve_init(checkpoint))
    return probe_cross_validation(model, frames, folds, finetune.threshold)


def run_point(
    point: PlannedPoint,
    pretrain: PretrainConfig,
    finetune: FinetuneConfig,
    parent: RunHandle,
    experiment: str,
    point_eval: str = "finetune",
) -> PointResult:
    """Pre-train on the point's rows, evaluate the best checkpoint (fine-tune, or the linear
    probe); log a child run."""
    start = time.perf_counter()
    child = create_run(
        parent.tracking_uri,
        experiment,
        point.key,
        tags={
            "mlflow.parentRunId": parent.run_id,
            "facs.stage": "scaling-point",
            "facs.scaling.point": point.key,
            "facs.scaling.axes": ",".join(point.axes),
        },
    )
    log_params(
        child,
        {
            "point": point.key,
            "axes": list(point.axes),
            "subset": point.subset or "",
            "train_images": point.images,
            "train_people": point.people,
            "val_images": point.val_images,
        },
    )
    links = {"facs.scaling.parent_run_id": parent.run_id, "facs.scaling.point": point.key}
    with closing_runs(child):
        pre: PretrainResult = run_pretraining(
            replace(pretrain, subset=point.subset, run_name=point.key)
        )
        set_tags(RunHandle(pre.tracking_uri, "", pre.mlflow_run_id), links)
        set_tags(child, {"pretrain_run_id": pre.mlflow_run_id, "checkpoint": pre.best_checkpoint})
        if point_eval == "probe":
            evaluated = probe_point(pre.best_checkpoint, finetune)
            finetune_run, report_uri = "", ""
            set_tags(child, {"facs.scaling.point_eval": "probe"})
        else:
            cv = run_cross_validation(
                replace(finetune, pretrained=pre.best_checkpoint, run_name=point.key)
            )
            evaluated = cv.arms["pretrained"].metrics
            finetune_run, report_uri = cv.arms["pretrained"].mlflow_run_id, cv.report_uri
            set_tags(RunHandle(cv.tracking_uri, "", finetune_run), links)
            set_tags(child, {"finetune_run_id": finetune_run, "finetune_report": report_uri})
        means, per_au = point_figures(evaluated)
        metrics = {f"test_{m}_{k}": v for m, values in means.items() for k, v in values.items()}
        metrics.update({f"test_f1_{au}": v["f1"] for au, v in per_au.items()})
        metrics["pretrain_best_val_loss"] = pre.best_val_loss
        metrics["pretrain_epochs"] = pre.epochs
        log_metrics(child, metrics, step=0)
    return PointResult(
        key=point.key,
        axes=list(point.axes),
        subset=point.subset,
        images=point.images,
        people=point.people,
        val_images=point.val_images,
        mlflow_run_id=child.run_id,
        pretrain_run_id=pre.mlflow_run_id,
        finetune_run_id=finetune_run,
        pretrain_checkpoint=pre.best_checkpoint,
        pretrain_epochs=pre.epochs,
        pretrain_best_val_loss=pre.best_val_loss,
        finetune_report=report_uri,
        means=means,
        per_au=per_au,
        seconds=time.perf_counter() - start,
    )
