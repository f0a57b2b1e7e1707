"""Allocators: Arrow's is the system's, and glibc gives freed heap back, unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def package_sets(name: str, probe: str, env_value: str | None) -> str:
    """What ``probe`` prints in a fresh process that imports the package, with ``name`` set to
    ``env_value`` beforehand (or unset)."""
    env = {k: v for k, v in os.environ.items() if k != name}
    if env_value is not None:
        env[name] = env_value
    result = subprocess.run(
        [sys.executable, "-c", f"import pipeline, os, pyarrow; print({probe})"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.parametrize(("chosen", "expected"), [(None, "system"), ("mimalloc", "mimalloc")])
def test_the_package_picks_the_system_allocator_unless_the_user_chose_one(chosen, expected):
    backend = "pyarrow.default_memory_pool().backend_name"
    assert package_sets("ARROW_DEFAULT_MEMORY_POOL", backend, chosen) == expected


@pytest.mark.parametrize(("chosen", "expected"), [(None, "0"), ("1048576", "1048576")])
def test_processes_started_after_the_package_give_freed_heap_back_unless_the_user_chose(
    chosen, expected
):
    child_sees = "os.popen('echo $MALLOC_TRIM_THRESHOLD_').read().strip()"  # a process it starts
    assert package_sets("MALLOC_TRIM_THRESHOLD_", child_sees, chosen) == expected
