"""`facs tune`: Optuna TPE + ASHA over DISFA fine-tuning configs, judged on validation subjects only.

``run_sweep(config)`` is the entry point. Every trial is one config fine-tuned on all folds at once
in a Ray Train trainer (``tune/sweep_trial.py``) that never reads a test subject's frame; its
objective is the mean over folds of the validation F1. When the sweep is done, and only then,
the chosen config is cross-validated once by ``facs finetune``'s own path (each fold's test
subjects predicted by the weights kept on its validation subjects), giving test F1 per fold and
averaged over the folds (and pooled), for the fixed 0.5 threshold and for per-AU thresholds
tuned on validation.

One caveat, the usual one for hyper-parameters chosen by cross-validation without an outer loop:
fold *k*'s test subjects are training subjects of the other folds' trials, so the chosen config
has seen them indirectly (through the objective), never as frames of fold *k*.

MLflow: a parent run per sweep; a child run per trial (params, per-epoch metrics, the subjects
each fold touched); the best config as ``best_finetune.yaml`` (loadable by ``facs finetune
--config``); the final cross-validation nested under the parent, its model registered.

Layout under ``<storage_path>/<name>/``: Tune's experiment state and trial folders,
``sweep.json`` (the parent run), ``train/`` (each trial's Ray Train run), ``best_finetune.yaml``,
``final/`` (the final cross-validation) and ``sweep_result.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from pipeline.ray_runtime import ensure_ray, require_state_api
from pipeline.run_storage import check_defaults_reachable, output_location
from pipeline.storage import Location, is_s3
from pipeline.vocabulary import PAPER_COMPARISON_AUS
from training.finetune import arm_inits, prepared_folds, run_cross_validation
from training.finetune_config import FinetuneConfig
from training.finetune_data import fold_data
from training.tracking import (
    RunHandle,
    create_run,
    end_run,
    git_commit,
    log_metrics,
    log_params,
    reopen_run,
    resolve_tracking_uri,
    set_tags,
    store_path,
    uses_default_store,
)
from tune.sweep_callbacks import InterruptAfter, MlflowTrialRuns
from tune.sweep_config import SweepConfig, apply_params
from tune.sweep_trial import OBJECTIVE, TRIAL_SPLITS, SweepContext, run_trial

STATE_FILE = "sweep.json"
BEST_CONFIG_FILE = "best_finetune.yaml"
FINAL_FILE = "final.json"
RESULT_FILE = "sweep_result.json"
INTERRUPT_MARKER = "interrupted.marker"
#: Where sweeps go without --storage-path outside a Ray job and without FACS_STORAGE_ROOT.
DEFAULT_STORAGE = "./runs/tune"
#: The CPU a trial's own actor holds: it only drives its Ray Train run, which holds the rest.
TRIAL_DRIVER_CPU = 0.01


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


def search_space(config: SweepConfig) -> dict[str, Any]:
    """Tune's domains: a log-uniform learning rate and a categorical for every other choice."""
    space: dict[str, Any] = {"lr": tune.loguniform(config.space.lr_min, config.space.lr_max)}
    space.update({name: tune.choice(values) for name, values in config.space.categorical().items()})
    return space


def best_finetune_config(config: SweepConfig, params: dict[str, Any]) -> FinetuneConfig:
    """The chosen config as `facs finetune` runs it (the base's workers, storage and tracking)."""
    return apply_params(config.finetune, params, config.space.pos_weight_cap)


def finetune_yaml(finetune: FinetuneConfig) -> str:
    """A FinetuneConfig as YAML that ``facs finetune --config`` loads back unchanged."""
    return yaml.safe_dump(_plain(asdict(finetune)), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _storage(location: Location) -> dict[str, Any]:
    if is_s3(location.uri):
        return {"storage_path": location.path, "storage_filesystem": location.fs}
    return {"storage_path": location.path}


def _parent_run(config: SweepConfig, sweep: Location, tracking_uri: str, name: str) -> RunHandle:
    """The sweep's MLflow parent run: created once, reopened by ``--resume``."""
    state = sweep.join(STATE_FILE)
    if config.resume:
        if not state.exists():
            raise FileNotFoundError(
                f"{state.uri}: no sweep state; expected the sweep {name!r} under "
                f"{config.storage_path} to continue with --resume"
            )
        parent = RunHandle(**json.loads(state.read_text())["parent"])
        reopen_run(parent)
        return parent
    if state.exists():
        raise ValueError(
            f"{sweep.uri}: a sweep named {name!r} exists; continue it with --resume or pick "
            "another --name"
        )
    parent = create_run(
        tracking_uri,
        config.experiment,
        name,
        tags={"facs.stage": "tune", "facs.run_name": name, "git_commit": git_commit()},
    )
    log_params(parent, _plain(asdict(config)))
    state.write_text_atomic(json.dumps({"name": name, "parent": asdict(parent)}, indent=2))
    return parent


def _summaries(grid: tune.ResultGrid, default: dict[str, Any] | None) -> list[TrialSummary]:
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


def storage_uri(config: SweepConfig) -> str:
    """``--storage-path``, or the default run storage (see ``pipeline.run_storage``)."""
    return output_location(config.storage_path, "tune", "--storage-path", DEFAULT_STORAGE)


def check_sweep(config: SweepConfig) -> None:
    """Everything a sweep can be refused for before Ray starts (the CLI calls it first): the
    weights to start from, the DISFA root, the defaults trial, the storage and the MLflow store."""
    base = config.finetune
    if base.init == "pretrained" and not base.pretrained:
        raise ValueError(
            "SweepConfig.finetune.pretrained: expected pre-trained weights for init "
            "'pretrained' (--finetune-pretrained ...), or --finetune-init scratch"
        )
    if not base.disfa.root:
        raise ValueError(
            "SweepConfig.finetune.disfa.root: expected the DISFA folder (--disfa), got none"
        )
    if config.include_defaults:
        config.default_point()
    storage_uri(config)
    resolve_tracking_uri(config.mlflow_uri or base.mlflow_uri)


def run_sweep(config: SweepConfig) -> SweepResult:
    """Run (or ``resume``) a sweep; then, once, the chosen config's test cross-validation."""
    check_sweep(config)
    base = dataclasses.replace(config.finetune, compare_init=False)
    default = config.default_point() if config.include_defaults else None
    default_storage = not config.storage_path
    config = dataclasses.replace(config, storage_path=storage_uri(config))
    tracking_uri = resolve_tracking_uri(config.mlflow_uri or base.mlflow_uri)
    ensure_ray()
    # A trial that ASHA stops is killed with its Ray Train controller; Ray Train then frees the
    # run's placement group only if it can see the controller is gone, through the State API.
    require_state_api("facs tune (trials stopped early by ASHA)")
    check_defaults_reachable(
        {
            "--storage-path": config.storage_path if default_storage else None,
            "--mlflow-uri": store_path(tracking_uri)
            if uses_default_store(config.mlflow_uri or base.mlflow_uri)
            else None,
        }
    )
    name = config.name or "tune-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = Location.of(config.storage_path)
    sweep = root.join(name)

    frames, folds = prepared_folds(base)
    inits, scratch_model = arm_inits(base, tracking_uri)
    context = SweepContext(
        base=base,
        pos_weight_cap=config.space.pos_weight_cap,
        disfa_cache=frames.uri,
        folds=folds,
        init=inits[base.init],
        scratch_model=scratch_model,
        subjects=tuple(sorted(frames.manifest.accepted_per_subject)),
        train_storage=sweep.join("train").uri,
        cpus_per_trial=config.cpus_per_trial,
        gpus_per_trial=config.gpus_per_trial,
        fold_data={
            fold.index: fold_data(
                dataclasses.replace(base, class_weighting=False), frames, fold, splits=TRIAL_SPLITS
            )
            for fold in folds
        },
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), {"cpu": TRIAL_DRIVER_CPU}
    )
    parent = _parent_run(config, sweep, tracking_uri, name)
    print(
        f"[facs] tune {name}: {config.num_samples} trials x {len(folds)} folds "
        f"({'resumed' if config.resume else 'new'}); {sweep.uri}; MLflow {tracking_uri}",
        flush=True,
    )
    try:
        tuner = _tuner(config, trainable, sweep, root, name, parent, default)
        grid = tuner.fit()
        trials = _summaries(grid, default)
        finished = _finished_trials(sweep)
        interrupted = finished < config.num_samples
        result = SweepResult(
            name=name,
            path=sweep.uri,
            tracking_uri=tracking_uri,
            parent_run_id=parent.run_id,
            interrupted=interrupted,
            trials=trials,
        )
        if interrupted:
            print(
                f"[facs] tune {name}: interrupted after {finished} of {config.num_samples} "
                f"trials; continue with: facs tune --resume --name {name} "
                f"--storage-path {config.storage_path}",
                flush=True,
            )
            end_run(parent, "KILLED")
            return result
        _conclude(config, result, grid, sweep, parent)
    except BaseException:
        end_run(parent, "FAILED")
        raise
    end_run(parent, "FINISHED")
    return result


def _finished_trials(sweep: Location) -> int:
    """Trials the saved experiment state holds as ended (Tune marks interrupted trials
    TERMINATED in memory after saving them as RUNNING, so the saved state is the one to ask)."""
    analysis = tune.ExperimentAnalysis(
        sweep.uri, **({"storage_filesystem": sweep.fs} if is_s3(sweep.uri) else {})
    )
    return sum(trial.status in ("TERMINATED", "ERROR") for trial in analysis.trials)


def _tuner(
    config: SweepConfig,
    trainable,
    sweep: Location,
    root: Location,
    name: str,
    parent: RunHandle,
    default: dict[str, Any] | None,
) -> tune.Tuner:
    if config.resume:
        if not tune.Tuner.can_restore(sweep.uri):
            raise FileNotFoundError(
                f"{sweep.uri}: no Tune experiment state to continue; expected an interrupted "
                f"sweep named {name!r}"
            )
        return tune.Tuner.restore(
            sweep.uri,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            **({"storage_filesystem": sweep.fs} if is_s3(sweep.uri) else {}),
        )
    searcher = OptunaSearch(
        points_to_evaluate=[default] if default is not None else None,
        seed=config.seed,
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=config.finetune.max_epochs,
        grace_period=min(config.grace_period, config.finetune.max_epochs),
        reduction_factor=config.reduction_factor,
    )
    callbacks: list[tune.Callback] = [MlflowTrialRuns(parent, config.experiment)]
    if config.interrupt_after_trials:
        callbacks.append(
            InterruptAfter(config.interrupt_after_trials, sweep.join(INTERRUPT_MARKER).uri)
        )
    return tune.Tuner(
        trainable,
        param_space=search_space(config),
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE,
            mode="max",
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=config.num_samples,
            max_concurrent_trials=config.max_concurrent,
            # A trial's actor only drives its Ray Train run; a fresh one per trial is cleaner.
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=name,
            **_storage(root),
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=1,
        ),
    )


def _conclude(
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
