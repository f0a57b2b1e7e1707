"""MLflow for training runs: tracking URI and experiment, params, per-epoch metrics, model registry.

Everything goes through an explicit tracking URI (never MLflow's process-wide default), because
Ray Train's workers run in other processes, often with another working directory.

The default store is ``sqlite:///<cwd>/mlflow.db`` (MLflow 3's own default, made absolute), with
artifacts in ``<cwd>/mlartifacts``: SQLite backs the model registry, which the ``./mlruns`` file
store does not do well. Any ``http(s)://`` URI of an ``mlflow server`` works the same way; the
server then decides where artifacts go.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from torch import nn

from pipeline.environment import restored_environment
from pipeline.vocabulary import FACE_SIZE

DEFAULT_DATABASE = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
#: MLflow accepts at most this many params (or tags) per batch call, each up to 6000 characters.
PARAMS_PER_BATCH, MAX_PARAM_LENGTH = 100, 6000
METRICS_PER_BATCH = 1000


def resolve_tracking_uri(uri: str | None = None, cwd: Path | None = None) -> str:
    """An absolute tracking URI: the default SQLite store, or ``uri`` with relative paths resolved.

    ``sqlite:///relative.db`` and bare paths are relative to the caller's working directory; they
    are made absolute here so that Ray workers elsewhere write to the same store.
    """
    cwd = cwd or Path.cwd()
    if not uri:
        return f"sqlite:///{(cwd / DEFAULT_DATABASE).resolve()}"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and not path.startswith("/") and path != ":memory:":
            return f"sqlite:///{(cwd / path).resolve()}"
        return uri
    if "://" not in uri:  # a file store given as a bare path
        return (cwd / uri).resolve().as_uri()
    return uri


def default_artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite database, else the store's choice."""
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri[len("sqlite:///") :])
        return (database.parent / DEFAULT_ARTIFACTS).as_uri()
    return None


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created (with a default artifact location) if missing."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri))


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"width": 1.0}}`` -> ``{"model.width": 1.0}`` (MLflow params are flat)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def param_text(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return text[:MAX_PARAM_LENGTH]


def git_commit(start: Path | None = None) -> str | None:
    """The checked-out commit of the repository holding ``start``, read from ``.git`` directly.

    ``FACS_GIT_COMMIT`` wins (for deployments without a ``.git``); ``None`` when unknown.
    """
    if os.environ.get("FACS_GIT_COMMIT"):
        return os.environ["FACS_GIT_COMMIT"]
    start = (start or Path(__file__)).resolve()
    for folder in [start, *start.parents]:
        git = folder / ".git"
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            text = git.read_text().strip()
            if text.startswith("gitdir:"):
                git = (folder / text[len("gitdir:") :].strip()).resolve()
        if not git.is_dir():
            continue
        head = (git / "HEAD").read_text().strip() if (git / "HEAD").is_file() else ""
        if not head.startswith("ref:"):
            return head or None
        ref = head[len("ref:") :].strip()
        common = git / "commondir"
        roots = [git] + ([(git / common.read_text().strip()).resolve()] if common.is_file() else [])
        for root in roots:
            if (root / ref).is_file():
                return (root / ref).read_text().strip()
            packed = root / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == ref:
                        return parts[0]
        return None
    return None


@dataclass(frozen=True)
class RunHandle:
    """One MLflow run, addressable from any process (picklable: just strings)."""

    tracking_uri: str
    experiment_id: str
    run_id: str

    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)


def create_run(
    tracking_uri: str, experiment: str, run_name: str, tags: Mapping[str, Any] | None = None
) -> RunHandle:
    experiment_id = ensure_experiment(tracking_uri, experiment)
    client = MlflowClient(tracking_uri)
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={k: param_text(v) for k, v in (tags or {}).items() if v is not None},
    )
    return RunHandle(tracking_uri, experiment_id, run.info.run_id)


def log_params(run: RunHandle, params: Mapping[str, Any]) -> None:
    """Log (flattened) params in batches; a param already logged with the same value is fine."""
    items = [Param(key, param_text(value)) for key, value in flatten(params).items()]
    client = run.client()
    for start in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run.run_id, params=items[start : start + PARAMS_PER_BATCH])


def set_tags(run: RunHandle, tags: Mapping[str, Any]) -> None:
    items = [RunTag(key, param_text(value)) for key, value in tags.items() if value is not None]
    client = run.client()
    for start in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run.run_id, tags=items[start : start + PARAMS_PER_BATCH])


def log_metrics(run: RunHandle, metrics: Mapping[str, float], step: int) -> None:
    """Log numeric metrics at ``step``; NaN and infinite values (an AUC of a one-class AU) are left out."""
    timestamp = mlflow.utils.time.get_current_time_millis()
    items = [
        Metric(key, float(value), timestamp, step)
        for key, value in metrics.items()
        if isinstance(value, int | float) and math.isfinite(value)
    ]
    client = run.client()
    for start in range(0, len(items), METRICS_PER_BATCH):
        client.log_batch(run.run_id, metrics=items[start : start + METRICS_PER_BATCH])


def end_run(run: RunHandle, status: str = "FINISHED") -> None:
    run.client().set_terminated(run.run_id, status=status)


def run_status(run: RunHandle) -> str:
    return run.client().get_run(run.run_id).info.status


def reopen_run(run: RunHandle) -> None:
    """Mark a finished or failed run as running again (``--resume``)."""
    run.client().update_run(run.run_id, status="RUNNING")


_PROCESS_URIS_LOCK = threading.RLock()


@contextmanager
def process_uris(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at ``uri``, then restore them exactly.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` (and the registry's twin),
    and setting the old value back would pin a default that was only implied; so the module
    state and the environment are saved and put back as they were.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    # Process-wide state: threads that log models at once (concurrent folds or scaling points)
    # take turns, or one would restore the URIs while another is still logging.
    with _PROCESS_URIS_LOCK, restored_environment(*names):
        saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved[0])
            registry_utils._registry_uri = saved[1]


@contextmanager
def active_run(run: RunHandle) -> Iterator[None]:
    """The fluent API (``mlflow.pytorch.log_model``, ``mlflow.register_model``) aimed at ``run``."""
    with process_uris(run.tracking_uri), mlflow.start_run(run_id=run.run_id):
        yield


def model_input_example(pixel_mean: float, batch: int = 2, in_channels: int = 1) -> np.ndarray:
    """A mean-normalised grey batch, ``(batch, C, 64, 64)`` float32: the model's real input."""
    return np.full((batch, in_channels, FACE_SIZE, FACE_SIZE), 0.5 - pixel_mean, dtype=np.float32)


@dataclass(frozen=True)
class LoggedModel:
    model_uri: str
    registered_name: str | None
    registered_version: str | None


def log_model(
    run: RunHandle,
    model: nn.Module,
    *,
    pixel_mean: float,
    name: str = "model",
    register_as: str | None = None,
    version_tags: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> LoggedModel:
    """Log ``model`` (eval mode, CPU) with a signature and input example; register it if asked.

    The input is the mean-normalised face (``pixels / 255 - pixel_mean``), so ``pixel_mean`` goes
    into the model's metadata and onto the registered version's tags: inference needs it.
    """
    from mlflow.models import infer_signature

    model = model.cpu().eval()
    in_channels = getattr(getattr(model, "config", None), "in_channels", 1)
    example = model_input_example(pixel_mean, in_channels=in_channels)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, output)
    info_metadata = {
        "pixel_mean": pixel_mean,
        "input": "float32 (N, C, 64, 64) = uint8 face / 255 - pixel_mean",
        "output": "logits (N, AUs); sigmoid for presence probabilities",
        **(metadata or {}),
    }
    tags = {"pixel_mean": pixel_mean, "run_id": run.run_id, **(version_tags or {})}
    with active_run(run):
        info = mlflow.pytorch.log_model(
            model,
            name=name,
            signature=signature,
            input_example=example,
            metadata=info_metadata,
            # Known requirements: MLflow's inference would import the model in a subprocess.
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
        )
        if not register_as:
            return LoggedModel(info.model_uri, None, None)
        version = mlflow.register_model(
            info.model_uri,
            register_as,
            tags={k: param_text(v) for k, v in tags.items() if v is not None},
        )
    return LoggedModel(info.model_uri, register_as, str(version.version))
