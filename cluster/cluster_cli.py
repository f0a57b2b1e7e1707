"""`facs cluster up|down|status`, `facs submit STAGE ...` and `facs jobs list|logs|stop`."""

from __future__ import annotations

import argparse
import json
import sys

from cluster.auth import TokenError
from cluster.local_cluster import ClusterError
from cluster.submit import SubmitError
from pipeline.options import add_config_arguments

DEFAULT_RUN_DIR = ".facs-cluster"


def _guarded(run):
    """Report cluster, token and job errors as one line and exit status 2, like the other stages."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (ClusterError, SubmitError, TokenError) as error:
            print(f"facs: error: {error}", file=sys.stderr)
            return 2

    return wrapper


def _cluster_up(args: argparse.Namespace) -> int:
    from cluster.local_cluster import LocalClusterConfig, client_env_lines, up
    from pipeline.options import load_config, overrides_from_args

    config = load_config(LocalClusterConfig, args.config, overrides_from_args(args))
    print(f"facs: starting a Ray head and an MLflow server from {config.run_dir} ...", flush=True)
    state = up(config)
    print(f"Ray dashboard / Jobs API  {state.dashboard_url}  (token auth, 127.0.0.1 only)")
    print(f"MLflow UI / tracking      {state.mlflow_url}  (artifacts: {state.artifact_root})")
    print(f"runs of jobs (default)    {state.storage_root}  (FACS_STORAGE_ROOT)")
    print(f"logs                      {state.run_dir}/logs")
    print("Submit with `facs submit STAGE ...`, or point other clients at it with:")
    print("\n".join("  " + line for line in client_env_lines(state)))
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    from cluster.local_cluster import down

    pids = down(args.run_dir)
    print(f"facs: stopped {len(pids)} processes of the cluster in {args.run_dir}")
    return 0


def _cluster_status(args: argparse.Namespace) -> int:
    from cluster.local_cluster import client_env_lines, status

    state, health = status(args.run_dir)
    if args.json:
        print(json.dumps({"run_dir": state.run_dir, **health}, indent=2))
    else:
        for name, service in health.items():
            word = "healthy" if service["healthy"] else ("running" if service["alive"] else "down")
            extra = f" auth={service['auth_mode']}" if name == "ray" else ""
            print(f"{name:7} {word:8} pid {service['pid']:<8} {service['url']}{extra}")
        print("\n".join(client_env_lines(state)))
    return 0 if all(service["healthy"] for service in health.values()) else 1


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Ray Jobs API, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, an http "
        "RAY_ADDRESS, or the local cluster in --run-dir)",
    )
    parser.add_argument(
        "--run-dir", default=DEFAULT_RUN_DIR, help="run directory of `facs cluster up`"
    )


def _target(
    args: argparse.Namespace, mlflow_uri: str | None = None, storage_root: str | None = None
):
    from cluster.submit import resolve_target

    return resolve_target(args.address, args.run_dir, mlflow_uri, storage_root)


def _submit(args: argparse.Namespace) -> int:
    from cluster.submit import submit

    stage_args = list(args.stage_args)
    if stage_args[:1] == ["--"]:
        stage_args = stage_args[1:]
    _, code = submit(
        _target(args, args.mlflow_uri, args.storage_root),
        stage_args,
        working_dir=args.working_dir,
        runtime_env_file=args.runtime_env,
        forward_credentials=args.forward_credentials,
        wait=not args.no_wait,
        submission_id=args.submission_id,
    )
    return 0 if code is None else code


def _jobs_list(args: argparse.Namespace) -> int:
    from cluster.submit import format_jobs, list_jobs

    print(format_jobs(list_jobs(_target(args))))
    return 0


def _jobs_stop(args: argparse.Namespace) -> int:
    from cluster.submit import stop_job

    stopped = stop_job(_target(args), args.job_id)
    print(f"facs: job {args.job_id} {'stopping' if stopped else 'was not running'}")
    return 0


def _jobs_logs(args: argparse.Namespace) -> int:
    from cluster.submit import follow, job_client

    client = job_client(_target(args))
    if args.follow:
        return follow(client, args.job_id)
    print(client.get_job_logs(args.job_id), end="")
    return 0


def register(stages) -> None:
    """Add `cluster`, `submit` and `jobs` to the facs subcommands."""
    from cluster.local_cluster import LocalClusterConfig
    from cluster.submit import PROJECT_ROOT, RUNTIME_ENV_FILE

    cluster = stages.add_parser(
        "cluster", help="a local Ray head + MLflow server on 127.0.0.1 (token auth on)"
    )
    cluster_cmds = cluster.add_subparsers(dest="command", required=True)
    up_help = "Start a Ray head and an MLflow server on 127.0.0.1 and wait until both are healthy."
    up = cluster_cmds.add_parser("up", help=up_help, description=up_help)
    up.add_argument(
        "--config", metavar="YAML", help="YAML file with these options (flags override it)"
    )
    add_config_arguments(up, LocalClusterConfig)
    up.set_defaults(run=_guarded(_cluster_up))
    for name, run, text in (
        ("down", _cluster_down, "Stop every process `facs cluster up` started."),
        ("status", _cluster_status, "Health of the Ray head and the MLflow server."),
    ):
        command = cluster_cmds.add_parser(name, help=text, description=text)
        command.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="run directory of `up`")
        if name == "status":
            command.add_argument("--json", action="store_true", help="print JSON")
        command.set_defaults(run=_guarded(run))

    submit_help = (
        "Run `facs STAGE ARGS...` as a Ray job: upload the project, stream the logs, exit with "
        "the job's status. Options of submit go before STAGE."
    )
    submit = stages.add_parser("submit", help=submit_help, description=submit_help)
    _target_arguments(submit)
    submit.add_argument(
        "--mlflow-uri",
        default=None,
        help="MLflow tracking URI for the job (default: "
        "MLFLOW_TRACKING_URI or the local cluster's server)",
    )
    submit.add_argument(
        "--storage-root",
        default=None,
        help="FACS_STORAGE_ROOT for the job: where its runs, checkpoints and reports go when the "
        "stage's own --storage-path/--output/--out is not given (default: FACS_STORAGE_ROOT or "
        "the local cluster's <run-dir>/runs)",
    )
    submit.add_argument(
        "--working-dir", default=str(PROJECT_ROOT), help="folder uploaded as the job's working dir"
    )
    submit.add_argument(
        "--runtime-env", default=str(RUNTIME_ENV_FILE), help="runtime-env YAML (excludes, env)"
    )
    submit.add_argument(
        "--forward-credentials",
        action="store_true",
        help="also pass AWS_ACCESS_KEY_ID/SECRET/SESSION_TOKEN and MLflow credentials from this "
        "shell (they are stored with the job; prefer instance profiles)",
    )
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return")
    submit.add_argument("--submission-id", default=None, help="job id to use (default: generated)")
    submit.add_argument("stage_args", nargs=argparse.REMAINDER, metavar="STAGE [ARGS...]")
    submit.set_defaults(run=_guarded(_submit))

    jobs = stages.add_parser("jobs", help="list, follow and stop Ray jobs")
    jobs_cmds = jobs.add_subparsers(dest="command", required=True)
    listing = jobs_cmds.add_parser("list", help="every job with its status")
    _target_arguments(listing)
    listing.set_defaults(run=_guarded(_jobs_list))
    logs = jobs_cmds.add_parser("logs", help="a job's logs")
    _target_arguments(logs)
    logs.add_argument("job_id")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends")
    logs.set_defaults(run=_guarded(_jobs_logs))
    stop = jobs_cmds.add_parser("stop", help="stop a running job")
    _target_arguments(stop)
    stop.add_argument("job_id")
    stop.set_defaults(run=_guarded(_jobs_stop))
