"""Registered-model aliases: ``champion`` moves to a new version only when it wins a like-for-like
comparison.

MLflow reserves ``latest`` (``models:/NAME/latest`` already names the newest version), so every
version is reachable that way; ``champion`` (``models:/NAME@champion``) names the best version
measured on one evaluation: the same data, folds and metric. A version evaluated differently never
takes the alias from one it cannot be compared with; its description says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
#: Version tags that record how a version was evaluated (what the comparison reads back).
EVAL_KEY_TAG, EVAL_METRIC_TAG, EVAL_VALUE_TAG = (
    "facs.eval_key",
    "facs.eval_metric",
    "facs.eval_value",
)


@dataclass(frozen=True)
class Evaluation:
    """How a model version scored: ``key`` names the data and protocol (two versions compare only
    when their keys are equal), ``metric`` and ``value`` the score."""

    key: str
    metric: str
    value: float
    higher_is_better: bool

    def beats(self, other: float) -> bool:
        if math.isnan(self.value):
            return False
        if math.isnan(other):
            return True
        return self.value > other if self.higher_is_better else self.value < other


def _champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def promote_if_better(client: MlflowClient, name: str, version: str, evaluation: Evaluation) -> str:
    """Tag ``version`` with ``evaluation``; give it ``champion`` if it beats the champion on the
    same evaluation (or there is none). Writes the verdict into the version's description and
    returns it."""
    for key, value in (
        (EVAL_KEY_TAG, evaluation.key),
        (EVAL_METRIC_TAG, evaluation.metric),
        (EVAL_VALUE_TAG, repr(float(evaluation.value))),
    ):
        client.set_model_version_tag(name, version, key, value)
    score = f"{evaluation.metric} {evaluation.value:.4f} on {evaluation.key}"
    current = _champion(client, name)
    if current is None:
        verdict = f"champion: the first version with an evaluation ({score})"
        client.set_registered_model_alias(name, CHAMPION, version)
    elif (
        current.tags.get(EVAL_KEY_TAG) != evaluation.key
        or current.tags.get(EVAL_METRIC_TAG) != evaluation.metric
    ):
        verdict = (
            f"not compared with champion v{current.version}: it was evaluated differently "
            f"({current.tags.get(EVAL_METRIC_TAG)} on {current.tags.get(EVAL_KEY_TAG)}); {score}"
        )
    else:
        theirs = float(current.tags.get(EVAL_VALUE_TAG, "nan"))
        if evaluation.beats(theirs):
            verdict = f"champion: {score} beats v{current.version}'s {theirs:.4f}"
            client.set_registered_model_alias(name, CHAMPION, version)
        else:
            verdict = f"not champion: {score} does not beat v{current.version}'s {theirs:.4f}"
    client.update_model_version(name, version, description=verdict)
    return verdict
