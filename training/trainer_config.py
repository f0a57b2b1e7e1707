"""Ray Train's trainers, scaling and run configs, built one way for every trainer facs starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from pipeline.run_options import RayWorkers
from pipeline.status_write import store_budget
from pipeline.storage import Location, is_s3
from training.data import ingest_config
from training.job_config import TrainingJobConfig


def scaling_config(resources: RayWorkers) -> ray.train.ScalingConfig:
    """``workers`` data-parallel workers, each holding its CPUs (and GPUs, on a GPU run)."""
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=resources.workers, use_gpu=resources.use_gpu, resources_per_worker=per_worker
    )


def run_config(
    root: Location,
    name: str,
    max_failures: int,
    checkpoints: ray.train.CheckpointConfig | None = None,
    callbacks: list[Any] | None = None,
) -> ray.train.RunConfig:
    """A run named ``name`` under ``root`` (local or s3://) that recovers ``max_failures`` times."""
    storage: dict[str, Any] = {"storage_path": root.path}
    if is_s3(root.uri):
        storage["storage_filesystem"] = root.fs
    return ray.train.RunConfig(
        name=name,
        **storage,
        callbacks=callbacks,
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=checkpoints,
    )


def torch_trainer(
    worker: Callable[[dict[str, Any]], None],
    setup: Any,
    resources: TrainingJobConfig,
    where: tuple[Location, str],
    datasets: dict[str, ray.data.Dataset],
    *,
    sharded: str | list[str] = "all",
    checkpoints: ray.train.CheckpointConfig | None = None,
    callbacks: list[Any] | None = None,
) -> TorchTrainer:
    """A ``TorchTrainer`` running ``worker`` with ``{"setup": setup}`` on ``resources``' workers,
    as run ``where = (root, name)``; of ``datasets`` only ``sharded`` are split over workers."""
    root, name = where
    return TorchTrainer(
        worker,
        train_loop_config={"setup": setup},
        scaling_config=scaling_config(resources),
        run_config=run_config(root, name, resources.max_failures, checkpoints, callbacks),
        datasets=datasets,
        dataset_config=ingest_config(sharded, store_bytes=store_budget(resources.workers)),
    )
