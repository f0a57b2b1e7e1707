"""The cluster configs we ship are ones Ray's launcher and the KubeRay operator accept, and every
cluster they describe runs with token authentication."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_aws_config_passes_the_ray_launchers_own_validation():
    """`ray up` fills in the AWS defaults and validates against ray/autoscaler/ray-schema.json."""
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load("aws.yaml")
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)

    types = config["available_node_types"]
    head = config["head_node_type"]
    assert head in types
    workers = {name: spec for name, spec in types.items() if name != head}
    gpu = [n for n, s in workers.items() if s["node_config"]["InstanceType"].startswith(("g", "p"))]
    cpu = [n for n in workers if n not in gpu]
    assert gpu and cpu, f"expected CPU and GPU worker types, got {sorted(workers)}"
    for name, spec in workers.items():
        assert spec["min_workers"] == 0 < spec["max_workers"], f"{name} must autoscale from 0"
        assert "IamInstanceProfile" in spec["node_config"], f"{name} needs S3 via instance profile"
    assert sum(spec["max_workers"] for spec in workers.values()) <= config["max_workers"]


def test_aws_config_starts_every_node_with_token_auth_and_a_local_only_dashboard():
    config = _load("aws.yaml")
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert "--dashboard-host=127.0.0.1" in head
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    text = (CLUSTER / "aws.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in text and "RAY_AUTH_TOKEN=" not in text


def _check_group(group: dict, where: str) -> dict:
    assert isinstance(group.get("rayStartParams"), dict), f"{where}: rayStartParams is required"
    containers = group["template"]["spec"]["containers"]
    assert containers and containers[0]["image"].startswith("rayproject/ray:2.60.0"), where
    return containers[0]["resources"]


def _check_cluster_spec(spec: dict, where: str) -> None:
    assert spec["authOptions"] == {"mode": "token"}, f"{where}: token auth must be on"
    major, minor = (int(part) for part in spec["rayVersion"].split(".")[:2])
    assert (major, minor) >= (2, 52), f"{where}: authOptions needs rayVersion >= 2.52"
    _check_group(spec["headGroupSpec"], f"{where}.headGroupSpec")
    gpu_groups, cpu_groups = [], []
    for group in spec["workerGroupSpecs"]:
        name = group["groupName"]
        resources = _check_group(group, f"{where}.workerGroupSpecs[{name}]")
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
        has_gpu = "nvidia.com/gpu" in resources.get("limits", {})
        (gpu_groups if has_gpu else cpu_groups).append(name)
    assert gpu_groups and cpu_groups, f"{where}: expected CPU and GPU worker groups"


def test_kuberay_raycluster_has_cpu_and_gpu_groups_and_token_auth():
    manifest = _load("kuberay/raycluster.yaml")
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayCluster"
    assert manifest["metadata"]["name"]
    _check_cluster_spec(manifest["spec"], "RayCluster.spec")


def test_kuberay_rayjob_runs_a_facs_stage_on_a_token_protected_cluster():
    manifest = _load("kuberay/rayjob.yaml")
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    assert spec["entrypoint"].startswith("python -m cluster.cli ")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"].startswith("s3://")
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(runtime_env["env_vars"])
    _check_cluster_spec(spec["rayClusterSpec"], "RayJob.spec.rayClusterSpec")


def test_runtime_env_file_is_a_valid_ray_runtime_env_that_never_uploads_the_cluster_token():
    from ray.runtime_env import RuntimeEnv

    runtime_env = _load("runtime_env.yaml")
    RuntimeEnv(**runtime_env, working_dir=str(CLUSTER.parent))  # Ray's own field validation
    excludes = runtime_env["excludes"]
    for kept_out in ("/.venv/", "/.facs-cluster/", "/mlruns/"):
        assert kept_out in excludes
    assert "pipeline" not in " ".join(excludes)
