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
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from pipeline.ray_runtime import ensure_ray, require_state_api
from pipeline.run_storage import output_location
from pipeline.storage import Location, is_s3
from training.finetune import arm_inits, prepared_folds
from training.finetune_data import fold_data
from training.tracking import (
    RunHandle,
    check_default_locations,
    closing_runs,
    create_run,
    git_commit,
    log_params,
    reopen_run,
    resolve_tracking_uri,
)
from tune.sweep_callbacks import InterruptAfter, MlflowTrialRuns
from tune.sweep_config import SweepConfig
from tune.sweep_final import conclude_sweep, plain
from tune.sweep_result import SweepResult, trial_summaries
from tune.sweep_trial import OBJECTIVE, TRIAL_SPLITS, SweepContext, run_trial

STATE_FILE = "sweep.json"
INTERRUPT_MARKER = "interrupted.marker"
#: Where sweeps go without --storage-path outside a Ray job and without FACS_STORAGE_ROOT.
DEFAULT_STORAGE = "./runs/tune"
#: The CPU a trial's own actor holds: it only drives its Ray Train run, which holds the rest.
TRIAL_DRIVER_CPU = 0.01


def search_space(config: SweepConfig) -> dict[str, Any]:
    """Tune's domains: a log-uniform learning rate and a categorical for every other choice."""
    space: dict[str, Any] = {"lr": tune.loguniform(config.space.lr_min, config.space.lr_max)}
    space.update({name: tune.choice(values) for name, values in config.space.categorical().items()})
    return space


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
    log_params(parent, plain(asdict(config)))
    state.write_text_atomic(json.dumps({"name": name, "parent": asdict(parent)}, indent=2))
    return parent


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
    check_default_locations(
        "--storage-path",
        config.storage_path if default_storage else None,
        config.mlflow_uri or base.mlflow_uri,
        tracking_uri,
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
    parent = _parent_run(config, sweep, tracking_uri, name)
    context.parent = parent  # each trial finds its child run under it (system metrics)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), {"cpu": TRIAL_DRIVER_CPU}
    )
    print(
        f"[facs] tune {name}: {config.num_samples} trials x {len(folds)} folds "
        f"({'resumed' if config.resume else 'new'}); {sweep.uri}; MLflow {tracking_uri}",
        flush=True,
    )
    with closing_runs(parent) as outcome:
        tuner = _tuner(config, trainable, sweep, root, name, parent, default)
        grid = tuner.fit()
        trials = trial_summaries(grid, default)
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
            outcome.status = "KILLED"
            return result
        conclude_sweep(config, result, grid, sweep, parent)
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
