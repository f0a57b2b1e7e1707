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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.corpus.manifest import load_manifest
from pipeline.disfa import prepare_disfa
from pipeline.ray_runtime import ensure_ray
from pipeline.run_storage import check_kept, output_location
from pipeline.storage import Location
from training import tracking
from tune.scaling_config import ScalingStudyConfig
from tune.scaling_plan import PlannedPoint, plan_points, write_subsets
from tune.scaling_point import PointResult, run_point, shared_finetune, shared_pretrain
from tune.scaling_report import write_scaling_report

log = logging.getLogger(__name__)

AXES: tuple[str, ...] = ("images", "identities")
#: Where experiments go without --output outside a Ray job and without FACS_STORAGE_ROOT.
DEFAULT_OUTPUT = "./runs/scaling"


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


def log_curves(parent: tracking.RunHandle, points: list[PointResult]) -> None:
    """The curves as parent-run metrics stepped by size, so MLflow's charts draw Figures 3 and 4."""
    for axis, label in (("images", "images"), ("identities", "people")):
        for point in (p for p in points if axis in p.axes):
            for metric in ("f1", "pr_auc", "roc_auc"):
                tracking.log_metrics(
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
    tracking.resolve_tracking_uri(config.mlflow_uri)
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
    tracking_uri = tracking.resolve_tracking_uri(config.mlflow_uri)
    pretrain = shared_pretrain(config, version, root, tracking_uri)
    finetune = shared_finetune(config, root, tracking_uri)
    ensure_ray()
    tracking.check_default_locations(
        "--output", config.output if default_output else None, config.mlflow_uri, tracking_uri
    )
    frames = prepare_disfa(config.disfa)  # once, before the points share its cache
    write_subsets(config, version, points)

    parent = tracking.create_run(
        tracking_uri,
        config.experiment,
        name,
        tags={
            "facs.stage": "scaling",
            "facs.run_name": name,
            "git_commit": tracking.git_commit(),
        },
    )
    tracking.log_params(
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
    with tracking.closing_runs(parent):

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


def report(
    config: ScalingStudyConfig, result: ScalingResult, parent: tracking.RunHandle
) -> list[str]:
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
