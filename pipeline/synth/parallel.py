"""Run the generators' shard tasks in this process or as Ray tasks, results in task order."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any


def run_tasks(
    function: Callable[..., Any],
    tasks: Sequence[tuple],
    *,
    use_ray: bool,
    workers: int = 0,
) -> list[Any]:
    """``[function(*task) for task in tasks]``, as one Ray task each when ``use_ray``.

    A running Ray (``ray.init`` already called, e.g. on a cluster) is used as it is; otherwise a
    local one with ``workers`` CPUs (0 = all) is started. Output files must then be on storage all
    workers see (a shared folder or ``s3://``).
    """
    if not use_ray:
        return [function(*task) for task in tasks]
    import ray  # imported here: generating in one process must not pay for importing Ray

    from pipeline.ray_runtime import ensure_ray

    ensure_ray(num_cpus=workers or os.cpu_count(), log_to_driver=False)
    remote = ray.remote(num_cpus=1)(function)
    return ray.get([remote.remote(*task) for task in tasks])
