"""The options every stage that keeps runs declares alike, with their help written once: where
its runs go, and which MLflow store tracks them (both saying what an unset one falls back to)."""

from __future__ import annotations

from typing import Any

from pipeline.options import option

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
