"""Run a facs stage as a Ray job through the Jobs API: upload the project, pass settings as
environment, stream the logs, hand back the job's exit status; list, follow and stop jobs.

Settings travel as runtime-env environment variables, never on the command line. Credentials
(AWS keys, MLflow passwords) stay behind unless the user opts in with ``forward_credentials``:
on AWS / Kubernetes the nodes get S3 access from their instance profile / service account, and the
local cluster inherits the environment `facs cluster up` was started in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml

from cluster.auth import AuthToken, resolve_token
from cluster.local_cluster import ClusterError, ClusterState
from pipeline.environment import environment
from pipeline.run_storage import STORAGE_ROOT_ENV

RUNTIME_ENV_FILE = Path(__file__).with_name("runtime_env.yaml")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Non-secret settings a stage needs on the cluster, passed when set here.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    STORAGE_ROOT_ENV,
    "MLFLOW_EXPERIMENT_NAME",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
# Secrets: forwarded only with forward_credentials=True (they are then stored with the job).
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)
_ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class SubmitError(RuntimeError):
    """A job could not be submitted, found or followed."""


@dataclass(frozen=True)
class JobTarget:
    """The Jobs API to talk to, the token to show it, the MLflow server jobs should log to, and
    the run storage they keep their runs and checkpoints in."""

    address: str
    token: AuthToken | None
    mlflow_uri: str | None
    local_cluster: ClusterState | None = None
    storage_root: str | None = None


def _http(address: str) -> str:
    address = address.rstrip("/")
    return address if "://" in address else f"http://{address}"


def resolve_target(
    address: str | None = None,
    run_dir: str | Path = ".facs-cluster",
    mlflow_uri: str | None = None,
    storage_root: str | None = None,
) -> JobTarget:
    """Where jobs go: ``address``, else RAY_API_SERVER_ADDRESS / an http RAY_ADDRESS, else the
    local cluster recorded in ``run_dir``; the token from Ray's standard sources (the local
    cluster's token file when the target is that cluster). The MLflow server and the run storage
    jobs get: the arguments, else MLFLOW_TRACKING_URI / FACS_STORAGE_ROOT here, else the local
    cluster's."""
    state = None
    with contextlib.suppress(ClusterError):
        state = ClusterState.load(Path(run_dir).expanduser().resolve())
    if not address:
        address = os.environ.get("RAY_API_SERVER_ADDRESS") or (
            os.environ.get("RAY_ADDRESS", "") if "://" in os.environ.get("RAY_ADDRESS", "") else ""
        )
    if not address:
        if state is None:
            raise SubmitError(
                f"no Ray cluster to submit to: pass --address http://HEAD:8265, set RAY_ADDRESS, "
                f"or start a local one with `facs cluster up` (no state found in {run_dir})"
            )
        address = state.dashboard_url
    address = _http(address)
    if state is not None and state.dashboard_url != address:
        state = None  # the recorded local cluster is not the one we talk to
    token = resolve_token(state.token_path if state else None)
    mlflow_uri = (
        mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or (state.mlflow_url if state else None)
    )
    storage_root = (
        storage_root
        or os.environ.get(STORAGE_ROOT_ENV)
        or (state.storage_root if state and state.storage_root else None)
    )
    return JobTarget(address, token, mlflow_uri, state, storage_root)


def job_client(target: JobTarget):
    """A JobSubmissionClient that sends the target's token (explicitly: this process need not
    run with RAY_AUTH_MODE=token for Ray to attach it)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    headers = target.token.http_headers() if target.token else None
    try:
        # Ray's client lets these override the address it is given; ours was already chosen.
        with environment(**dict.fromkeys(_ADDRESS_ENV)):
            return JobSubmissionClient(target.address, headers=headers)
    except AuthenticationError:
        raise SubmitError(_refused(target)) from None
    except ConnectionError as error:
        raise SubmitError(f"cannot reach the Ray Jobs API at {target.address}: {error}") from None


def _refused(target: JobTarget) -> str:
    where = (
        f"the token from {target.token.source}"
        if target.token
        else "no token (looked in $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)"
    )
    return f"the Ray cluster at {target.address} refused the request with {where}"


def build_runtime_env(
    target: JobTarget,
    *,
    working_dir: str | Path = PROJECT_ROOT,
    runtime_env_file: str | Path = RUNTIME_ENV_FILE,
    forward_credentials: bool = False,
) -> dict:
    """The runtime env: the YAML file's settings, the working dir, and the forwarded variables."""
    path = Path(runtime_env_file)
    runtime_env = yaml.safe_load(path.read_text()) or {}
    if not isinstance(runtime_env, dict):
        raise SubmitError(f"{path}: expected a YAML mapping of runtime-env fields")
    working_dir = Path(working_dir).expanduser().resolve()
    if not working_dir.is_dir():
        raise SubmitError(f"working dir {working_dir} is not a directory")
    runtime_env["working_dir"] = str(working_dir)
    excludes = list(runtime_env.get("excludes") or [])
    if target.local_cluster is not None:
        run_dir = Path(target.local_cluster.run_dir)
        if run_dir.is_relative_to(working_dir):  # never upload the cluster's token and logs
            excludes.append("/" + run_dir.relative_to(working_dir).as_posix() + "/")
    runtime_env["excludes"] = excludes
    env_vars = {str(k): str(v) for k, v in (runtime_env.get("env_vars") or {}).items()}
    names = FORWARDED_ENV + (CREDENTIAL_ENV if forward_credentials else ())
    env_vars.update({name: os.environ[name] for name in names if os.environ.get(name)})
    if target.mlflow_uri:
        env_vars["MLFLOW_TRACKING_URI"] = target.mlflow_uri
    if target.storage_root:
        env_vars[STORAGE_ROOT_ENV] = target.storage_root
    runtime_env["env_vars"] = env_vars
    return runtime_env


def stage_entrypoint(stage_args: list[str]) -> str:
    """The shell command the job runs: the facs CLI from the uploaded working dir."""
    if not stage_args:
        raise SubmitError(
            "name the stage to run, e.g. `facs submit corpus stats --corpus s3://...`"
        )
    return shlex.join(["python", "-m", "cluster.cli", *stage_args])


async def _tail(client, job_id: str, out: TextIO) -> None:
    async for lines in client.tail_job_logs(job_id):
        out.write(lines)
        out.flush()


def follow(client, job_id: str, out: TextIO | None = None, poll_s: float = 1.0) -> int:
    """Stream a job's logs until it ends; its exit status (0 when it SUCCEEDED)."""
    out = out or sys.stdout
    try:
        asyncio.run(_tail(client, job_id, out))
    except Exception as error:  # the log stream is a convenience: fall back to polling
        print(f"facs: log stream interrupted ({error}); waiting for the job", file=sys.stderr)
    while str(client.get_job_status(job_id).value) not in _TERMINAL:
        time.sleep(poll_s)
    return job_exit_code(client, job_id)


def job_exit_code(client, job_id: str) -> int:
    info = client.get_job_info(job_id)
    status = str(info.status.value)
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return 130
    code = info.driver_exit_code
    return code if isinstance(code, int) and code > 0 else 1


def submit(
    target: JobTarget,
    stage_args: list[str],
    *,
    working_dir: str | Path = PROJECT_ROOT,
    runtime_env_file: str | Path = RUNTIME_ENV_FILE,
    forward_credentials: bool = False,
    wait: bool = True,
    submission_id: str | None = None,
    out: TextIO | None = None,
) -> tuple[str, int | None]:
    """Submit ``facs <stage_args>`` as a Ray job; the job id and, when waiting, its exit status."""
    out = out or sys.stdout
    from ray.exceptions import AuthenticationError

    entrypoint = stage_entrypoint(stage_args)
    runtime_env = build_runtime_env(
        target,
        working_dir=working_dir,
        runtime_env_file=runtime_env_file,
        forward_credentials=forward_credentials,
    )
    client = job_client(target)
    submission_id = submission_id or f"facs-{stage_args[0]}-{uuid.uuid4().hex[:8]}"
    try:
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env=runtime_env,
            submission_id=submission_id,
            metadata={"facs_stage": " ".join(stage_args[:2])},
        )
    except AuthenticationError:
        raise SubmitError(_refused(target)) from None
    auth = f"token from {target.token.source}" if target.token else "no token"
    print(f"facs: submitted job {job_id} to {target.address} ({auth}): {entrypoint}", file=out)
    if target.mlflow_uri:
        print(f"facs: the job logs to MLflow at {target.mlflow_uri}", file=out)
    if target.storage_root:
        print(f"facs: the job keeps its runs under {target.storage_root} by default", file=out)
    out.flush()
    if not wait:
        return job_id, None
    try:
        code = follow(client, job_id, out)
    except KeyboardInterrupt:
        print(
            f"\nfacs: job {job_id} keeps running; stop it with `facs jobs stop {job_id}`", file=out
        )
        return job_id, 130
    info = client.get_job_info(job_id)
    print(f"facs: job {job_id} {info.status.value} (exit status {code})", file=out)
    if code and info.message:
        print(f"facs: {info.message}", file=out)
    return job_id, code


def list_jobs(target: JobTarget) -> list[dict]:
    """One row per job: id, status, times, entrypoint (never the runtime env: it may hold keys)."""
    rows = []
    for job in job_client(target).list_jobs():
        rows.append(
            {
                "job_id": job.submission_id or job.job_id,
                "status": str(job.status.value),
                "start_time": job.start_time,
                "end_time": job.end_time,
                "entrypoint": job.entrypoint,
            }
        )
    return sorted(rows, key=lambda row: row["start_time"] or 0)


def stop_job(target: JobTarget, job_id: str) -> bool:
    return bool(job_client(target).stop_job(job_id))


def format_jobs(rows: list[dict]) -> str:
    if not rows:
        return "no jobs"
    lines = [f"{'JOB':32} {'STATUS':10} {'STARTED':19} ENTRYPOINT"]
    for row in rows:
        started = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["start_time"] / 1000))
            if row["start_time"]
            else "-"
        )
        lines.append(f"{row['job_id']:32} {row['status']:10} {started:19} {row['entrypoint']}")
    return "\n".join(lines)
