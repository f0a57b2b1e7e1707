"""Arrow's allocator: the system's unless the user chose one (freed memory goes back)."""

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
