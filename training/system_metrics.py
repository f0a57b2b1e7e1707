"""MLflow system metrics (CPU, memory, disk, network; GPU with ``nvidia-ml-py``) from every node.

One monitor per node and run: the worker with local rank 0 samples its machine and logs
``system/node<N>/...`` metrics into the run, so a multi-node run shows each node's load side by
side. MLflow's own monitor drops the samples it has not yet published when it stops, so short runs
(shorter than one sampling interval) would log nothing; :func:`node_system_metrics` publishes that
last partial window on exit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import ray.train
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from training.tracking import RunHandle

log = logging.getLogger(__name__)

#: Seconds between samples; MLflow's ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides it.
SAMPLING_INTERVAL_S = 10.0


def node_name(node_rank: int) -> str:
    """The name a node's metrics carry: ``system/<node_name>/cpu_utilization_percentage``."""
    return f"node{node_rank}"


@contextmanager
def node_system_metrics(runs: RunHandle | Sequence[RunHandle | None] | None) -> Iterator[None]:
    """Inside a Ray Train worker: sample this node into ``runs`` (each of them: a trainer that
    steps several folds feeds each fold's run) while the block runs.

    Only the node's first worker (local rank 0) monitors; elsewhere, or without a run, a no-op.
    Monitoring never fails the training: an error is logged and the block runs unmonitored.
    """
    if runs is None or isinstance(runs, RunHandle):
        with _one_run(runs):
            yield
        return
    with ExitStack() as stack:
        for run in runs:
            stack.enter_context(_one_run(run))
        yield


@contextmanager
def _one_run(run: RunHandle | None) -> Iterator[None]:
    context = ray.train.get_context()
    if run is None or context.get_local_rank() != 0:
        yield
        return
    # Its start/stop INFO lines would be streamed from every worker to the console.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        monitor = SystemMetricsMonitor(
            run.run_id,
            sampling_interval=SAMPLING_INTERVAL_S,
            node_id=node_name(context.get_node_rank()),
            tracking_uri=run.tracking_uri,
            resume_logging=True,  # a restarted worker continues the run's steps
        )
        monitor.start()
    except Exception as error:  # noqa: BLE001 - metrics are an aid, never a reason to stop
        log.warning("system metrics are off for this run: %s", error)
        yield
        return
    try:
        yield
    finally:
        _stop(monitor)


def _stop(monitor: SystemMetricsMonitor) -> None:
    """Stop ``monitor`` and publish the samples of its last, partial interval."""
    try:
        monitor.finish()
        last = monitor.aggregate_metrics()
        if last:
            monitor.publish_metrics(last)
            monitor.mlflow_logger.flush()
    except Exception as error:  # noqa: BLE001
        log.warning("system metrics: the last samples were not logged: %s", error)
