"""Where runs, checkpoints and MLflow stores go without flags: the flag, else the environment
(FACS_STORAGE_ROOT, MLFLOW_TRACKING_URI), else the local default; never into a Ray job's temporary
working directory.

The "inside a Ray job" cases set the variable Ray's job supervisor sets for a job's entrypoint and
work in a folder laid out like a job's unpacked working dir; tests/test_cluster_local.py runs the
same stages as real jobs on a real cluster.
"""

from __future__ import annotations

import json

import pytest

from pipeline.run_storage import (
    RAY_JOB_ENV,
    STORAGE_ROOT_ENV,
    RunStorageError,
    check_defaults_reachable,
    check_kept,
    current_ray_job,
    output_location,
)
from training.model_logging import process_uris
from training.tracking import (
    REGISTRY_URI_ENV,
    TRACKING_URI_ENV,
    resolve_registry_uri,
    resolve_tracking_uri,
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in (STORAGE_ROOT_ENV, RAY_JOB_ENV, TRACKING_URI_ENV, REGISTRY_URI_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def in_a_ray_job(clean_env, tmp_path):
    """This process as a job's entrypoint: Ray's variable set, the cwd a job's working dir."""
    working_dir = (
        tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    )
    working_dir.mkdir(parents=True)
    clean_env.chdir(working_dir)
    config = {
        "runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip", "env_vars": {}},
        "metadata": {"job_submission_id": "facs-pretrain-1234"},
    }
    clean_env.setenv(RAY_JOB_ENV, json.dumps(config))
    return working_dir.resolve()


def test_tracking_uri_is_the_flag_else_the_environment_else_the_local_store(clean_env, tmp_path):
    assert resolve_tracking_uri(None, cwd=tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    clean_env.setenv(TRACKING_URI_ENV, "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None, cwd=tmp_path) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("http://other:5000", cwd=tmp_path) == "http://other:5000"
    # A relative store in the environment is made absolute like one given as a flag.
    clean_env.setenv(TRACKING_URI_ENV, "sqlite:///stores/env.db")
    assert resolve_tracking_uri(None, cwd=tmp_path) == f"sqlite:///{tmp_path}/stores/env.db"


def test_the_registry_is_the_tracking_store_unless_mlflow_registry_uri_names_another(
    clean_env, tmp_path
):
    import mlflow

    tracking = f"sqlite:///{tmp_path}/t.db"
    assert resolve_registry_uri(tracking) == tracking
    with process_uris(tracking):
        assert mlflow.get_registry_uri() == tracking
    clean_env.setenv(REGISTRY_URI_ENV, f"sqlite:///{tmp_path}/registry.db")
    assert resolve_registry_uri(tracking) == f"sqlite:///{tmp_path}/registry.db"
    with process_uris(tracking):
        assert mlflow.get_tracking_uri() == tracking
        assert mlflow.get_registry_uri() == f"sqlite:///{tmp_path}/registry.db"


def test_outputs_default_to_the_storage_root_when_it_is_set(clean_env, tmp_path):
    clean_env.chdir(tmp_path)
    local = output_location(None, "pretrain", "--storage-path", "./runs/pretrain")
    assert local == str(tmp_path / "runs" / "pretrain")
    clean_env.setenv(STORAGE_ROOT_ENV, str(tmp_path / "cluster-runs"))
    assert output_location(None, "pretrain", "--storage-path", "./runs/pretrain") == str(
        tmp_path / "cluster-runs" / "pretrain"
    )
    clean_env.setenv(STORAGE_ROOT_ENV, "s3://bucket/runs/")
    assert output_location(None, "tune", "--storage-path", "./runs/tune") == "s3://bucket/runs/tune"
    # A flag always wins.
    assert output_location("s3://b/x", "tune", "--storage-path", "./runs/tune") == "s3://b/x"
    clean_env.setenv(STORAGE_ROOT_ENV, "relative/runs")
    with pytest.raises(RunStorageError, match="expected an absolute folder"):
        output_location(None, "tune", "--storage-path", "./runs/tune")


def test_a_ray_job_is_recognised_from_the_variable_rays_job_supervisor_sets(in_a_ray_job):
    job = current_ray_job()
    assert job is not None and job.submission_id == "facs-pretrain-1234"
    assert job.working_dir == in_a_ray_job


def test_in_a_ray_job_without_a_storage_root_a_default_output_is_refused_naming_the_flag(
    in_a_ray_job,
):
    with pytest.raises(RunStorageError) as refused:
        output_location(None, "pretrain", "--storage-path", "./runs/pretrain")
    message = str(refused.value)
    assert "Ray job (facs-pretrain-1234)" in message and "Pass --storage-path" in message
    assert STORAGE_ROOT_ENV in message and "Ray deletes after the job" in message


def test_in_a_ray_job_a_relative_path_is_refused_and_an_absolute_one_kept(
    in_a_ray_job, tmp_path, clean_env
):
    with pytest.raises(RunStorageError, match="inside this Ray job's temporary working dir"):
        output_location("runs/mine", "finetune", "--storage-path", "./runs/finetune")
    with pytest.raises(RunStorageError, match="--out predictions.csv"):
        check_kept("predictions.csv", "--out")
    kept = str(tmp_path / "kept")
    assert output_location(kept, "finetune", "--storage-path", "./runs/finetune") == kept
    clean_env.setenv(STORAGE_ROOT_ENV, str(tmp_path / "cluster-runs"))
    assert output_location(None, "finetune", "--storage-path", "./runs/finetune") == str(
        tmp_path / "cluster-runs" / "finetune"
    )


def test_in_a_ray_job_the_default_mlflow_store_is_refused_but_the_clusters_server_used(
    in_a_ray_job, clean_env
):
    with pytest.raises(RunStorageError) as refused:
        resolve_tracking_uri(None)
    message = str(refused.value)
    assert "no --mlflow-uri and no MLFLOW_TRACKING_URI" in message
    assert str(in_a_ray_job / "mlflow.db") in message
    with pytest.raises(RunStorageError, match="--mlflow-uri sqlite:///mlflow.db"):
        resolve_tracking_uri("sqlite:///mlflow.db")
    clean_env.setenv(TRACKING_URI_ENV, "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5000"


def test_any_path_under_rays_runtime_resources_is_temporary(clean_env, tmp_path):
    inside = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    with pytest.raises(RunStorageError, match="temporary working directory"):
        check_kept(str(inside / "runs"), "--output")
    assert check_kept(str(tmp_path / "runs"), "--output") == str(tmp_path / "runs")
    assert check_kept("s3://bucket/runs", "--output") == "s3://bucket/runs"


def test_default_locations_on_a_single_machine_ray_are_accepted(ray_local, tmp_path):
    check_defaults_reachable({"--storage-path": str(tmp_path), "--mlflow-uri": None})
