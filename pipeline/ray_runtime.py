"""Join Ray: the cluster named by an address / RAY_ADDRESS, or a local one on this machine.

Every facs entry point starts Ray through :func:`ensure_ray`, so a local run is started one way.
A local Ray gets its dashboard: Ray Train's clean-up of a run whose controller was killed (a Tune
trial stopped early by ASHA) asks Ray's State API, which the dashboard serves; without it the
run's placement group stays reserved and the next trial can wait for it forever.
"""

from __future__ import annotations

import logging
import os
import socket

import ray

from pipeline.console import route_ray_output
from pipeline.environment import environment

LOCAL_HOST = "127.0.0.1"


def _free_port() -> int:
    """A port the kernel just gave out as free (Ray's fixed 8265 races when two local Rays start
    at once, e.g. a test run beside a job)."""
    with socket.socket() as sock:
        sock.bind((LOCAL_HOST, 0))
        return sock.getsockname()[1]


class StateApiUnavailable(RuntimeError):
    """The Ray cluster does not serve the State API (it was started without a dashboard)."""


def ensure_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    progress_bars: bool | None = None,
    log_to_driver: bool = True,
) -> None:
    """Start or join Ray once per process, with quiet logs (a running Ray is used as it is).

    ``progress_bars``: Ray Data's per-operator bars (the CLI's console output); None leaves them.
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver)
        else:
            port = _free_port()
            # Ray's processes (and so every worker) inherit this, which pins their State API
            # calls to this cluster's dashboard. Left unset, a call that names no cluster picks
            # one by looking for local Ray processes, and fails when another local Ray is running
            # (a second job, a test run) - Ray Train's placement-group clean-up among them. This
            # process keeps its own environment.
            with environment(RAY_API_SERVER_ADDRESS=f"http://{LOCAL_HOST}:{port}"):
                ray.init(
                    num_cpus=num_cpus,
                    include_dashboard=True,
                    dashboard_host=LOCAL_HOST,
                    dashboard_port=port,
                    logging_level=logging.WARNING,
                    log_to_driver=log_to_driver,
                )
            if progress_bars:
                print(f"[facs] local Ray; its dashboard: http://{LOCAL_HOST}:{port}", flush=True)
        route_ray_output()
    if progress_bars is not None:
        ray.data.DataContext.get_current().enable_progress_bars = progress_bars


def require_state_api(purpose: str) -> None:
    """Raise :class:`StateApiUnavailable` naming ``purpose`` unless this cluster's State API answers.

    The answer must come from this cluster: a cluster started without a dashboard still records
    the default dashboard address, where another local Ray's dashboard may be listening.
    """
    from ray.util.state import list_nodes

    context = ray.get_runtime_context()
    try:
        mine = list_nodes(
            address=context.gcs_address,
            filters=[("node_id", "=", context.get_node_id())],
            timeout=15,
            raise_on_missing_output=False,
        )
        problem = None if mine else "its dashboard address is answered by another Ray cluster"
    except Exception as error:  # the State API client raises several types for "no dashboard"
        problem = str(error)
    if problem:
        raise StateApiUnavailable(
            f"{purpose} needs Ray's State API, which this Ray cluster does not serve ({problem}). "
            "Start Ray with its dashboard (the default of `ray start --head` and of facs' own "
            "local Ray; not `--include-dashboard=false`)."
        )
