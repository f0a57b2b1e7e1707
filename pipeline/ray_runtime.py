"""Join Ray: the cluster named by an address / RAY_ADDRESS, or a local one on this machine.

Every facs entry point starts Ray through :func:`ensure_ray`, so a local run is started one way.
A local Ray gets its dashboard: Ray Train's clean-up of a run whose controller was killed (a Tune
trial stopped early by ASHA) asks Ray's State API, which the dashboard serves; without it the
run's placement group stays reserved and the next trial can wait for it forever.
"""

from __future__ import annotations

import logging
import os

import ray


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
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                logging_level=logging.WARNING,
                log_to_driver=log_to_driver,
            )
    if progress_bars is not None:
        ray.data.DataContext.get_current().enable_progress_bars = progress_bars


def require_state_api(purpose: str) -> None:
    """Raise :class:`StateApiUnavailable` naming ``purpose`` when Ray serves no State API."""
    from ray.util.state import list_placement_groups

    try:
        list_placement_groups(limit=1, timeout=15, raise_on_missing_output=False)
    except Exception as error:  # the State API client raises several types for "no dashboard"
        raise StateApiUnavailable(
            f"{purpose} needs Ray's State API, which this Ray cluster does not serve ({error}). "
            "Start Ray with its dashboard (the default of `ray start --head` and of facs' own "
            "local Ray; not `--include-dashboard=false`)."
        ) from error
