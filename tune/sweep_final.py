"""A sweep's conclusion: the best trial's config written out, then cross-validated on test once."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from pipeline.storage import Location
from pipeline.vocabulary import PAPER_COMPARISON_AUS
from training.finetune import run_cross_validation
from training.finetune_config import FinetuneConfig
from training.tracking import RunHandle, log_metrics, set_tags
from tune.sweep_config import SweepConfig, apply_params
from tune.sweep_result import SweepResult, result_json, sweep_summary
from tune.sweep_trial import OBJECTIVE

BEST_CONFIG_FILE = "best_finetune.yaml"
FINAL_FILE = "final.json"
RESULT_FILE = "sweep_result.json"


def best_finetune_config(config: SweepConfig, params: dict[str, Any]) -> FinetuneConfig:
    """The chosen config as `facs finetune` runs it (the base's workers, storage and tracking)."""
    return apply_params(config.finetune, params, config.space.pos_weight_cap)


def finetune_yaml(finetune: FinetuneConfig) -> str:
    """A FinetuneConfig as YAML that ``facs finetune --config`` loads back unchanged."""
    return yaml.safe_dump(plain(asdict(finetune)), sort_keys=False)


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def conclude_sweep(
    config: SweepConfig,
    result: SweepResult,
    grid: tune.ResultGrid,
    sweep: Location,
    parent: RunHandle,
) -> None:
    """Pick the best trial on validation; write its config; evaluate it on test, once."""
    if not result.trials:
        raise RuntimeError(f"sweep {result.name}: no trial reported {OBJECTIVE}")
    best = max(result.trials, key=lambda t: (t.val_f1, -t.epochs))
    result.best = best
    result.defaults = next((t for t in result.trials if t.is_defaults), None)
    chosen = best_finetune_config(config, best.params)
    text = finetune_yaml(dataclasses.replace(chosen, run_name=None))
    best_file = sweep.join(BEST_CONFIG_FILE)
    best_file.write_text_atomic(text)
    result.best_config_uri = best_file.uri
    with tempfile.TemporaryDirectory(prefix="facs-tune-") as local:
        Path(local, BEST_CONFIG_FILE).write_text(text)
        parent.client().log_artifact(parent.run_id, str(Path(local, BEST_CONFIG_FILE)))
    summary = {
        "best_val_f1": best.val_f1,
        "best_val_f1_fixed": best.val_f1_fixed,
        "best_val_f1_tuned": best.val_f1_tuned,
        "trials": len(result.trials),
    }
    if result.defaults is not None:
        summary["defaults_val_f1"] = result.defaults.val_f1
        summary["tuned_beats_defaults"] = float(bool(result.beats_defaults))
    log_metrics(parent, summary, step=0)
    set_tags(parent, {"best_trial_id": best.trial_id})

    if config.final_evaluation:
        _final_evaluation(config, result, chosen, sweep, parent)
    sweep.join(RESULT_FILE).write_text_atomic(json.dumps(result_json(result), indent=2))
    print(sweep_summary(result), flush=True)


def _final_evaluation(
    config: SweepConfig,
    result: SweepResult,
    chosen: FinetuneConfig,
    sweep: Location,
    parent: RunHandle,
) -> None:
    """Cross-validate the chosen config on the test subjects: once per sweep (kept on resume)."""
    final_file = sweep.join(FINAL_FILE)
    if final_file.exists():
        saved = json.loads(final_file.read_text())
    else:
        final = dataclasses.replace(
            chosen,
            run_name=f"{result.name}-final",
            storage_path=sweep.join("final").uri,
            mlflow_uri=result.tracking_uri,
            experiment=config.experiment,
        )
        cv = run_cross_validation(final, parent=parent)
        arm = cv.arms[final.init]
        test = {
            "test_f1_mean": arm.mean_f1,
            "test_f1_mean_paper": arm.mean_f1_paper8,
            "test_pooled_f1_mean": arm.metrics.pooled.mean()["f1"],
            "test_pooled_f1_mean_paper": arm.metrics.pooled.mean(PAPER_COMPARISON_AUS)["f1"],
            **{
                f"test_fold{k}_f1_mean": m.mean()["f1"]
                for k, m in sorted(arm.metrics.per_fold.items())
            },
            **arm.tuned,
        }
        policy = "_tuned" if chosen.threshold_policy == "tuned" else ""
        test["test_f1_mean_chosen_policy"] = test.get(f"test_f1_mean{policy}", math.nan)
        saved = {
            "test": test,
            "run_name": cv.run_name,
            "registered_model": cv.registered_model,
            "registered_version": cv.registered_version,
        }
        final_file.write_text_atomic(json.dumps(saved, indent=2))
        log_metrics(parent, test, step=0)
    result.test = saved["test"]
    result.final_run_name = saved["run_name"]
    result.registered_model = saved["registered_model"]
    result.registered_version = saved["registered_version"]
