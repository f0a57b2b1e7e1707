"""Tune callbacks of a sweep: a nested MLflow run per trial, and a resumable interruption."""

from __future__ import annotations

import math
import os
import signal
import time
from typing import Any

from ray.tune import Callback

from pipeline.storage import Location
from training.tracking import RunHandle, create_run, end_run, log_metrics, log_params, set_tags


class MlflowTrialRuns(Callback):
    """A child MLflow run per trial start under the sweep's parent run: params, per-epoch metrics.

    Runs in the sweep's driver (the only MLflow writer). A trial restarted by ``--resume`` gets a
    new child run (``facs.attempt`` counts them); the interrupted one ends ``KILLED``.
    """

    def __init__(self, parent: RunHandle, experiment: str) -> None:
        self.parent = parent
        self.experiment = experiment
        self.runs: dict[str, RunHandle] = {}

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        attempt = self._attempts(trial.trial_id) + 1
        run = create_run(
            self.parent.tracking_uri,
            self.experiment,
            f"trial-{trial.trial_id}",
            tags={
                "mlflow.parentRunId": self.parent.run_id,
                "facs.stage": "tune-trial",
                "facs.trial_id": trial.trial_id,
                "facs.attempt": attempt,
            },
        )
        log_params(run, trial.config)
        self.runs[trial.trial_id] = run

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        run = self.runs.get(trial.trial_id)
        if run is None:
            return
        numbers = {
            key: float(value)
            for key, value in result.items()
            if isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and not key.startswith(("time_", "timestamp", "pid", "iterations_since"))
        }
        log_metrics(run, numbers, step=int(result.get("training_iteration", 0)))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._end(trial, "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial_id in list(self.runs):
            end_run(self.runs.pop(trial_id), "KILLED")

    def _end(self, trial, status: str) -> None:
        run = self.runs.pop(trial.trial_id, None)
        if run is None:
            return
        last = trial.last_result or {}
        subjects = {k: v for k, v in last.items() if k.endswith("_subjects")}
        set_tags(run, {**subjects, "facs.trial_status": status})
        end_run(run, status)

    def _attempts(self, trial_id: str) -> int:
        found = self.parent.client().search_runs(
            [self.parent.experiment_id],
            filter_string=f"tags.`facs.trial_id` = '{trial_id}'",
            max_results=100,
        )
        return len(found)


class InterruptAfter(Callback):
    """Stop the sweep as Ctrl+C would once ``trials`` trials have finished (once per sweep).

    Tune then saves the experiment state; unfinished trials continue with ``Tuner.restore``. The
    marker file keeps a resumed sweep (whose callbacks Tune restores too) from stopping again.
    """

    def __init__(self, trials: int, marker: str) -> None:
        self.trials = trials
        self.marker = marker
        self.finished = 0

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.finished += 1
        marker = Location.of(self.marker)
        if self.finished >= self.trials and not marker.exists():
            marker.write_text_atomic(f"interrupted after {self.finished} finished trials\n")
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own "stop and save" signal


def trial_run(parent: RunHandle, trial_id: str, wait_s: float = 30.0) -> RunHandle | None:
    """The trial's running child run (its newest attempt), made by :class:`MlflowTrialRuns` in
    the driver; waits up to ``wait_s`` for it, since the trial may start before the callback runs.

    A trial logs its workers' system metrics into it; ``None`` if it never appears.
    """
    deadline = time.monotonic() + wait_s
    while True:
        found = parent.client().search_runs(
            [parent.experiment_id],
            filter_string=f"tags.`facs.trial_id` = '{trial_id}' and attributes.status = 'RUNNING'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if found:
            return RunHandle(parent.tracking_uri, parent.experiment_id, found[0].info.run_id)
        if time.monotonic() >= deadline:
            return None
        time.sleep(1.0)
