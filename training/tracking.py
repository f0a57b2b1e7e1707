"""MLflow for training runs: tracking URI and experiment, params, per-epoch metrics, model registry.

Everything goes through an explicit tracking URI (never MLflow's process-wide default), because
Ray Train's workers run in other processes, often with another working directory.

Every stage finds its store one way (:func:`resolve_tracking_uri`): ``--mlflow-uri``, else
``MLFLOW_TRACKING_URI`` (``facs cluster up`` sets it for its jobs, ``facs submit`` forwards it),
else the local default store ``sqlite:///<cwd>/mlflow.db`` (MLflow 3's own default, made absolute),
with artifacts in ``<cwd>/mlartifacts``: SQLite backs the model registry, which the ``./mlruns``
file store does not do well. Any ``http(s)://`` URI of an ``mlflow server`` works the same way; the
server then decides where artifacts go. The model registry is the tracking store unless
``MLFLOW_REGISTRY_URI`` names another (MLflow's own rule; :func:`resolve_registry_uri`). A local
store inside a Ray job's temporary working directory is refused: Ray deletes that folder.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.run_storage import (
    RunStorageError,
    check_defaults_reachable,
    check_kept,
    temporary_folder,
)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"
DEFAULT_DATABASE = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
#: MLflow accepts at most this many params (or tags) per batch call, each up to 6000 characters.
PARAMS_PER_BATCH, MAX_PARAM_LENGTH = 100, 6000
METRICS_PER_BATCH = 1000


def resolve_tracking_uri(
    uri: str | None = None, cwd: Path | None = None, *, default_dir: str | Path | None = None
) -> str:
    """The tracking store: ``uri`` (``--mlflow-uri``), else ``$MLFLOW_TRACKING_URI``, else the
    local default ``sqlite:///<default_dir or cwd>/mlflow.db`` (``default_dir`` is created).

    ``sqlite:///relative.db`` and bare paths are relative to ``cwd`` (the caller's working
    directory); they are made absolute here so that Ray workers elsewhere write to the same store.
    Raises :class:`RunStorageError` for a local store inside a Ray job's temporary working dir.
    """
    cwd = cwd or Path.cwd()
    if uri:
        return absolute_store_uri(uri, cwd, "--mlflow-uri")
    if os.environ.get(TRACKING_URI_ENV):
        return absolute_store_uri(os.environ[TRACKING_URI_ENV], cwd, TRACKING_URI_ENV)
    folder = (cwd / Path(default_dir).expanduser()).resolve() if default_dir else cwd.resolve()
    database = folder / DEFAULT_DATABASE
    temporary = temporary_folder(database)
    if temporary is not None:
        raise RunStorageError(
            f"no --mlflow-uri and no {TRACKING_URI_ENV}: the default MLflow store {database} "
            f"would be inside this Ray job's temporary working directory ({temporary}), which Ray "
            f"deletes after the job. Pass --mlflow-uri http://MLFLOW:5000, or set "
            f"{TRACKING_URI_ENV} for the cluster's jobs (`facs cluster up` does; `facs submit` "
            "forwards yours)"
        )
    if default_dir:
        folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{database}"


def absolute_store_uri(uri: str, cwd: Path | None = None, source: str = "--mlflow-uri") -> str:
    """``uri`` with a relative SQLite or file-store path made absolute (and refused when it lies
    in a Ray job's temporary working directory); other URIs unchanged."""
    cwd = cwd or Path.cwd()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:":
            database = (cwd / path).resolve()
            check_kept(str(database), source, given=uri)
            return f"sqlite:///{database}" if not path.startswith("/") else uri
        return uri
    if "://" not in uri:  # a file store given as a bare path
        return Path(check_kept(str((cwd / uri).resolve()), source, given=uri)).as_uri()
    if uri.startswith("file://"):
        check_kept(uri[len("file://") :], source, given=uri)
    return uri


def uses_default_store(uri: str | None = None) -> bool:
    """Whether :func:`resolve_tracking_uri` falls back to the local default store for ``uri``."""
    return not uri and not os.environ.get(TRACKING_URI_ENV)


def store_path(tracking_uri: str) -> str | None:
    """The local file behind a SQLite or file-store URI; None for a server."""
    if tracking_uri.startswith("sqlite:///"):
        return tracking_uri[len("sqlite:///") :]
    if tracking_uri.startswith("file://"):
        return tracking_uri[len("file://") :]
    return None


def check_default_locations(
    flag: str, default_output: str | None, mlflow_uri: str | None, tracking_uri: str
) -> None:
    """After Ray has started: a job's default output folder (``default_output``, ``None`` when
    ``flag`` was given) and the default MLflow store must be reachable by every node
    (``pipeline.run_storage.check_defaults_reachable``)."""
    check_defaults_reachable(
        {
            flag: default_output,
            "--mlflow-uri": store_path(tracking_uri) if uses_default_store(mlflow_uri) else None,
        }
    )


def resolve_registry_uri(tracking_uri: str) -> str:
    """The model registry for runs in ``tracking_uri``: ``$MLFLOW_REGISTRY_URI`` when set (made
    absolute like a tracking URI), else the tracking store itself."""
    registry = os.environ.get(REGISTRY_URI_ENV)
    return absolute_store_uri(registry, source=REGISTRY_URI_ENV) if registry else tracking_uri


def default_artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite database, else the store's choice."""
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri[len("sqlite:///") :])
        return (database.parent / DEFAULT_ARTIFACTS).as_uri()
    return None


#: The experiment tag MLflow 3's UI reads to choose its view; this value opens an experiment on
#: its training runs (the UI's "model training" view) instead of the GenAI view (traces, prompts).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created (with a default artifact location) if missing.

    The experiment is tagged as a model-training one unless it already says what kind it is.
    """
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = client.create_experiment(
            name,
            artifact_location=default_artifact_location(tracking_uri),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    else:
        experiment_id = experiment.experiment_id
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment_id


def experiment_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment's training runs (or of one run).

    MLflow 3's UI opens an experiment in the workflow chosen in the browser (GenAI by default, on
    its traces), whatever the experiment's kind; ``workflowType=machine_learning`` in the link
    opens it on the runs table instead.
    """
    page = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs" + (
        f"/{run_id}" if run_id else ""
    )
    return f"{page}?workflowType=machine_learning"


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


@dataclass(frozen=True)
class DatasetRef:
    """A dataset input already logged: what a model's evaluation metrics point at."""

    name: str
    digest: str

    @classmethod
    def of(cls, name: str, digest: str) -> DatasetRef:
        """The reference MLflow stores: digests are cut to its 36-character column."""
        return cls(name, str(digest)[:36])


def log_dataset(
    run: RunHandle,
    name: str,
    source: str,
    digest: str,
    profile: Mapping[str, Any],
    context: str = "training",
) -> DatasetRef:
    """Record the data a run read as an MLflow dataset input (the UI's Dataset column, lineage).

    ``source``: where it lives (a local path or s3:// URI; its type is derived from it);
    ``digest``: what identifies this exact content (a manifest hash, a cache key); ``profile``:
    row counts and the like, stored as JSON.
    """
    source_type = "s3" if source.startswith("s3://") else "local"
    ref = DatasetRef.of(name, digest)
    dataset = Dataset(
        name=ref.name,
        digest=ref.digest,
        source_type=source_type,
        source=json.dumps({"uri": source}),
        profile=json.dumps(dict(profile), sort_keys=True),
    )
    tags = [InputTag(key="mlflow.data.context", value=context)]
    inputs = [DatasetInput(dataset, tags)]
    for attempt in range(_DATASET_ATTEMPTS):
        try:
            run.client().log_inputs(run.run_id, datasets=inputs)
            return ref
        except MlflowException as error:
            if not _lost_dataset_race(error) or attempt == _DATASET_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


_DATASET_ATTEMPTS = 4


def _lost_dataset_race(error: MlflowException) -> bool:
    """True when another run inserted the same (name, digest) between MLflow's lookup and insert.

    MLflow's SQL store looks a dataset up, then inserts it if missing; two runs logging one
    dataset at once (both arms of a demo fine-tune on the same folds) can both miss it, and the
    later insert hits the UNIQUE constraint. Retrying finds the row the winner wrote.
    """
    text = str(error)
    return "UNIQUE constraint" in text or "IntegrityError" in text or "Duplicate entry" in text


def end_run(run: RunHandle, status: str = "FINISHED") -> None:
    run.client().set_terminated(run.run_id, status=status)


@dataclass
class RunOutcome:
    """How :func:`closing_runs` ends its runs when the block completes (the block may change it)."""

    status: str = "FINISHED"


@contextmanager
def closing_runs(*runs: RunHandle | None) -> Iterator[RunOutcome]:
    """End every run when the block is left: ``outcome.status`` (FINISHED) on success, KILLED on
    Ctrl-C, FAILED on any other error (re-raised)."""
    live = [run for run in runs if run is not None]
    outcome = RunOutcome()
    try:
        yield outcome
    except KeyboardInterrupt:
        for run in live:
            end_run(run, "KILLED")
        raise
    except BaseException:
        for run in live:
            end_run(run, "FAILED")
        raise
    for run in live:
        end_run(run, outcome.status)


def run_status(run: RunHandle) -> str:
    return run.client().get_run(run.run_id).info.status


def reopen_run(run: RunHandle) -> None:
    """Mark a finished or failed run as running again (``--resume``)."""
    run.client().update_run(run.run_id, status="RUNNING")
