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
    address = ray_local.get_runtime_context().gcs_address
    assert len(list_nodes(address=address, timeout=30)) == 1


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


OTHER_RAY = """
import sys, time, ray
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
print("up", flush=True)
sys.stdin.read()  # until the test closes it
ray.shutdown()
"""


def test_workers_reach_their_own_clusters_state_api_beside_another_local_ray(ray_local):
    """Ray Train's clean-up asks the State API from a worker without naming a cluster; with two
    local Rays on the machine that lookup is ambiguous unless facs pinned it at start."""
    import os

    import ray

    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_RAY],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "up"

        @ray.remote(num_cpus=0)
        def nodes_seen_from_a_worker() -> list[str]:
            from ray.util.state import list_nodes

            return [node.node_id for node in list_nodes(timeout=30)]

        assert ray.get(nodes_seen_from_a_worker.remote()) == [
            ray.get_runtime_context().get_node_id()
        ]
        assert "RAY_API_SERVER_ADDRESS" not in os.environ  # the driver's own environment is kept
    finally:
        other.stdin.close()
        other.wait(timeout=120)
