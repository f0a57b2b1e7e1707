"""Connect to Ray: the cluster named by --ray-address / RAY_ADDRESS, or a local one on this machine."""

from __future__ import annotations

import logging
import os

import ray


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Start or join Ray once per process; quiet logs, no dashboard for a local run."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    # A progress bar per operator is the useful output on a console; keep it compact.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
