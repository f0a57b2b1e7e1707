"""How facs starts Ray: a local Ray serves the State API that Ray Train's clean-up needs, and a
sweep refuses a Ray that does not (its stopped trials would keep their resources forever)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.ray_runtime import require_state_api

ROOT = Path(__file__).resolve().parents[1]


def test_the_local_ray_serves_the_state_api(ray_local):
    from ray.util.state import list_nodes

    require_state_api("this test")
    assert len(list_nodes(timeout=30)) == 1


REFUSAL = """
import ray
from pipeline.ray_runtime import StateApiUnavailable, require_state_api
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
try:
    require_state_api("facs tune (trials stopped early by ASHA)")
except StateApiUnavailable as error:
    print("REFUSED:", error)
else:
    print("ACCEPTED")
ray.shutdown()
"""


def test_a_ray_without_a_dashboard_is_refused_with_the_reason():
    done = subprocess.run(
        [sys.executable, "-c", REFUSAL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "REFUSED: facs tune (trials stopped early by ASHA) needs Ray's State API" in done.stdout
    assert "--include-dashboard=false" in done.stdout
