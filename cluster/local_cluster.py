"""A Ray head and an MLflow server on this machine (127.0.0.1 only, Ray token auth on), started and
stopped as one unit: PIDs, ports, logs and the token live under one run directory.

``down`` stops exactly what ``up`` started: the recorded processes, their descendants and any process
carrying this cluster's id in its environment; never ``ray stop``, which would end every Ray on the
machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from cluster.auth import TOKEN_ENV, TokenError, ensure_token_file, read_token_file, token_auth_env
from pipeline.options import option
from pipeline.run_storage import STORAGE_ROOT_ENV

HOST = "127.0.0.1"
STATE_FILE = "cluster.json"
CLUSTER_ID_ENV = "FACS_CLUSTER_ID"
# Ray puts Unix sockets under <temp dir>/session_<date>_<pid>/sockets/...; Linux caps a socket path
# at 107 bytes, so a deep run directory gets its Ray temp dir under the system temp dir instead.
_MAX_RAY_TEMP_DIR_CHARS = 40


class ClusterError(RuntimeError):
    """The local cluster cannot be started, reached or found."""


@dataclass
class LocalClusterConfig:
    """Where and how `facs cluster up` runs the Ray head and the MLflow server."""

    run_dir: str = option(
        ".facs-cluster", "directory for the state file, PIDs, logs, token and MLflow store"
    )
    ray_port: int = option(6379, "Ray GCS port")
    dashboard_port: int = option(8265, "Ray dashboard / Jobs API port (127.0.0.1 only)")
    client_server_port: int = option(
        10001, "Ray Client server port (when ray[client] is installed)"
    )
    dashboard_agent_port: int = option(52365, "Ray dashboard agent HTTP port")
    mlflow_port: int = option(5000, "MLflow tracking server port")
    artifact_root: str | None = option(
        None,
        "where the MLflow server stores artifacts: a path or s3://bucket/prefix "
        "(default: <run_dir>/mlartifacts)",
    )
    storage_root: str | None = option(
        None,
        "where jobs put runs, checkpoints and reports by default (FACS_STORAGE_ROOT): "
        "a folder or s3://bucket/prefix (default: <run_dir>/runs); kept by `down`",
    )
    num_cpus: int | None = option(None, "CPUs the Ray head offers (default: all)")
    mlflow_workers: int = option(1, "MLflow server worker processes")
    start_timeout_s: float = option(120.0, "seconds to wait for both services to become healthy")


@dataclass
class ServiceState:
    """One started service: its process, address and log file."""

    pid: int
    url: str
    log: str


@dataclass
class ClusterState:
    """What `up` started; written to <run_dir>/cluster.json and read by `status`, `down`, `submit`."""

    cluster_id: str
    run_dir: str
    token_path: str
    ray: ServiceState
    mlflow: ServiceState
    gcs_address: str
    ray_temp_dir: str
    ports: dict[str, int]
    artifact_root: str
    backend_store_uri: str
    started_at: float
    #: FACS_STORAGE_ROOT of the cluster's jobs (empty in state files of older versions).
    storage_root: str = ""

    @property
    def dashboard_url(self) -> str:
        return self.ray.url

    @property
    def mlflow_url(self) -> str:
        return self.mlflow.url

    def save(self) -> None:
        path = Path(self.run_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, run_dir: str | Path) -> ClusterState:
        path = Path(run_dir) / STATE_FILE
        if not path.is_file():
            raise ClusterError(
                f"no local cluster state at {path}: start one with `facs cluster up` "
                f"(or pass the --run-dir it was started with)"
            )
        data = json.loads(path.read_text())
        data["ray"] = ServiceState(**data["ray"])
        data["mlflow"] = ServiceState(**data["mlflow"])
        return cls(**data)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _check_ports(config: LocalClusterConfig) -> dict[str, int]:
    ports = {
        "ray_port": config.ray_port,
        "dashboard_port": config.dashboard_port,
        "client_server_port": config.client_server_port,
        "dashboard_agent_port": config.dashboard_agent_port,
        "mlflow_port": config.mlflow_port,
    }
    if len(set(ports.values())) != len(ports):
        raise ClusterError(f"the cluster's ports must all differ, got {ports}")
    for name, port in ports.items():
        if not port_is_free(port):
            flag = "--" + name.replace("_", "-")
            raise ClusterError(
                f"port {port} on {HOST} ({name}) is in use: stop what holds it or choose "
                f"another with {flag}"
            )
    return ports


def _ray_temp_dir(run_dir: Path) -> Path:
    inside = run_dir / "ray"
    if len(str(inside)) <= _MAX_RAY_TEMP_DIR_CHARS:
        return inside
    digest = hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]
    outside = Path(tempfile.gettempdir()) / f"facs-ray-{digest}"
    outside.mkdir(parents=True, exist_ok=True)
    if not inside.is_symlink() and not inside.exists():
        inside.symlink_to(outside, target_is_directory=True)
    return outside


def _service_env(cluster_id: str, token_path: Path) -> dict[str, str]:
    """The caller's environment (AWS settings included) minus anything pointing at another Ray."""
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", TOKEN_ENV):
        env.pop(key, None)
    env.update(token_auth_env(token_path))
    env[CLUSTER_ID_ENV] = cluster_id
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    # Jobs run `python -m ...` through a shell: let it find this interpreter (and `facs`) first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: a Ctrl-C in our shell leaves it be
            close_fds=True,
        )


def _ray_head_command(config: LocalClusterConfig, temp_dir: Path) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        f"--node-ip-address={HOST}",
        f"--port={config.ray_port}",
        "--include-dashboard=true",
        f"--dashboard-host={HOST}",
        f"--dashboard-port={config.dashboard_port}",
        f"--dashboard-agent-listen-port={config.dashboard_agent_port}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    if importlib.util.find_spec("grpc") is not None:  # Ray Client (ray[client]) is installed
        command.append(f"--ray-client-server-port={config.client_server_port}")
    if config.num_cpus is not None:
        command.append(f"--num-cpus={config.num_cpus}")
    return command


def _mlflow_command(config: LocalClusterConfig, backend_uri: str, artifact_root: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        f"--host={HOST}",
        f"--port={config.mlflow_port}",
        f"--backend-store-uri={backend_uri}",
        # Artifacts go through the server (mlflow-artifacts:/), so jobs need no storage credentials.
        "--serve-artifacts",
        f"--artifacts-destination={artifact_root}",
        f"--workers={config.mlflow_workers}",
    ]


def http_get(url: str, timeout: float = 3.0, headers: dict | None = None) -> tuple[int, str]:
    """Status and body of a GET; (0, reason) when nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as error:
        return 0, str(getattr(error, "reason", error))


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie holds no port and no memory; its parent reaps it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _alive(pid: int) -> bool:
    try:
        return _running(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def _log_tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def service_health(state: ClusterState) -> dict[str, dict]:
    """Is each service's process alive and answering its health endpoint?"""
    ray_code, _ = http_get(f"{state.dashboard_url}/api/gcs_healthz")
    try:  # the Jobs API answers (it starts after the GCS) and accepts the cluster's token
        headers = read_token_file(state.token_path).http_headers()
        jobs_code, _ = http_get(f"{state.dashboard_url}/api/jobs/", headers=headers)
    except TokenError:
        jobs_code = 0
    mode_code, mode_body = http_get(f"{state.dashboard_url}/api/authentication_mode")
    auth_mode = json.loads(mode_body).get("authentication_mode") if mode_code == 200 else None
    mlflow_code, mlflow_body = http_get(f"{state.mlflow_url}/health")
    return {
        "ray": {
            "pid": state.ray.pid,
            "alive": _alive(state.ray.pid),
            "healthy": ray_code == 200 and jobs_code == 200,
            "url": state.dashboard_url,
            "gcs_address": state.gcs_address,
            "auth_mode": auth_mode,
            "log": state.ray.log,
        },
        "mlflow": {
            "pid": state.mlflow.pid,
            "alive": _alive(state.mlflow.pid),
            "healthy": mlflow_code == 200 and mlflow_body.strip() == "OK",
            "url": state.mlflow_url,
            "artifact_root": state.artifact_root,
            "log": state.mlflow.log,
        },
    }


def _wait_healthy(state: ClusterState, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        health = service_health(state)
        if all(service["healthy"] for service in health.values()):
            if health["ray"]["auth_mode"] != "token":
                raise ClusterError(
                    f"the Ray head at {state.dashboard_url} reports authentication mode "
                    f"{health['ray']['auth_mode']!r}, expected 'token'"
                )
            return
        for name, service in health.items():
            if not service["alive"]:
                raise ClusterError(
                    f"the {name} process (pid {service['pid']}) exited while starting; "
                    f"last lines of {service['log']}:\n{_log_tail(service['log'])}"
                )
        if time.monotonic() > deadline:
            sick = [name for name, service in health.items() if not service["healthy"]]
            raise ClusterError(
                f"{' and '.join(sick)} not healthy after {timeout_s:.0f} s; see the logs: "
                + ", ".join(health[name]["log"] for name in sick)
            )
        time.sleep(0.5)


def _is_running(run_dir: Path) -> ClusterState | None:
    try:
        state = ClusterState.load(run_dir)
    except ClusterError:
        return None
    return state if _alive(state.ray.pid) or _alive(state.mlflow.pid) else None


def up(config: LocalClusterConfig) -> ClusterState:
    """Start the Ray head and the MLflow server and wait until both answer; returns their state."""
    run_dir = Path(config.run_dir).expanduser().resolve()
    if _is_running(run_dir):
        raise ClusterError(
            f"a cluster from {run_dir} is already running: `facs cluster down` first"
        )
    if (run_dir / STATE_FILE).exists():
        down(run_dir)  # leftovers of a crashed cluster: clear them before reusing the ports
    ports = _check_ports(config)
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    token_path = ensure_token_file(run_dir / "auth_token")
    temp_dir = _ray_temp_dir(run_dir)
    artifact_root = config.artifact_root or str(run_dir / "mlartifacts")
    if "://" not in artifact_root:
        artifact_root = str(Path(artifact_root).expanduser().resolve())
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
    storage_root = config.storage_root or str(run_dir / "runs")
    if "://" not in storage_root:
        storage_root = str(Path(storage_root).expanduser().resolve())
        Path(storage_root).mkdir(parents=True, exist_ok=True)
    backend_uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    cluster_id = uuid.uuid4().hex
    env = _service_env(cluster_id, token_path)

    ray_log, mlflow_log = logs / "ray-head.log", logs / "mlflow-server.log"
    mlflow_url = f"http://{HOST}:{config.mlflow_port}"
    ray_env = {
        **env,
        # Jobs on this cluster log to its MLflow server and keep their runs under its run
        # storage, unless their runtime env says otherwise (never in a job's working dir).
        "MLFLOW_TRACKING_URI": mlflow_url,
        STORAGE_ROOT_ENV: storage_root,
        # Ray swaps a 127.0.0.1 node address for the machine's routable IP unless it runs as a
        # single-machine cluster (its switch for laptops): keep every Ray port on loopback.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # Workers' State API calls (Ray Train's placement-group clean-up) go to this cluster's
        # dashboard, not to whichever local Ray they would find first.
        "RAY_API_SERVER_ADDRESS": f"http://{HOST}:{config.dashboard_port}",
    }
    # The MLflow server's background job runner (GenAI jobs) is not used here: skip its workers.
    mlflow_env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    ray_process = _spawn(_ray_head_command(config, temp_dir), ray_log, ray_env)
    mlflow_process = _spawn(
        _mlflow_command(config, backend_uri, artifact_root), mlflow_log, mlflow_env
    )
    state = ClusterState(
        cluster_id=cluster_id,
        run_dir=str(run_dir),
        token_path=str(token_path),
        ray=ServiceState(ray_process.pid, f"http://{HOST}:{config.dashboard_port}", str(ray_log)),
        mlflow=ServiceState(mlflow_process.pid, mlflow_url, str(mlflow_log)),
        gcs_address=f"{HOST}:{config.ray_port}",
        ray_temp_dir=str(temp_dir),
        ports=ports,
        artifact_root=artifact_root,
        backend_store_uri=backend_uri,
        started_at=time.time(),
        storage_root=storage_root,
    )
    state.save()  # before waiting, so `down` can clean up whatever did start
    try:
        _wait_healthy(state, config.start_timeout_s)
    except BaseException:
        down(run_dir)
        raise
    return state


def cluster_processes(state: ClusterState) -> list[psutil.Process]:
    """Every live process of this cluster: the recorded ones, their descendants, and any process
    whose environment carries this cluster's id (Ray daemons and workers inherit it)."""
    found: dict[int, psutil.Process] = {}
    for pid in (state.ray.pid, state.mlflow.pid):
        try:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                found[process.pid] = process
        except psutil.NoSuchProcess:
            pass
    me = os.getpid()
    for process in psutil.process_iter():
        if process.pid in found or process.pid == me:
            continue
        try:
            if process.environ().get(CLUSTER_ID_ENV) == state.cluster_id:
                found[process.pid] = process
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return [process for process in found.values() if _running(process)]


def _signal_all(processes: list[psutil.Process], sig: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process.send_signal(sig)


def _wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until the processes have exited; those still running after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        survivors = [process for process in processes if _running(process)]
        if not survivors or time.monotonic() > deadline:
            return survivors
        time.sleep(0.2)


def down(run_dir: str | Path, grace_s: float = 5.0) -> list[int]:
    """Stop every process of the cluster started from ``run_dir``; returns their PIDs.

    SIGTERM first, SIGKILL after ``grace_s``: Ray's drain on SIGTERM can take half a minute and
    a local head keeps nothing worth draining. The state file and the token are removed (a new
    `up` makes a new token); logs, the MLflow store, artifacts and the jobs' run storage stay.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    state = ClusterState.load(run_dir)
    processes = cluster_processes(state)
    _signal_all(processes, signal.SIGTERM)
    survivors = _wait_gone(processes, grace_s)
    if survivors:
        _signal_all(survivors, signal.SIGKILL)
        _wait_gone(survivors, 5.0)
    # Late children (e.g. a worker forked while we were stopping) carry the id too.
    stragglers = cluster_processes(state)
    if stragglers:
        _signal_all(stragglers, signal.SIGKILL)
        _wait_gone(stragglers, 5.0)
    for started in (state.ray.pid, state.mlflow.pid):
        # Reap our own children, so no zombie is left when `up` and `down` share a process.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(started, os.WNOHANG)
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    Path(state.token_path).unlink(missing_ok=True)
    return sorted({process.pid for process in processes + stragglers})


def status(run_dir: str | Path) -> tuple[ClusterState, dict[str, dict]]:
    """The recorded state and the live health of each service."""
    state = ClusterState.load(Path(run_dir).expanduser().resolve())
    return state, service_health(state)


def client_env_lines(state: ClusterState) -> list[str]:
    """Shell lines that point `ray job ...`, MLflow clients and facs stages at this cluster
    (token path only)."""
    return [
        f"export RAY_ADDRESS={state.dashboard_url}",
        "export RAY_AUTH_MODE=token",
        f"export RAY_AUTH_TOKEN_PATH={state.token_path}",
        f"export MLFLOW_TRACKING_URI={state.mlflow_url}",
        *([f"export {STORAGE_ROOT_ENV}={state.storage_root}"] if state.storage_root else []),
    ]
