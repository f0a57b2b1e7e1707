"""`facs pretrain`: corpus -> Ray Train DDP workers -> best checkpoint -> MLflow run and registry.

``run_pretraining(config)`` is the one entry point (the CLI and Ray jobs call it). It reads the
corpus version, computes the pixel mean of its train split, opens the MLflow run, runs a
``TorchTrainer`` over ``train_loop.train_worker`` and finally logs and registers the best model.

A run lives in ``<storage_path>/<run_name>/``: Ray Train's checkpoints (one per epoch; the latest
and the best by validation loss are kept) and ``facs_run.json``, which ties the folder to its
MLflow run and pixel mean so that ``--resume`` continues both.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import ray
import ray.train

from pipeline.ray_runtime import ensure_ray
from pipeline.run_storage import output_location
from pipeline.storage import Location
from training.checkpoints import SUMMARY_FILE, load_checkpoint, model_from_state
from training.data import cached_if_fits, corpus_splits, pixel_mean
from training.fault_injection import FaultPlan, fail_env
from training.flops import count_parameters, flops_per_sample
from training.model import build_model
from training.model_aliases import Evaluation
from training.model_logging import log_model
from training.pretrain_config import PretrainConfig
from training.pretrain_inputs import (
    RUN_INFO,
    CorpusFacts,
    check_labelled,
    check_same_corpus,
    choose_run,
    corpus_facts,
)
from training.tracking import (
    DatasetRef,
    RunHandle,
    check_default_locations,
    closing_runs,
    create_run,
    git_commit,
    log_dataset,
    log_params,
    reopen_run,
    resolve_tracking_uri,
)
from training.train_loop import WorkerSetup, train_worker
from training.trainer_config import torch_trainer

#: Test-only fault injection (``training.fault_injection``): FACS_PRETRAIN_FAIL_AT_EPOCH and
#: FACS_PRETRAIN_FAIL_RANK.
FAULT_JOB = "PRETRAIN"
FAIL_ENV = fail_env(FAULT_JOB)[0]
#: Where runs go without --storage-path outside a Ray job and without FACS_STORAGE_ROOT.
DEFAULT_STORAGE = "./runs/pretrain"

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """What a pre-training run left behind, and where."""

    run_name: str
    run_uri: str  # <storage_path>/<run_name>
    mlflow_run_id: str
    tracking_uri: str
    epochs: int  # epochs completed in total (resumed runs included)
    best_epoch: int
    best_val_loss: float
    best_checkpoint: str  # URI of the best checkpoint's folder
    stopped_early: bool
    pixel_mean: float
    corpus_version: int
    model_uri: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # the last epoch's, as reported


def storage_uri(config: PretrainConfig) -> str:
    """``--storage-path``, or the default run storage (see ``pipeline.run_storage``)."""
    return output_location(config.storage_path, "pretrain", "--storage-path", DEFAULT_STORAGE)


def storage_root(config: PretrainConfig) -> Location:
    return Location.of(storage_uri(config))


def check_pretraining(config: PretrainConfig) -> tuple[CorpusFacts, dict[str, dict[str, int]]]:
    """Everything a run can be refused for before Ray starts (the CLI calls it first): the corpus
    version or subset and its labelled rows, the run storage, the MLflow store, fault injection.
    Returns the corpus facts and its row counts per split."""
    facts = corpus_facts(config)
    FaultPlan.from_env(FAULT_JOB, config.workers)
    storage_uri(config)
    resolve_tracking_uri(config.mlflow_uri)
    return facts, check_labelled(facts)


def run_params(config: PretrainConfig, facts: CorpusFacts, mean: float) -> dict[str, Any]:
    model = build_model(config.model)
    return {
        **asdict(config),
        "corpus_uri": facts.uri,
        "corpus_version": facts.version,
        "corpus_manifest_hash": facts.manifest_hash,
        "pixel_mean": mean,
        "worker_batch_size": config.worker_batch_size,
        "global_batch": config.worker_batch_size * config.workers,
        "model_parameters": count_parameters(model),
        "model_train_flops_per_sample": flops_per_sample(model),
    }


def corpus_dataset(facts: CorpusFacts) -> DatasetRef:
    """The MLflow dataset a pre-training run reads: one per corpus version and subset."""
    name = f"corpus-v{facts.version}" + (f"-{facts.subset}" if facts.subset else "")
    return DatasetRef.of(name, facts.manifest_hash)


def start_tracking(
    config: PretrainConfig,
    name: str,
    facts: CorpusFacts,
    mean: float,
    counts: dict[str, dict[str, int]],
) -> RunHandle:
    tracking_uri = resolve_tracking_uri(config.mlflow_uri)
    tags = {
        "corpus.uri": facts.uri,
        "corpus.version": facts.version,
        "corpus.subset": facts.subset or "",
        "corpus.manifest_hash": facts.manifest_hash,
        "git_commit": git_commit(),
        "facs.stage": "pretrain",
        "facs.run_name": name,
    }
    run = create_run(tracking_uri, config.experiment, name, tags)
    log_params(run, run_params(config, facts, mean))
    log_dataset(
        run,
        name=corpus_dataset(facts).name,
        source=facts.uri,
        digest=facts.manifest_hash,
        profile={
            "version": facts.version,
            "subset": facts.subset or "",
            **{f"{split}_{k}": v for split, c in counts.items() for k, v in c.items()},
        },
    )
    return run


def run_pretraining(config: PretrainConfig) -> PretrainResult:
    """Train (or ``resume``) a pre-training run to its end; log and register the best model.

    Starts a local Ray if none is connected. Raises ``ray.train.TrainingFailedError`` when the
    workers fail more than ``max_failures`` times (the MLflow run is then marked FAILED).
    """
    facts, counts = check_pretraining(config)
    fault = FaultPlan.from_env(FAULT_JOB, config.workers)
    default_storage = not config.storage_path
    config = replace(config, storage_path=storage_uri(config))
    root = Location.of(config.storage_path)
    name, record = choose_run(config, root)
    run_dir = root.join(name)
    ensure_ray()
    tracking_uri = resolve_tracking_uri(config.mlflow_uri)
    check_default_locations(
        "--storage-path", root.uri if default_storage else None, config.mlflow_uri, tracking_uri
    )
    datasets = corpus_splits(facts.uri, facts.version, facts.subset, file_order_seed=config.seed)
    if config.cache_data:
        datasets = cached_if_fits(datasets, sum(c["labelled"] for c in counts.values()))

    if record is not None:
        check_same_corpus(record, facts, run_dir.join(RUN_INFO).uri)
        mean = float(record["pixel_mean"])
        tracking = record["mlflow"]
        mlflow_run = RunHandle(
            tracking["tracking_uri"], tracking["experiment_id"], tracking["run_id"]
        )
        reopen_run(mlflow_run)
        print(f"[facs] resuming run {name} (MLflow run {mlflow_run.run_id})", flush=True)
    else:
        mean = config.pixel_mean if config.pixel_mean is not None else pixel_mean(datasets["train"])
        mlflow_run = start_tracking(config, name, facts, mean, counts)
        record = {
            "run_name": name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pixel_mean": mean,
            "corpus": asdict(facts),
            "mlflow": asdict(mlflow_run),
            "config": asdict(config),
        }
        run_dir.join(RUN_INFO).write_text_atomic(json.dumps(record, indent=2))
        print(
            f"[facs] run {name}: corpus {facts.uri} v{facts.version} "
            f"(hash {facts.manifest_hash}), pixel mean {mean:.4f}, MLflow run {mlflow_run.run_id} "
            f"at {mlflow_run.tracking_uri}",
            flush=True,
        )

    setup = WorkerSetup(
        config=config,
        pixel_mean=mean,
        mlflow_run=mlflow_run,
        fault=fault.at(run_dir),
    )
    trainer = torch_trainer(
        train_worker,
        setup,
        config,
        (root, name),
        datasets,
        checkpoints=ray.train.CheckpointConfig(
            num_to_keep=config.keep_checkpoints,
            checkpoint_score_attribute="val_loss",
            checkpoint_score_order="min",
        ),
    )
    with closing_runs(mlflow_run):
        result = trainer.fit()
        return finish(config, result, mlflow_run, name, run_dir, root, facts, mean)


def checkpoint_uri(root: Location, checkpoint: ray.train.Checkpoint) -> str:
    return root.uri_of(checkpoint.path)


def finish(
    config: PretrainConfig,
    result: ray.train.Result,
    mlflow_run: RunHandle,
    name: str,
    run_dir: Location,
    root: Location,
    facts: CorpusFacts,
    mean: float,
) -> PretrainResult:
    best = result.get_best_checkpoint(metric="val_loss", mode="min") or result.checkpoint
    if best is None:
        raise RuntimeError(f"run {name} at {run_dir.uri} finished without any checkpoint")
    best_uri = checkpoint_uri(root, best)
    best_state = load_checkpoint(best_uri)
    latest = result.checkpoint or best
    latest_summary = json.loads(
        Location.of(checkpoint_uri(root, latest)).join(SUMMARY_FILE).read_text()
    )
    metrics = dict(result.metrics or latest_summary.get("metrics", {}))
    epochs = int(latest_summary["epoch"])
    waiting = int(latest_summary.get("epochs_without_improvement", 0))
    stopped_early = (
        bool(config.patience) and waiting >= config.patience and epochs < config.max_epochs
    )

    logged = log_model(
        mlflow_run,
        model_from_state(best_state),
        pixel_mean=mean,
        register_as=config.register_as or None,
        version_tags={
            "corpus.uri": facts.uri,
            "corpus.version": facts.version,
            "corpus.subset": facts.subset or "",
            "corpus.manifest_hash": facts.manifest_hash,
            "best_epoch": best_state.epoch,
            "val_loss": best_state.best_score,
            "checkpoint": best_uri,
        },
        metadata={"corpus_version": facts.version, "best_epoch": best_state.epoch},
        evaluation=Evaluation(
            key=f"{facts.uri} v{facts.version} subset {facts.subset or '-'}, val split",
            metric="val_loss",
            value=best_state.best_score,
            higher_is_better=False,
        ),
        # The model's own scores on the corpus's validation split, linked to the corpus input.
        scores={
            "final_best_val_loss": best_state.best_score,
            "final_best_val_f1_mean": best_state.metrics.get("val_f1_mean", math.nan),
            "final_best_epoch": best_state.epoch,
            "final_epochs": epochs,
        },
        scored_on=corpus_dataset(facts),
        scores_step=epochs,
    )
    best_val_loss = best_state.best_score
    print(
        f"[facs] run {name} done: {epochs} epochs, best val loss {best_val_loss:.4f} at epoch "
        f"{best_state.epoch}; best checkpoint {best_uri}"
        + (
            f"; registered {logged.registered_name} v{logged.registered_version}"
            if logged.registered_version
            else ""
        ),
        flush=True,
    )
    return PretrainResult(
        run_name=name,
        run_uri=run_dir.uri,
        mlflow_run_id=mlflow_run.run_id,
        tracking_uri=mlflow_run.tracking_uri,
        epochs=epochs,
        best_epoch=best_state.epoch,
        best_val_loss=best_val_loss if math.isfinite(best_val_loss) else math.nan,
        best_checkpoint=best_uri,
        stopped_early=stopped_early,
        pixel_mean=mean,
        corpus_version=facts.version,
        model_uri=logged.model_uri,
        registered_model=logged.registered_name,
        registered_version=logged.registered_version,
        metrics=metrics,
    )
