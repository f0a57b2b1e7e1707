"""`facs cluster up|status|down`, `facs submit` and `facs jobs` against a real Ray head and a real
MLflow server on 127.0.0.1 (own ports and temp dir, apart from the session's Ray)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import free_port
from corpus_fixture import make_corpus
from mlflow_helpers import rest

from cluster import cluster_cli
from cluster.cli import build_parser
from cluster.local_cluster import (
    ClusterState,
    client_env_lines,
    cluster_processes,
    http_get,
    port_is_free,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
#: The smallest pre-training that still runs every step: one batch of training, one of validation
#: (the pixel mean given, which saves a pass over the corpus; the demo's job computes its own).
TINY_PRETRAIN = ["--model-width", "0.125", "--max-epochs", "1", "--batches-per-epoch", "1"]
TINY_PRETRAIN += ["--val-batches", "1", "--batch-size", "8", "--shuffle-buffer", "0"]
TINY_PRETRAIN += ["--pixel-mean", "0.5"]
#: What the jobs below left on the cluster's run storage (checked again after `cluster down`).
KEPT: dict[str, Path] = {}
#: Models the jobs registered, by stage (the fine-tuning job starts from the pre-trained one).
MODELS: dict[str, str] = {}


def facs(argv: list[str]) -> int:
    """`facs ARGV` in this process, with the cluster commands registered if cli.py does not yet."""
    parser = build_parser()
    stages = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "cluster" not in stages.choices:
        cluster_cli.register(stages)
    args = parser.parse_args(argv)
    return args.run(args)


def test_token_comes_from_rays_sources_in_rays_order_and_is_never_shown(monkeypatch, tmp_path):
    from cluster.auth import ensure_token_file, resolve_token

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    assert resolve_token() is None
    cluster_file = ensure_token_file(tmp_path / "run" / "auth_token")
    assert cluster_file.stat().st_mode & 0o777 == 0o600
    from_cluster = resolve_token(cluster_file)
    assert from_cluster.secret == cluster_file.read_text() and len(from_cluster.secret) == 64
    assert from_cluster.secret not in repr(from_cluster) + str(from_cluster)
    other = tmp_path / "other_token"
    other.write_text("from-path\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(other))
    assert resolve_token(cluster_file).secret == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert resolve_token(cluster_file).source == "$RAY_AUTH_TOKEN"


def test_up_refuses_a_port_in_use_and_starts_nothing(tmp_path):
    import socket

    from cluster.local_cluster import ClusterError, LocalClusterConfig, up

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        config = LocalClusterConfig(
            run_dir=str(tmp_path / "run"),
            ray_port=free_port(),
            dashboard_port=taken,
            client_server_port=free_port(),
            dashboard_agent_port=free_port(),
            mlflow_port=free_port(),
        )
        with pytest.raises(ClusterError, match=f"port {taken} .*dashboard_port.*--dashboard-port"):
            up(config)
    assert not (tmp_path / "run" / "cluster.json").exists()


@pytest.fixture(scope="module")
def cluster(s3_server):
    """A local cluster started with `facs cluster up` on free ports, MLflow artifacts on the test
    S3 server; stopped at the end."""
    import boto3

    bucket = f"facs-cluster-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    # A short path: Ray's Unix socket paths under it must stay below 108 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="facs-c-", dir="/tmp"))
    ports = {
        "--ray-port": free_port(),
        "--dashboard-port": free_port(),
        "--client-server-port": free_port(),
        "--dashboard-agent-port": free_port(),
        "--mlflow-port": free_port(),
    }
    argv = ["cluster", "up", "--run-dir", str(run_dir), "--num-cpus", "2"]
    argv += ["--artifact-root", f"s3://{bucket}/mlflow"]
    for flag, port in ports.items():
        argv += [flag, str(port)]
    try:
        assert facs(argv) == 0
        yield ClusterState.load(run_dir)
    finally:
        if (run_dir / "cluster.json").exists():
            facs(["cluster", "down", "--run-dir", str(run_dir)])
        shutil.rmtree(run_dir, ignore_errors=True)


def test_up_starts_a_healthy_ray_head_with_token_auth_and_an_mlflow_server(cluster, capsys):
    assert facs(["cluster", "status", "--run-dir", cluster.run_dir, "--json"]) == 0
    health = json.loads(capsys.readouterr().out)
    assert health["ray"]["healthy"] and health["ray"]["auth_mode"] == "token"
    assert health["mlflow"]["healthy"]
    # MLflow's REST API works (and has its SQLite store under the run directory).
    code, body = http_get(f"{cluster.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=5")
    assert code == 200 and "experiments" in json.loads(body)
    assert (Path(cluster.run_dir) / "mlflow.db").is_file()
    # Artifacts go through the server to its S3 artifact root; the client needs no S3 access.
    import boto3
    from mlflow import MlflowClient

    client = MlflowClient(cluster.mlflow_url)
    run = client.create_run(client.create_experiment("cluster-smoke"))
    client.log_text(run.info.run_id, "hello", "notes/hello.txt")
    bucket, prefix = cluster.artifact_root.removeprefix("s3://").split("/", 1)
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    keys = [item["Key"] for item in listed.get("Contents", [])]
    assert any(key.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt") for key in keys), keys
    # Every listening socket of the cluster is on 127.0.0.1 only.
    listening = [
        conn.laddr
        for process in cluster_processes(cluster)
        for conn in _connections(process)
        if conn.status == psutil.CONN_LISTEN
    ]
    ports = {addr.port for addr in listening}
    assert {cluster.ports["dashboard_port"], cluster.ports["mlflow_port"]} <= ports
    assert {addr.ip.removeprefix("::ffff:") for addr in listening} == {"127.0.0.1"}, listening
    assert Path(cluster.token_path).stat().st_mode & 0o077 == 0, "token file must be owner-only"


def _connections(process: psutil.Process) -> list:
    try:
        return process.net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def test_jobs_api_refuses_requests_without_the_token(cluster, monkeypatch, tmp_path, capsys):
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    url = f"{cluster.dashboard_url}/api/jobs/"
    assert http_get(url)[0] == 401
    wrong = urllib.request.Request(url, headers={"Authorization": "Bearer not-the-token"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(wrong, timeout=5)
    assert refused.value.code == 403
    # The SDK path: `facs submit` to the cluster's address with no token anywhere is refused.
    code = facs(
        [
            "submit",
            "--address",
            cluster.dashboard_url,
            "--run-dir",
            str(tmp_path),
            "corpus",
            "--help",
        ]
    )
    assert code == 2
    assert "refused" in capsys.readouterr().err
    # ... and nothing was run.
    token = Path(cluster.token_path).read_text().strip()
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read()) == []


def test_submit_runs_a_stage_streams_its_logs_and_exits_0(cluster, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FACS_STORAGE_ROOT", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-forward-me")
    argv = ["submit", "--run-dir", cluster.run_dir, "--submission-id", "ok-job", "corpus", "--help"]
    assert facs(argv) == 0
    out = capsys.readouterr().out
    assert "usage: facs corpus" in out  # the job's own output, streamed back
    assert "SUCCEEDED" in out
    token = Path(cluster.token_path).read_text().strip()
    assert token not in out
    # Settings reached the job as env vars; the secret did not travel.
    from cluster.submit import job_client, resolve_target

    info = job_client(resolve_target(None, cluster.run_dir)).get_job_info("ok-job")
    env_vars = info.runtime_env["env_vars"]
    assert env_vars["MLFLOW_TRACKING_URI"] == cluster.mlflow_url
    assert env_vars["FACS_STORAGE_ROOT"] == cluster.storage_root == f"{cluster.run_dir}/runs"
    assert env_vars["AWS_REGION"] == "eu-west-1"
    assert "AWS_SECRET_ACCESS_KEY" not in env_vars
    assert "do-not-forward-me" not in json.dumps(info.runtime_env)
    assert info.entrypoint == "python -m cluster.cli corpus --help"


def test_the_tiny_demo_runs_as_a_ray_job_and_leaves_its_runs_in_the_clusters_mlflow(
    cluster, monkeypatch, tmp_path, capsys
):
    """The integration path: `facs submit demo` on the local cluster -> SUCCEEDED -> through the
    cluster's MLflow server: the pre-training run, both CV parents with 3 fold children, their
    metrics and both registered models."""
    from mlflow_helpers import check_demo_runs

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workdir = tmp_path / "demo"
    argv = ["submit", "--run-dir", cluster.run_dir, "--submission-id", "demo-job"]
    argv += ["demo", "--scale", "tiny", "--workdir", str(workdir)]
    assert facs(argv) == 0, capsys.readouterr().out[-3000:]
    out = capsys.readouterr().out
    assert "SUCCEEDED" in out and "Table III" in out
    summary = json.loads((workdir / "demo-summary.json").read_text())
    assert summary["tracking_uri"] == cluster.mlflow_url  # the job logged to the cluster's server
    check_demo_runs(cluster.mlflow_url, argparse.Namespace(**summary))


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> str:
    """A labelled corpus on this machine's disk (where the local cluster's jobs read it)."""
    return make_corpus(tmp_path_factory.mktemp("cluster-corpus") / "corpus", images=64).uri


def finished_run(url: str, experiment: str, run_name: str) -> dict:
    """The one run of ``experiment`` tagged ``facs.run_name = run_name``, through the REST API."""
    try:
        found = rest(url, "experiments/get-by-name", experiment_name=experiment)["experiment"]
    except urllib.error.HTTPError as error:
        pytest.fail(f"no experiment {experiment!r} on the cluster's MLflow server {url}: {error}")
    body = {"experiment_ids": [found["experiment_id"]], "max_results": 50}
    body["filter"] = f"tags.`facs.run_name` = '{run_name}'"
    runs = rest(url, "runs/search", body).get("runs", [])
    assert len(runs) == 1, runs
    assert runs[0]["info"]["status"] == "FINISHED"
    return runs[0]


def metric_names(run: dict) -> set[str]:
    return {metric["key"] for metric in run["data"].get("metrics", [])}


def registered_version_of(url: str, name: str, run_id: str) -> dict:
    """The registered version of model ``name`` that run ``run_id`` logged."""
    versions = rest(url, "model-versions/search", filter=f"name='{name}' and run_id='{run_id}'")
    assert len(versions.get("model_versions", [])) == 1, versions
    return versions["model_versions"][0]


def kept_under(folder: Path, cluster: ClusterState) -> None:
    """``folder`` exists under the cluster's run storage, far from any job's working dir."""
    assert folder.is_dir(), f"{folder} is missing"
    assert folder.resolve().is_relative_to(Path(cluster.storage_root).resolve())
    assert not folder.resolve().is_relative_to(Path(cluster.ray_temp_dir).resolve())
    assert "runtime_resources" not in folder.resolve().parts


def test_submitted_pretraining_logs_to_the_clusters_mlflow_and_keeps_its_checkpoints(
    cluster, tiny_corpus, monkeypatch, capsys
):
    """No --mlflow-uri, no --storage-path: the run and the model go to the cluster's MLflow
    server, the checkpoints to its run storage (FACS_STORAGE_ROOT), not the job's working dir."""
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "FACS_STORAGE_ROOT"):
        monkeypatch.delenv(name, raising=False)
    argv = ["submit", "--run-dir", cluster.run_dir, "--submission-id", "pretrain-job", "pretrain"]
    argv += ["--corpus", tiny_corpus, "--run-name", "job-pretrain", *TINY_PRETRAIN]
    assert facs(argv) == 0, capsys.readouterr().out[-3000:]
    assert "SUCCEEDED" in capsys.readouterr().out

    run = finished_run(cluster.mlflow_url, "facs-pretrain", "job-pretrain")
    assert {"train_loss", "val_loss", "final_best_val_loss"} <= metric_names(run)
    params = {param["key"]: param["value"] for param in run["data"]["params"]}
    run_dir = Path(cluster.storage_root) / "pretrain" / "job-pretrain"
    assert params["storage_path"] == str(run_dir.parent)
    version = registered_version_of(
        cluster.mlflow_url, "facs-vgg13-pretrained", run["info"]["run_id"]
    )
    checkpoint = Path({t["key"]: t["value"] for t in version["tags"]}["checkpoint"])
    assert checkpoint.parent == run_dir and (run_dir / "facs_run.json").is_file()
    kept_under(checkpoint, cluster)
    KEPT["pretrain checkpoint"] = checkpoint
    MODELS["pretrain"] = f"models:/facs-vgg13-pretrained/{version['version']}"


def test_submitted_finetuning_from_the_registered_model_keeps_runs_model_and_checkpoints(
    cluster, tmp_path_factory, monkeypatch, capsys
):
    """The job loads the pre-training job's registered model through the cluster's MLflow
    server, logs the CV parent and its fold run there, registers the DISFA model, and keeps
    the fold checkpoints and the report in the run storage."""
    from pipeline.synth.disfa_world import generate_disfa

    if "pretrain" not in MODELS:
        pytest.skip("needs the pre-training job's registered model")
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "FACS_STORAGE_ROOT"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path_factory.mktemp("cluster-disfa")
    world = generate_disfa(str(folder / "world"), subjects=6, frames=20, seed=3)
    argv = ["submit", "--run-dir", cluster.run_dir, "--submission-id", "finetune-job", "finetune"]
    argv += ["--disfa", world.out, "--disfa-cache", str(folder / "cache")]
    argv += ["--pretrained", MODELS["pretrain"]]
    argv += ["--val-subjects", "1", "--only-folds", "1", "--max-epochs", "1"]
    argv += ["--batches-per-epoch", "1", "--batch-size", "8", "--no-plots"]
    argv += ["--run-name", "job-finetune"]
    assert facs(argv) == 0, capsys.readouterr().out[-3000:]
    assert "LP-Net" in capsys.readouterr().out  # Table III, printed by the job

    url = cluster.mlflow_url
    parent = finished_run(url, "facs-finetune", "job-finetune")
    assert (
        0.0
        <= {m["key"]: m["value"] for m in parent["data"]["metrics"]}["test_pooled_f1_mean"]
        <= 1.0
    )
    body = {"experiment_ids": [parent["info"]["experiment_id"]], "max_results": 50}
    body["filter"] = f"tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'"
    children = rest(url, "runs/search", body)["runs"]
    assert [c["info"]["status"] for c in children] == ["FINISHED"]
    assert {"val_loss", "test_f1_mean"} <= metric_names(children[0])
    version = registered_version_of(url, "facs-vgg13-disfa", parent["info"]["run_id"])
    tags = {t["key"]: t["value"] for t in version["tags"]}
    assert tags["init_source"] == MODELS["pretrain"]
    run_dir = Path(cluster.storage_root) / "finetune" / "job-finetune"
    checkpoint = Path(tags["checkpoint"])
    assert checkpoint.is_relative_to(run_dir / "pretrained-fold1")
    kept_under(checkpoint, cluster)
    kept_under(run_dir / "report", cluster)
    KEPT["finetune checkpoint"] = checkpoint
    KEPT["finetune report"] = run_dir / "report"


def test_jobs_refuse_outputs_that_would_land_in_their_temporary_working_dir(
    cluster, tiny_corpus, monkeypatch, capsys
):
    """A relative --storage-path in a job, and a job with no run storage at all, are refused
    before any work, naming the flag (the job's own exit status 2)."""
    import io

    from cluster.submit import build_runtime_env, follow, job_client, resolve_target

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = ["submit", "--run-dir", cluster.run_dir, "--submission-id", "relative-job", "pretrain"]
    argv += ["--corpus", tiny_corpus, "--storage-path", "runs/here", *TINY_PRETRAIN]
    assert facs(argv) == 2
    out = capsys.readouterr().out
    assert "--storage-path runs/here is " in out and "_ray_pkg_" in out
    assert "inside this Ray job's temporary working directory" in out

    target = resolve_target(None, cluster.run_dir)
    runtime_env = build_runtime_env(target)
    runtime_env["env_vars"]["FACS_STORAGE_ROOT"] = ""  # as on a cluster that sets none
    client = job_client(target)
    client.submit_job(
        entrypoint=f"python -m cluster.cli pretrain --corpus {tiny_corpus}",
        runtime_env=runtime_env,
        submission_id="no-storage-job",
    )
    logs = io.StringIO()
    assert follow(client, "no-storage-job", logs) == 2
    assert "pretrain runs as a Ray job (no-storage-job)" in logs.getvalue()
    assert "Pass --storage-path" in logs.getvalue()
    assert "Traceback" not in logs.getvalue()


def test_the_readme_ray_job_submit_command_works_with_the_printed_environment(cluster, tiny_corpus):
    """`eval "$(facs cluster status | grep ^export)"; ray job submit --working-dir . ...`: a
    pre-training with no storage or MLflow flags, logged to the cluster's server and kept."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "FACS_"))}
    for line in client_env_lines(cluster):
        key, value = line.removeprefix("export ").split("=", 1)
        env[key] = value
    assert env["FACS_STORAGE_ROOT"] == cluster.storage_root
    command = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--working-dir", "."]
    command += ["--runtime-env", "cluster/runtime_env.yaml", "--", "python", "-m", "cluster.cli"]
    command += ["pretrain", "--corpus", tiny_corpus, "--run-name", "readme-pretrain"]
    command += [*TINY_PRETRAIN, "--register-as", ""]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert Path(cluster.token_path).read_text().strip() not in done.stdout + done.stderr
    run = finished_run(cluster.mlflow_url, "facs-pretrain", "readme-pretrain")
    assert {"train_loss", "val_loss"} <= metric_names(run)
    run_dir = Path(cluster.storage_root) / "pretrain" / "readme-pretrain"
    checkpoints = sorted(state.parent for state in run_dir.glob("*/training_state.pt"))
    assert checkpoints, f"no checkpoint under {run_dir}: {sorted(run_dir.rglob('*'))}"
    kept_under(checkpoints[-1], cluster)
    KEPT["readme checkpoint"] = checkpoints[-1]


def test_a_failing_job_returns_its_exit_status_and_shows_its_error(cluster, capsys):
    argv = ["submit", "--run-dir", cluster.run_dir, "--submission-id", "bad-job"]
    argv += ["pretrain", "--corpus", "/nonexistent/corpus"]
    assert facs(argv) == 2  # the exit status of `facs pretrain` inside the job
    out = capsys.readouterr().out
    assert "no corpus at /nonexistent/corpus" in out
    assert "FAILED" in out
    assert facs(["cluster", "status", "--run-dir", cluster.run_dir]) == 0  # still healthy
    # Nothing of the failed job reached the registry: only the demo job's two models are there.
    from mlflow import MlflowClient

    names = {m.name for m in MlflowClient(cluster.mlflow_url).search_registered_models()}
    assert names == {"facs-vgg13-pretrained", "facs-vgg13-disfa"}
    assert facs(["jobs", "list", "--run-dir", cluster.run_dir]) == 0
    listing = capsys.readouterr().out
    assert any(line.startswith("ok-job") and "SUCCEEDED" in line for line in listing.splitlines())
    assert any(line.startswith("bad-job") and "FAILED" in line for line in listing.splitlines())


def test_jobs_stop_stops_a_running_job(cluster, capsys):
    from cluster.submit import job_client, resolve_target

    client = job_client(resolve_target(None, cluster.run_dir))
    client.submit_job(entrypoint="sleep 120", submission_id="long-job")
    deadline = time.monotonic() + 60
    while str(client.get_job_status("long-job").value) != "RUNNING":
        assert time.monotonic() < deadline, "the sleep job never started"
        time.sleep(0.5)
    assert facs(["jobs", "stop", "--run-dir", cluster.run_dir, "long-job"]) == 0
    while str(client.get_job_status("long-job").value) != "STOPPED":
        assert time.monotonic() < deadline, "the job did not stop"
        time.sleep(0.5)


def test_down_stops_every_process_up_started_and_frees_the_ports(cluster):
    processes = cluster_processes(cluster)
    pids = {process.pid for process in processes}
    assert {cluster.ray.pid, cluster.mlflow.pid} <= pids
    assert len(pids) >= 5  # ray start, gcs_server, raylet, dashboard, mlflow server, ...
    assert facs(["cluster", "down", "--run-dir", cluster.run_dir]) == 0
    alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"
    assert not cluster_processes(cluster)
    busy = {name: port for name, port in cluster.ports.items() if not port_is_free(port)}
    assert not busy, f"ports still in use after down: {busy}"
    assert not (Path(cluster.run_dir) / "cluster.json").exists()
    assert not Path(cluster.token_path).exists()
    # What the jobs ran is still there: checkpoints and reports in the run storage.
    assert KEPT, "the jobs above recorded nothing to check"
    missing = {name: str(path) for name, path in KEPT.items() if not path.exists()}
    assert not missing, f"gone after `facs cluster down`: {missing}"
