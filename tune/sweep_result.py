"""What a sweep found: per-trial summaries, the sweep's result, its JSON and its console lines."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ray import tune

from tune.sweep_trial import OBJECTIVE


@dataclass
class TrialSummary:
    """One trial as the sweep ended it."""

    trial_id: str
    params: dict[str, Any]
    epochs: int
    val_f1: float
    val_f1_fixed: float
    val_f1_tuned: float
    is_defaults: bool
    #: Per fold (``fold<k>``): the subjects whose frames reached its training / validation.
    subjects: dict[str, dict[str, list[str]]] = field(default_factory=dict)


@dataclass
class SweepResult:
    """What a sweep found, and (once) how the chosen config did on the test subjects."""

    name: str
    path: str
    tracking_uri: str
    parent_run_id: str
    interrupted: bool
    trials: list[TrialSummary]
    best: TrialSummary | None = None
    defaults: TrialSummary | None = None
    best_config_uri: str | None = None
    #: The final cross-validation: test F1 per fold and pooled, both threshold policies.
    test: dict[str, float] = field(default_factory=dict)
    final_run_name: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None

    @property
    def beats_defaults(self) -> bool | None:
        """Whether the chosen config's validation F1 exceeds the base config's trial's."""
        if self.best is None or self.defaults is None:
            return None
        return self.best.val_f1 > self.defaults.val_f1


def trial_summaries(grid: tune.ResultGrid, default: dict[str, Any] | None) -> list[TrialSummary]:
    out = []
    for result in grid:
        metrics = result.metrics or {}
        if OBJECTIVE not in metrics:
            continue
        params = dict(result.config or {})
        subjects: dict[str, dict[str, list[str]]] = {}
        for key, value in metrics.items():
            if key.startswith("fold") and key.endswith("_subjects"):
                fold, split, _ = key.split("_")
                subjects.setdefault(fold, {})[split] = [s for s in str(value).split(",") if s]
        out.append(
            TrialSummary(
                trial_id=str(metrics.get("trial_id", result.path)),
                params=params,
                epochs=int(metrics.get("training_iteration", 0)),
                val_f1=float(metrics[OBJECTIVE]),
                val_f1_fixed=float(metrics.get("val_f1_fixed", math.nan)),
                val_f1_tuned=float(metrics.get("val_f1_tuned", math.nan)),
                is_defaults=default is not None and _same_point(params, default),
                subjects=subjects,
            )
        )
    return out


def _same_point(params: dict[str, Any], point: dict[str, Any]) -> bool:
    for key, value in point.items():
        got = params.get(key)
        if isinstance(value, float) and isinstance(got, int | float):
            if not math.isclose(float(got), value, rel_tol=1e-9):
                return False
        elif got != value:
            return False
    return True


def result_json(result: SweepResult) -> dict[str, Any]:
    data = asdict(result)
    data["beats_defaults"] = result.beats_defaults
    return data


def sweep_summary(result: SweepResult) -> str:
    """A few lines for the console: best vs. defaults on validation, and the test figures."""
    lines = [f"[facs] tune {result.name}: {len(result.trials)} trials; {result.path}"]
    if result.best is not None:
        lines.append(
            f"  best trial {result.best.trial_id}: validation F1 {100 * result.best.val_f1:.1f} "
            f"({result.best.params.get('threshold_policy')} thresholds) {result.best.params}"
        )
    if result.defaults is not None:
        lines.append(
            f"  base config: validation F1 {100 * result.defaults.val_f1:.1f} "
            f"-> tuned config {'beats' if result.beats_defaults else 'does not beat'} them"
        )
    if result.test:
        folds = ", ".join(
            f"{key.split('_')[1]} {100 * value:.1f}"
            for key, value in sorted(result.test.items())
            if key.startswith("test_fold") and key.endswith("_f1_mean")
        )
        lines.append(
            f"  test F1 (0.5, per fold then averaged): {100 * result.test['test_f1_mean']:.1f}; "
            f"{folds}; 8 paper AUs {100 * result.test['test_f1_mean_paper']:.1f} (pooled "
            f"{100 * result.test['test_pooled_f1_mean']:.1f})"
        )
        if "test_f1_mean_tuned" in result.test:
            lines.append(
                "  test F1 (per-AU thresholds tuned on validation): "
                f"{100 * result.test['test_f1_mean_tuned']:.1f}"
            )
    if result.registered_version:
        lines.append(f"  registered {result.registered_model} v{result.registered_version}")
    return "\n".join(lines)
