"""The options stages declare alike, with their help written once: where a stage's runs go,
which MLflow store tracks them (both saying what an unset one falls back to), and the Ray
workers a stage runs its model on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.options import Checks, at_least_each, option

#: What an unset ``--mlflow-uri`` means (``training.tracking.resolve_tracking_uri``).
DEFAULT_TRACKING = "$MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db"


def mlflow_uri_field(used_for: str = "", fallback: str = DEFAULT_TRACKING) -> Any:
    """A stage's ``mlflow_uri`` option: the tracking URI ``used_for`` says what of; none =
    ``fallback``."""
    return option(None, f"MLflow tracking URI{used_for}; none = {fallback}")


def stage_output_field(what: str, stage: str) -> Any:
    """A stage's output-root option (``what`` goes there); none = the stage's default, as
    ``pipeline.run_storage.default_output`` picks it for ``stage``."""
    return option(
        None,
        f"{what}; none = $FACS_STORAGE_ROOT/{stage}, else ./runs/{stage} (refused in a Ray job)",
    )


@dataclass
class RayWorkers:
    """How many Ray workers run a stage's model and what each reserves: a training job's DDP
    ranks, or ``facs predict``'s model actors. A stage's config extends it, so the flags and YAML
    keys stay flat (``--workers``, ``--gpus-per-worker``, ``--cpus-per-worker``)."""

    workers: int = option(
        1, "Ray workers that run the model: DDP ranks in training, actors in predict"
    )
    gpus_per_worker: float = option(
        0.0, "GPUs per worker; 0 = CPU (training: gloo on CPU, NCCL on GPU)"
    )
    cpus_per_worker: float = option(
        1.0, "CPUs reserved per worker (leave some free for Ray Data's read tasks)"
    )

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    def worker_checks(self) -> Checks:
        """At least one worker, no negative GPUs, some CPU for each."""
        return [
            *at_least_each(self, workers=1, gpus_per_worker=0),
            (self.cpus_per_worker > 0, f"cpus_per_worker > 0, got {self.cpus_per_worker}"),
        ]
