"""Where a stage's runs, checkpoints and outputs go when no flag says: never into a Ray job's
temporary working directory.

A Ray job runs its entrypoint in a copy of the uploaded working dir
(``<ray temp>/session_.../runtime_resources/working_dir_files/_ray_pkg_<hash>/``), which Ray
deletes when it garbage-collects the package and at the latest with the cluster. Relative paths,
and the local defaults (``./runs/<stage>``, ``./mlflow.db``), land there. So:

- with ``FACS_STORAGE_ROOT`` set (``facs cluster up`` sets it for its jobs, as it sets
  ``MLFLOW_TRACKING_URI``; ``facs submit`` forwards yours), a stage's default is
  ``$FACS_STORAGE_ROOT/<stage>``, on this machine or a cluster;
- without it, a stage running as a Ray job refuses to pick a default and names the flag to give;
- a path that lies inside the job's temporary working dir is refused, given or defaulted;
- on a Ray cluster with nodes on other machines, a local default is refused too (after Ray has
  started: only then are the nodes known), since each node would write to its own disk.

Ray's job supervisor marks a job's driver with ``RAY_JOB_CONFIG_JSON_ENV_VAR`` (the job's runtime
env and submission id, as JSON): that is how a stage knows, before it starts Ray, that it is one.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from pipeline.storage import is_s3

#: The cluster's run storage: a folder or ``s3://`` prefix under which stages put their runs.
STORAGE_ROOT_ENV = "FACS_STORAGE_ROOT"
#: Set by Ray's job supervisor in the environment of every job's entrypoint.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
#: The folder under Ray's session dir that holds unpacked working dirs and other runtime envs.
RUNTIME_RESOURCES = "runtime_resources"


class RunStorageError(ValueError):
    """An output location that would be lost, or that a stage cannot choose by itself."""


@dataclass(frozen=True)
class RayJob:
    """This process is the entrypoint of a Ray job."""

    submission_id: str | None
    #: The job's temporary copy of its uploaded working dir (its cwd), when it has one.
    working_dir: Path | None


def current_ray_job() -> RayJob | None:
    """The Ray job this process runs as (from the variable Ray's job supervisor sets), or None."""
    raw = os.environ.get(RAY_JOB_ENV)
    if raw is None:
        return None
    try:
        config = json.loads(raw) or {}
    except json.JSONDecodeError:
        config = {}
    metadata = config.get("metadata") or {}
    runtime_env = config.get("runtime_env") or {}
    cwd = Path.cwd().resolve()
    temporary = bool(runtime_env.get("working_dir")) or RUNTIME_RESOURCES in cwd.parts
    return RayJob(metadata.get("job_submission_id"), cwd if temporary else None)


def storage_root() -> str | None:
    """``$FACS_STORAGE_ROOT``, made absolute when it is a local path; None when unset."""
    root = os.environ.get(STORAGE_ROOT_ENV, "").strip()
    if not root:
        return None
    if is_s3(root) or "://" in root:
        return root.rstrip("/")
    path = Path(root).expanduser()
    if not path.is_absolute():
        raise RunStorageError(
            f"{STORAGE_ROOT_ENV}={root!r}: expected an absolute folder or an s3:// prefix "
            "(a relative one would move with each process's working directory)"
        )
    return str(path)


def temporary_folder(path: str | os.PathLike) -> Path | None:
    """The Ray temporary folder that a local ``path`` lies in (a job's working dir or any
    runtime-env folder), or None when it is kept."""
    if "://" in str(path):
        return None
    resolved = Path(path).expanduser().resolve()
    job = current_ray_job()
    if job is not None and job.working_dir is not None and resolved.is_relative_to(job.working_dir):
        return job.working_dir
    parts = resolved.parts
    if RUNTIME_RESOURCES in parts:
        return Path(*parts[: parts.index(RUNTIME_RESOURCES) + 1])
    return None


def check_kept(uri: str, flag: str, given: str | None = None) -> str:
    """``uri`` unchanged, unless it is a local path inside a Ray job's temporary folder
    (``given``: what the user wrote, when ``uri`` was derived from it)."""
    folder = temporary_folder(uri)
    if folder is not None:
        resolved = Path(uri).expanduser().resolve()
        raise RunStorageError(
            f"{flag} {given or uri} is {resolved}, inside this Ray job's temporary working directory "
            f"({folder}), which Ray deletes after the job: give an absolute path on storage the "
            f"cluster keeps, or an s3:// URI"
            + (
                f" (or set {STORAGE_ROOT_ENV} and leave {flag} out)"
                if storage_root() is None
                else ""
            )
        )
    return uri


def default_output(stage: str, flag: str, local_default: str) -> str:
    """Where ``stage`` writes when ``flag`` is not given.

    ``$FACS_STORAGE_ROOT/<stage>`` when that is set; else, in a Ray job, a refusal naming
    ``flag``; else ``local_default`` (relative to the working directory, made absolute).
    """
    root = storage_root()
    if root is not None:
        if "://" in root:
            return posixpath.join(root, stage)
        return check_kept(str(Path(root) / stage), STORAGE_ROOT_ENV)
    job = current_ray_job()
    if job is not None:
        where = (
            "the job's temporary working directory, which Ray deletes after the job"
            if job.working_dir is not None
            else f"{Path.cwd()}, a folder of whichever node runs the job's driver"
        )
        raise RunStorageError(
            f"{stage} runs as a Ray job ({job.submission_id or 'no submission id'}) and no "
            f"{flag} was given: the local default {local_default} would be in {where}. Pass "
            f"{flag} (a folder the cluster keeps, or s3://...), or set {STORAGE_ROOT_ENV} for "
            "the cluster's jobs (`facs cluster up` does)"
        )
    return check_kept(str(Path(local_default).expanduser().resolve()), flag)


def output_location(given: str | None, stage: str, flag: str, local_default: str) -> str:
    """The output location of a stage: ``given`` (checked to be kept), or its default."""
    if given:
        return check_kept(given, flag)
    return default_output(stage, flag, local_default)


def cluster_nodes_elsewhere() -> list[str]:
    """Addresses of the connected Ray cluster's live nodes that are not this machine."""
    import psutil
    import ray

    mine = {"127.0.0.1", "localhost", "::1"}
    for addresses in psutil.net_if_addrs().values():
        mine.update(address.address.split("%")[0] for address in addresses)
    return sorted(
        {
            node["NodeManagerAddress"]
            for node in ray.nodes()
            if node.get("Alive") and node.get("NodeManagerAddress") not in mine
        }
    )


def check_defaults_reachable(defaults: dict[str, str | None]) -> None:
    """After Ray has started: refuse *default* local locations (``{flag: path or None}``) on a
    cluster with nodes on other machines: each node would write to its own disk, and the driver
    would find nothing. Given paths are trusted (they may be a shared folder)."""
    local = {flag: path for flag, path in defaults.items() if path and "://" not in path}
    if not local:
        return
    others = cluster_nodes_elsewhere()
    if others:
        flag, path = next(iter(local.items()))
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise RunStorageError(
            f"the Ray cluster has nodes on other machines ({shown}), so the default of {flag}, "
            f"{path} (a folder of this machine), would not hold what they write: pass {flag} "
            f"(s3://... or a shared folder), or set {STORAGE_ROOT_ENV} (and MLFLOW_TRACKING_URI)"
        )
