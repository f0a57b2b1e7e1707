"""Arrow's allocator: the system's unless the user chose one (freed memory goes back)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import pipeline, pyarrow; print(pyarrow.default_memory_pool().backend_name)"


def backend(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if env_value is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = env_value
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


@pytest.mark.parametrize(("chosen", "expected"), [(None, "system"), ("mimalloc", "mimalloc")])
def test_the_package_picks_the_system_allocator_unless_the_user_chose_one(chosen, expected):
    assert backend(chosen) == expected
