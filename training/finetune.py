"""`facs finetune`: DISFA folds -> Ray Train trainers -> test predictions -> Table III.

``run_cross_validation(config)`` is the entry point. It ingests DISFA (cached), makes the
subject-independent folds, resolves the starting weights, and for each arm (``pretrained``,
``scratch`` or both with ``compare_init``) runs ``TorchTrainer``s over ``finetune_worker``, each
stepping ``folds_per_trainer`` folds (one, or all of the arm's in lock-step): the 17-AU head is replaced by a 12-AU head, training stops after ``patience``
epochs without a better validation monitor, and the best weights then predict the fold's test
subjects inside the trainer (rank 0, on its GPU when it has one). Only the training split is
sharded across workers; validation and test frames are read whole by rank 0, so none is dropped
to even out shards. Each worker records the subjects its batches held, per split, and the driver
refuses a fold whose test subjects reached training or validation.

MLflow: a parent run per cross-validation (per arm), a nested run per fold with its per-epoch
metrics, the report (Table III, metric CSVs, PR/ROC plots) as artifacts of the parent, and the
final model registered as ``facs-vgg13-disfa``. With ``compare_init`` an umbrella run holds the
two arms' parent runs and the side-by-side table.

The job is split by room: ``finetune_data`` (DISFA batches, a fold's datasets, class weights),
``finetune_worker`` (one fold's training on the workers), ``finetune_results`` (a fold read back
from its final checkpoint, the leakage check, thresholds tuned on validation), ``finetune_report``
(Table III, MLflow, the registered model); this module drives them.

Layout under ``<storage_path>/<run_name>/``: ``<arm>-fold<k>/`` (Ray Train's checkpoints; the last
one, ``final-...``, holds the best weights, the test predictions, the kept weights' validation
predictions (per-AU thresholds are tuned on them: ``tuned_threshold_metrics``) and the subjects
each split fed the model) and ``report/``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from datetime import datetime, timezone
from typing import Any

import ray
import ray.train
import ray.train.torch

from pipeline.disfa import DisfaFrames, Fold, make_folds, prepare_disfa
from pipeline.ray_runtime import ensure_ray
from pipeline.run_storage import output_location
from pipeline.storage import Location
from training.evaluate import (
    evaluate_folds,
)
from training.fault_injection import FaultPlan
from training.finetune_config import FinetuneConfig
from training.finetune_data import FoldData, fold_data
from training.finetune_report import ARM_LABELS, cv_metrics, log_disfa_input, report_and_register
from training.finetune_results import (
    ArmResult,
    CVResult,
    FoldResult,
    check_no_leakage,
    fold_result_metrics,
    read_fold,
    tuned_threshold_metrics,
)
from training.finetune_worker import SPLITS, FoldSetup, dataset_name, finetune_worker
from training.init_weights import InitWeights, resolve_init
from training.labeler_eval import evaluate_labeler
from training.model import ModelConfig
from training.tracking import (
    RunHandle,
    check_default_locations,
    closing_runs,
    create_run,
    git_commit,
    log_metrics,
    log_params,
    resolve_tracking_uri,
    set_tags,
)
from training.trainer_config import torch_trainer

#: Where runs go without --storage-path outside a Ray job and without FACS_STORAGE_ROOT.
DEFAULT_STORAGE = "./runs/finetune"
#: Test-only fault injection (``training.fault_injection``): FACS_FINETUNE_FAIL_AT_EPOCH and
#: FACS_FINETUNE_FAIL_RANK; a trainer's epoch is one epoch of each of its folds.
FAULT_JOB = "FINETUNE"


def fold_run(
    config: FinetuneConfig, data: FoldData, arm: str, init: InitWeights, parent: RunHandle
) -> RunHandle:
    """The nested MLflow run of one fold of one arm, with its params and its view of DISFA."""
    fold = data.fold
    run = create_run(
        parent.tracking_uri,
        config.experiment,
        f"{arm}-fold{fold.index}",
        tags={
            "mlflow.parentRunId": parent.run_id,
            "facs.stage": "finetune-fold",
            "facs.init": arm,
            "facs.fold": fold.index,
        },
    )
    log_params(
        run,
        {
            "fold": fold.index,
            "init": arm,
            "init_source": init.source,
            "test_subjects": list(fold.test_subjects),
            "train_subjects": list(fold.train_subjects),
            "val_subjects": list(fold.val_subjects),
            "pixel_mean": data.pixel_mean,
            "pos_weight": data.pos_weight or "none",
            "lr": config.lr,
            "batch_size": config.batch_size,
            "freeze_blocks": config.freeze_blocks,
            "monitor": config.monitor,
            "patience": config.patience,
        },
    )
    log_disfa_input(run, data.frames, data.fold)
    return run


def trainer_name(arm: str, folds: Sequence[Fold]) -> str:
    """``pretrained-fold2`` for one fold, ``pretrained-folds1-2-3`` for several."""
    if len(folds) == 1:
        return f"{arm}-fold{folds[0].index}"
    return f"{arm}-folds" + "-".join(str(fold.index) for fold in folds)


def train_folds(
    config: FinetuneConfig,
    datas: Sequence[FoldData],
    arm: str,
    start: tuple[InitWeights, ModelConfig],
    subjects: Sequence[str],
    root: Location,
    parent: RunHandle,
) -> list[FoldResult]:
    """Fine-tune some folds of one arm with one ``TorchTrainer`` (in lock-step when several);
    log each fold as a nested MLflow run. ``start``: the arm's weights and scratch architecture."""
    init, scratch_model = start
    name = trainer_name(arm, [data.fold for data in datas])
    fault = FaultPlan.from_env(FAULT_JOB, config.workers).at(root.join(name))
    began = time.perf_counter()
    runs = [fold_run(config, data, arm, init, parent) for data in datas]
    setups = [
        FoldSetup(
            config=config,
            fold=data.fold,
            arm=arm,
            init=init,
            scratch_model=scratch_model,
            pixel_mean=data.pixel_mean,
            pos_weight=data.pos_weight,
            subjects=tuple(subjects),
            mlflow_run=run,
            fault=fault,
        )
        for data, run in zip(datas, runs, strict=True)
    ]
    datasets = {
        dataset_name(split, data.fold): data.datasets[split] for data in datas for split in SPLITS
    }
    trainer = torch_trainer(
        finetune_worker,
        setups,
        config,
        (root, name),
        datasets,
        # Only training is sharded; validation and test are read whole by rank 0.
        sharded=[dataset_name("train", data.fold) for data in datas],
        # The latest checkpoint resumes a failed worker group; the final one holds the results.
        checkpoints=ray.train.CheckpointConfig(num_to_keep=2),
    )
    results = []
    with closing_runs(*runs):
        fit = trainer.fit()
        for data, run in zip(datas, runs, strict=True):
            fold_result = read_fold(config, fit, arm, data, root, run, began)
            log_metrics(
                run,
                {
                    **fold_result_metrics(fold_result, config.threshold),
                    "best_epoch": fold_result.best_epoch,
                    "epochs": fold_result.epochs,
                },
                step=fold_result.epochs,
            )
            set_tags(run, {"checkpoint": fold_result.checkpoint})
            results.append(fold_result)
    return results


def _run_params(
    config: FinetuneConfig, frames: DisfaFrames, folds: list[Fold], arm: str, init: InitWeights
) -> dict:
    params: dict[str, Any] = {**asdict(config), "arm": arm, "init_source": init.source}
    params["disfa_cache"] = frames.uri
    params["disfa_frames"] = frames.manifest.accepted
    for fold in folds:
        params[f"fold{fold.index}.test"] = list(fold.test_subjects)
        params[f"fold{fold.index}.val"] = list(fold.val_subjects)
    return params


def arm_inits(
    config: FinetuneConfig, tracking_uri: str | None = None
) -> tuple[dict[str, InitWeights], ModelConfig]:
    """Each arm's starting weights, and the architecture of a network started from scratch.

    Identical conditions: with pre-trained weights in play, a scratch network gets their
    architecture (width, channels, normalisation), not ``config.model``.
    """
    inits = {
        arm: resolve_init(config.pretrained if arm == "pretrained" else "scratch", tracking_uri)
        for arm in config.inits()
    }
    pretrained = next((init for init in inits.values() if not init.is_scratch), None)
    return inits, pretrained.config() if pretrained is not None else config.model


def prepared_folds(config: FinetuneConfig) -> tuple[DisfaFrames, list[Fold]]:
    """The cached DISFA frames and the folds to run (``only_folds`` applied)."""
    frames = prepare_disfa(config.disfa)
    folds = make_folds(
        frames.subjects(),
        scheme=config.fold_scheme,
        seed=config.fold_seed,
        val_subjects_per_fold=config.val_subjects,
        folds=config.folds,
    )
    return frames, [f for f in folds if not config.only_folds or f.index in config.only_folds]


def storage_uri(config: FinetuneConfig) -> str:
    """``--storage-path``, or the default run storage (see ``pipeline.run_storage``)."""
    return output_location(config.storage_path, "finetune", "--storage-path", DEFAULT_STORAGE)


def check_cross_validation(config: FinetuneConfig) -> None:
    """Everything a cross-validation can be refused for before Ray starts (the CLI calls it
    first): the weights to start from, the DISFA root, the run storage and the MLflow store."""
    if "pretrained" in config.inits() and not config.pretrained:
        raise ValueError(
            "FinetuneConfig.pretrained: expected the pre-trained weights (--pretrained "
            "models:/facs-vgg13-pretrained/<version>, runs:/... or a checkpoint) for init "
            "'pretrained'; use --init scratch for the baseline alone"
        )
    if not config.disfa.root:
        raise ValueError("FinetuneConfig.disfa.root: expected the DISFA folder (--disfa), got none")
    storage_uri(config)
    resolve_tracking_uri(config.mlflow_uri)
    FaultPlan.from_env(FAULT_JOB, config.workers)


def run_cross_validation(config: FinetuneConfig, parent: RunHandle | None = None) -> CVResult:
    """Fine-tune and evaluate every fold of every arm; write the report; register the model.

    Starts a local Ray if none is connected. Each trainer steps ``folds_per_trainer`` folds of
    one arm (0: all of them); ``concurrent_folds`` trainers run at a time (Ray queues those that do not fit the cluster's resources). ``parent``: an
    MLflow run to nest this cross-validation's runs under (a sweep's final evaluation).
    """
    check_cross_validation(config)
    arms = config.inits()
    default_storage = not config.storage_path
    config = replace(config, storage_path=storage_uri(config))
    tracking_uri = resolve_tracking_uri(config.mlflow_uri)
    ensure_ray()
    check_default_locations(
        "--storage-path",
        config.storage_path if default_storage else None,
        config.mlflow_uri,
        tracking_uri,
    )
    frames, folds = prepared_folds(config)
    inits, scratch_model = arm_inits(config, tracking_uri)
    subjects = tuple(sorted(frames.manifest.accepted_per_subject))
    # Scored before any training: a wrong labeler folder fails in seconds, not after the folds.
    labeler = (
        evaluate_labeler(
            frames,
            folds,
            config.labeler_openface,
            camera=config.disfa.camera,
            threshold=config.threshold,
        )[0]
        if config.labeler_openface
        else None
    )

    name = config.run_name or "finetune-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = Location.of(config.storage_path).join(name)
    tags = {"facs.stage": "finetune", "facs.run_name": name, "git_commit": git_commit()}
    if parent is not None:
        tags["mlflow.parentRunId"] = parent.run_id
    compare_run = (
        create_run(tracking_uri, config.experiment, f"{name}-compare", {**tags, "facs.compare": 1})
        if config.compare_init
        else None
    )
    parents: dict[str, RunHandle] = {}
    for arm in arms:
        arm_tags = {**tags, "facs.init": arm}
        if compare_run is not None:
            arm_tags["mlflow.parentRunId"] = compare_run.run_id
        parents[arm] = create_run(tracking_uri, config.experiment, f"{name}-{arm}", arm_tags)
        log_params(parents[arm], _run_params(config, frames, folds, arm, inits[arm]))
    every = [run for run in (compare_run, *parents.values()) if run is not None]
    for run in every:
        log_disfa_input(run, frames)
    print(
        f"[facs] finetune {name}: {len(folds)} folds x {arms} on {frames.manifest.accepted} "
        f"DISFA frames ({frames.uri}); MLflow {tracking_uri}",
        flush=True,
    )
    with closing_runs(*every):
        data = {fold.index: fold_data(config, frames, fold) for fold in folds}
        per = config.folds_per_trainer or len(folds)
        jobs = [
            (arm, [data[fold.index] for fold in folds[i : i + per]])
            for i in range(0, len(folds), per)
            for arm in arms
        ]
        width = len(jobs) if config.concurrent_folds == 0 else config.concurrent_folds

        def job(item: tuple[str, list[FoldData]]) -> list[FoldResult]:
            arm, datas = item
            start = (inits[arm], scratch_model)
            return train_folds(config, datas, arm, start, subjects, root, parents[arm])

        if width > 1:
            with ThreadPoolExecutor(max_workers=width, thread_name_prefix="facs-fold") as pool:
                results = [r for group in pool.map(job, jobs) for r in group]
        else:
            results = [r for item in jobs for r in job(item)]
        for fold_result in results:
            check_no_leakage(fold_result)

        arm_results: dict[str, ArmResult] = {}
        for arm in arms:
            mine = sorted((r for r in results if r.arm == arm), key=lambda r: r.fold.index)
            metrics = evaluate_folds([r.predictions for r in mine], config.threshold)
            tuned = tuned_threshold_metrics(mine, config.threshold)
            arm_results[arm] = ArmResult(
                arm, ARM_LABELS[arm], inits[arm].source, parents[arm].run_id, mine, metrics, tuned
            )
            log_metrics(parents[arm], {**cv_metrics(metrics), **tuned}, step=0)
        if labeler is not None:
            for run in every:
                log_metrics(run, cv_metrics(labeler, "labeler"), step=0)
        return report_and_register(
            config, name, root, tracking_uri, frames, arm_results, parents, compare_run, labeler
        )
