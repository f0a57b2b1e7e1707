"""`facs experiment scaling`: F1 against the number of pre-training images and of people (Tables IV, V).

``run_scaling(config)`` plans every point (a gender-balanced subset of the corpus's training rows),
checks that the corpus can give each size *before* anything trains, writes the subsets, then runs
each point as ``run_pretraining`` followed by ``run_cross_validation`` from its best checkpoint,
``concurrent`` points at a time (each with its own Ray trainers). Every point shares one protocol:
the same ``pretrain`` and ``finetune`` settings, seeds and DISFA folds; only the subset differs.

Sizes count *training* images / people. Each point's subset also holds the version's whole
validation split (identity-disjoint), so early stopping and checkpoint selection are judged on the
same rows at every size, and even 12 people (on a 95/5 split, likely none in validation) train.
``all`` is the whole version: every labelled training row (of every gender, so not balanced).
Sizes the corpus cannot give are an error, never clamped: a clamped point would repeat another
point's subset under a row label that promises more data than it had.
"""

from __future__ import annotations

import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.corpus.manifest import CorpusError, SubsetEntry, load_manifest, save_manifest
from pipeline.corpus.read import METADATA_COLUMNS, read_metadata_table
from pipeline.corpus.subset import BALANCED_GENDERS, SubsetConfig, choose_rows
from pipeline.disfa import prepare_disfa
from pipeline.ray_runtime import ensure_ray
from pipeline.run_storage import check_defaults_reachable, check_kept, output_location
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
from training.tracking import (
    RunHandle,
    create_run,
    end_run,
    git_commit,
    log_metrics,
    log_params,
    resolve_tracking_uri,
    set_tags,
    store_path,
    uses_default_store,
)
from tune.scaling_config import ALL, ScalingStudyConfig
from tune.scaling_report import write_scaling_report

log = logging.getLogger(__name__)

AXES: tuple[str, ...] = ("images", "identities")
#: Where experiments go without --output outside a Ray job and without FACS_STORAGE_ROOT.
DEFAULT_OUTPUT = "./runs/scaling"
#: The key of the point that trains on the whole version (shared by both tables).
WHOLE = ALL


@dataclass(frozen=True)
class PlannedPoint:
    """One point of the curves: which rows it pre-trains on, before anything runs."""

    key: str  # "images-1000", "identities-12" or "all"
    axes: tuple[str, ...]  # the tables/figures it belongs to
    subset: str | None  # corpus subset name; None = the whole version
    images: int  # training images (split == train) the pre-training sees
    people: int  # distinct people among them
    val_images: int  # validation rows (the version's whole val split, at every point)
    chosen: pa.Table | None = field(default=None, repr=False, compare=False)  # subset rows


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


@dataclass
class ScalingResult:
    """What ``run_scaling`` left behind, and where."""

    run_name: str
    run_uri: str
    report_uri: str
    tracking_uri: str
    mlflow_run_id: str  # the experiment's parent run
    corpus_version: int
    points: list[PointResult]
    report_files: list[str] = field(default_factory=list)

    def axis(self, axis: str) -> list[PointResult]:
        """The points of one table/figure, smallest first."""
        return sorted((p for p in self.points if axis in p.axes), key=lambda p: p.x(axis))


# ---------------------------------------------------------------------------------------------
# Planning: sizes -> subsets, checked before anything trains


def labelled_rows(corpus: str, version: int) -> pa.Table:
    """The version's rows that pre-training reads (labelled ones), without pixels."""
    table = read_metadata_table(corpus, version, columns=[*METADATA_COLUMNS, "label_source"])
    return table.filter(pc.not_equal(table["label_source"], "none"))


def largest_balanced(train: pa.Table, axis: str) -> int:
    """The biggest gender-balanced size the training rows allow (twice the rarer gender)."""
    gender = np.asarray(train.column("gender").to_pylist(), dtype=object)
    if axis == "images":
        counts = [int(np.sum(gender == g)) for g in BALANCED_GENDERS]
    else:
        identity = np.asarray(train.column("identity").to_pylist(), dtype=object)
        counts = [len(set(identity[gender == g])) for g in BALANCED_GENDERS]
    return 2 * min(counts)


def subset_name(axis: str, size: int, config: ScalingStudyConfig, version: int) -> str:
    budget = (
        f"-images-{config.identity_images}"
        if axis == "identities" and config.identity_images
        else ""
    )
    return f"scaling-{axis}-{size}{budget}-{config.balance}-seed{config.subset_seed}-v{version}"


def plan_points(config: ScalingStudyConfig, version: int) -> list[PlannedPoint]:
    """Every point the experiment trains, with its rows chosen; raises ``CorpusError`` naming the
    size when the corpus cannot give it (before any training or subset is written)."""
    rows = labelled_rows(config.corpus, version)
    train = rows.filter(pc.equal(rows["split"], "train"))
    val_images = rows.num_rows - train.num_rows
    where = f"corpus {config.corpus} version {version}"
    if train.num_rows == 0 or val_images == 0:
        raise CorpusError(
            f"{where}: expected labelled rows in both splits, got {train.num_rows} train and "
            f"{val_images} val"
        )
    all_people = len(set(train.column("identity").to_pylist()))
    points: dict[str, PlannedPoint] = {}
    for axis, sizes in (("images", config.image_sizes()), ("identities", config.identity_sizes())):
        for size in sizes:
            if size is None:
                old = points.get(WHOLE)
                axes = (*old.axes, axis) if old else (axis,)
                points[WHOLE] = PlannedPoint(
                    WHOLE, axes, None, train.num_rows, all_people, val_images
                )
                continue
            limit = largest_balanced(train, axis)
            if size > limit:
                raise CorpusError(
                    f"scaling: --{axis} {size} is more than {where} can give: at most {limit} "
                    f"{axis} balanced by gender among its {train.num_rows} labelled training "
                    f"images of {all_people} people (use '{ALL}' for the whole corpus; sizes are "
                    "not clamped)"
                )
            sizes = {axis: size}
            if axis == "identities" and config.identity_images:
                sizes["images"] = config.identity_images  # N people share a fixed budget
            spec = SubsetConfig(
                corpus=config.corpus,
                version=version,
                balance=config.balance,
                seed=config.subset_seed,
                **sizes,
            )
            try:
                picked = train.take(pa.array(choose_rows(train, spec), type=pa.int64()))
            except CorpusError as error:
                raise CorpusError(f"scaling: --{axis} {size} on {where}: {error}") from error
            people = len(set(picked.column("identity").to_pylist()))
            points[f"{axis}-{size}"] = PlannedPoint(
                key=f"{axis}-{size}",
                axes=(axis,),
                subset=subset_name(axis, size, config, version),
                images=picked.num_rows,
                people=people,
                val_images=val_images,
                chosen=picked,
            )
    val = rows.filter(pc.equal(rows["split"], "val"))
    return [
        replace(p, chosen=pa.concat_tables([p.chosen, val])) if p.chosen is not None else p
        for p in points.values()
    ]


def write_subsets(config: ScalingStudyConfig, version: int, points: list[PlannedPoint]) -> None:
    """Save each point's rows (its training rows + the whole val split) as a named corpus subset."""
    root = Location.of(config.corpus)
    manifest = load_manifest(config.corpus)
    for point in points:
        if point.subset is None or point.chosen is None:
            continue
        relative = f"subsets/{point.subset}.parquet"
        target = root.join(relative)
        target.fs.create_dir(root.join("subsets").path, recursive=True)
        rows = point.chosen.select(["content_hash", "identity", "split"])
        pq.write_table(rows, target.path, filesystem=target.fs)
        axis = point.axes[0]
        manifest.subsets[point.subset] = SubsetEntry(
            name=point.subset,
            version=version,
            file=relative,
            images=rows.num_rows,
            identities=len(set(rows.column("identity").to_pylist())),
            spec={
                axis: int(point.key.split("-")[1]),
                **(
                    {"images": config.identity_images}
                    if axis == "identities" and config.identity_images
                    else {}
                ),
                "balance": config.balance,
                "seed": config.subset_seed,
                "split": "balanced train rows + the version's whole val split",
                "train_images": point.images,
                "train_identities": point.people,
                "val_images": point.val_images,
            },
        )
    save_manifest(config.corpus, manifest)


# ---------------------------------------------------------------------------------------------
# Running: one shared protocol, one point at a time (or `concurrent`)


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
    try:
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
    except BaseException:
        end_run(child, "FAILED")
        raise
    end_run(child, "FINISHED")
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


def log_curves(parent: RunHandle, points: list[PointResult]) -> None:
    """The curves as parent-run metrics stepped by size, so MLflow's charts draw Figures 3 and 4."""
    for axis, label in (("images", "images"), ("identities", "people")):
        for point in (p for p in points if axis in p.axes):
            for metric in ("f1", "pr_auc", "roc_auc"):
                log_metrics(
                    parent,
                    {f"{label}_{metric}_mean_paper8": point.mean(metric)},
                    step=point.x(axis),
                )


def output_uri(config: ScalingStudyConfig) -> str:
    """``--output``, or the default run storage (see ``pipeline.run_storage``)."""
    return output_location(config.output, "scaling", "--output", DEFAULT_OUTPUT)


def check_scaling(config: ScalingStudyConfig) -> tuple[int, list[PlannedPoint]]:
    """Everything the experiment can be refused for before Ray starts (the CLI calls it first):
    the corpus version and whether it can give every size, the output, the MLflow store; the
    version and the planned points."""
    if not config.corpus:
        raise ValueError("ScalingStudyConfig.corpus: expected a corpus URI (--corpus), got none")
    if not config.disfa.root:
        raise ValueError(
            "ScalingStudyConfig.disfa.root: expected the DISFA folder (--disfa), got none"
        )
    check_kept(config.corpus, "--corpus")  # the subsets are written into the corpus
    output_uri(config)
    resolve_tracking_uri(config.mlflow_uri)
    manifest = load_manifest(config.corpus)
    version = manifest.latest if config.corpus_version is None else config.corpus_version
    manifest.entries_up_to(version)  # raises for a version that does not exist
    return version, plan_points(config, version)


def run_scaling(config: ScalingStudyConfig) -> ScalingResult:
    """Plan, check, write the subsets, run every point, write Tables IV/V and Figures 3/4.

    Starts a local Ray if none is connected. Raises ``CorpusError`` before any training when a
    size is more than the corpus can give.
    """
    version, points = check_scaling(config)
    default_output = not config.output
    config = replace(config, output=output_uri(config))
    name = config.run_name or "scaling-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = Location.of(config.output).join(name)
    if root.join("report").join("scaling.json").exists():
        raise ValueError(
            f"scaling experiment {name!r} already has a report at {root.uri}: choose another "
            "--run-name"
        )
    tracking_uri = resolve_tracking_uri(config.mlflow_uri)
    pretrain = shared_pretrain(config, version, root, tracking_uri)
    finetune = shared_finetune(config, root, tracking_uri)
    ensure_ray()
    check_defaults_reachable(
        {
            "--output": config.output if default_output else None,
            "--mlflow-uri": store_path(tracking_uri)
            if uses_default_store(config.mlflow_uri)
            else None,
        }
    )
    frames = prepare_disfa(config.disfa)  # once, before the points share its cache
    write_subsets(config, version, points)

    parent = create_run(
        tracking_uri,
        config.experiment,
        name,
        tags={"facs.stage": "scaling", "facs.run_name": name, "git_commit": git_commit()},
    )
    log_params(
        parent,
        {
            "corpus": config.corpus,
            "corpus_version": version,
            "images": config.images,
            "identities": config.identities,
            "balance": config.balance,
            "subset_seed": config.subset_seed,
            "concurrent": config.concurrent,
            "points": [p.key for p in points],
            "disfa_cache": frames.uri,
            "pretrain": asdict(pretrain),
            "finetune": {k: v for k, v in asdict(finetune).items() if k != "disfa"},
            "disfa": asdict(config.disfa),
        },
    )
    print(
        f"[facs] scaling {name}: {len(points)} points "
        + ", ".join(f"{p.key} ({p.images} images, {p.people} people)" for p in points)
        + f"; MLflow {tracking_uri}",
        flush=True,
    )
    try:

        def job(point: PlannedPoint) -> PointResult:
            return run_point(
                point, pretrain, finetune, parent, config.experiment, config.point_eval
            )

        if config.concurrent > 1:
            with ThreadPoolExecutor(config.concurrent, thread_name_prefix="facs-scaling") as pool:
                results = list(pool.map(job, points))
        else:
            results = [job(point) for point in points]
        result = ScalingResult(
            run_name=name,
            run_uri=root.uri,
            report_uri=root.join("report").uri,
            tracking_uri=tracking_uri,
            mlflow_run_id=parent.run_id,
            corpus_version=version,
            points=results,
        )
        log_curves(parent, results)
        result.report_files = report(config, result, parent)
    except BaseException:
        end_run(parent, "FAILED")
        raise
    end_run(parent, "FINISHED")
    return result


def experiment_facts(config: ScalingStudyConfig, result: ScalingResult) -> dict[str, Any]:
    """What the report says about the protocol every point shared."""
    pre, fine = config.pretrain, config.finetune
    return {
        "corpus": config.corpus,
        "corpus_version": result.corpus_version,
        "balance": config.balance,
        "subset_seed": config.subset_seed,
        "point_eval": config.point_eval,
        "mlflow_run_id": result.mlflow_run_id,
        "tracking_uri": result.tracking_uri,
        "pretrain": {
            "model_width": pre.model.width,
            "max_epochs": pre.max_epochs,
            "patience": pre.patience,
            "lr": pre.lr,
            "batch_size": pre.worker_batch_size,
            "workers": pre.workers,
            "batches_per_epoch": pre.batches_per_epoch,
        },
        "finetune": {
            "folds": fine.folds,
            "only_folds": fine.only_folds,
            "max_epochs": fine.max_epochs,
            "patience": fine.patience,
            "lr": fine.lr,
            "batch_size": fine.batch_size,
            "freeze_blocks": fine.freeze_blocks,
            "class_weighting": fine.class_weighting,
            "threshold": fine.threshold,
        },
    }


def report(config: ScalingStudyConfig, result: ScalingResult, parent: RunHandle) -> list[str]:
    """Write the tables, figures and ``scaling.json`` under ``<run>/report`` and on the parent run."""
    target = Location.of(result.report_uri)
    with tempfile.TemporaryDirectory(prefix="facs-scaling-") as local:
        written = write_scaling_report(local, result, experiment_facts(config, result))
        uris = []
        for path in written:
            destination = target.join(Path(path).name)
            destination.write_bytes(Path(path).read_bytes())
            uris.append(destination.uri)
        parent.client().log_artifacts(parent.run_id, local, artifact_path="report")
    print(f"[facs] scaling {result.run_name} done; report {result.report_uri}", flush=True)
    return uris
