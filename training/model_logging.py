"""MLflow models of training runs: the model with its signature and pixel mean, its registered
version with aliases, and its scores on the data it was evaluated on.

The fluent ``mlflow.pytorch`` API needs the process-wide tracking URI; :func:`process_uris` sets it
for the call and puts it back exactly (see ``training.tracking`` for why URIs are explicit).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from torch import nn

from pipeline.environment import restored_environment
from pipeline.vocabulary import FACE_SIZE
from training.model_aliases import Evaluation, promote_if_better
from training.tracking import (
    REGISTRY_URI_ENV,
    TRACKING_URI_ENV,
    DatasetRef,
    RunHandle,
    param_text,
    resolve_registry_uri,
)

log = logging.getLogger(__name__)

_PROCESS_URIS_LOCK = threading.RLock()


@contextmanager
def process_uris(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at ``uri`` (and the registry URI at
    :func:`resolve_registry_uri` of it), then restore them exactly.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` (and the registry's twin),
    and setting the old value back would pin a default that was only implied; so the module
    state and the environment are saved and put back as they were.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = (TRACKING_URI_ENV, REGISTRY_URI_ENV)
    # Process-wide state: threads that log models at once (concurrent folds or scaling points)
    # take turns, or one would restore the URIs while another is still logging.
    with _PROCESS_URIS_LOCK, restored_environment(*names):
        registry = resolve_registry_uri(uri)  # before set_tracking_uri rewrites the environment
        saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(registry)
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
    evaluation: Evaluation | None = None,
    scores: Mapping[str, float] | None = None,
    scored_on: DatasetRef | None = None,
    scores_step: int = 0,
) -> LoggedModel:
    """Log ``model`` (eval mode, CPU) with a signature and input example; register it if asked.

    The input is the mean-normalised face (``pixels / 255 - pixel_mean``), so ``pixel_mean`` goes
    into the model's metadata and onto the registered version's tags: inference needs it.
    ``evaluation``: how the model scored; a registered version then gets ``champion`` when it
    beats the current champion on the same evaluation (``training.model_aliases``).
    ``scores``: the model's evaluation metrics, logged onto the MLflow 3 logged model (its page
    and the registered version show them) and linked to ``scored_on``, the dataset they came from.
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
        log_model_scores(run, info.model_id, scores or {}, scored_on, scores_step)
        if not register_as:
            return LoggedModel(info.model_uri, None, None)
        # MLflow prints "Successfully registered model ..." to stderr; the caller prints its own
        # line with the version, so MLflow's go to the log instead of the console.
        with contextlib.redirect_stderr(io.StringIO()) as said:
            version = mlflow.register_model(
                info.model_uri,
                register_as,
                tags={k: param_text(v) for k, v in tags.items() if v is not None},
            )
        for line in said.getvalue().splitlines():
            log.info("%s", line)
    if evaluation is not None:
        registry = MlflowClient(
            run.tracking_uri, registry_uri=resolve_registry_uri(run.tracking_uri)
        )
        promote_if_better(registry, register_as, str(version.version), evaluation)
    return LoggedModel(info.model_uri, register_as, str(version.version))


def log_model_scores(
    run: RunHandle,
    model_id: str,
    scores: Mapping[str, float],
    scored_on: DatasetRef | None,
    step: int = 0,
) -> None:
    """Log ``scores`` as metrics of the logged model ``model_id`` (and of ``run``), each linked to
    the dataset they were measured on; non-finite values are left out, as in :func:`log_metrics`."""
    now = int(time.time() * 1000)
    metrics = [
        Metric(
            key,
            float(value),
            now,
            step,
            model_id=model_id,
            dataset_name=scored_on.name if scored_on else None,
            dataset_digest=scored_on.digest if scored_on else None,
            run_id=run.run_id,
        )
        for key, value in scores.items()
        if value is not None and math.isfinite(float(value))
    ]
    if metrics:
        run.client().log_batch(run.run_id, metrics=metrics)
