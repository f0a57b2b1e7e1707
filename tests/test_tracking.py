"""MLflow tracking: URIs, params, git commit, and a pre-training run checked through a real server."""

from __future__ import annotations

import json
import math
import os
import threading
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from corpus_fixture import make_corpus
from mlflow.tracking import MlflowClient
from mlflow_helpers import mlflow_server

from pipeline.corpus.manifest import load_manifest
from training.augment import AugmentConfig
from training.model import ModelConfig
from training.model_logging import process_uris
from training.pretrain import run_pretraining
from training.pretrain_config import REGISTERED_MODEL_NAME, PretrainConfig
from training.tracking import (
    EXPERIMENT_KIND_TAG,
    create_run,
    default_artifact_location,
    flatten,
    git_commit,
    log_dataset,
    log_metrics,
    log_params,
    resolve_tracking_uri,
)


def test_threads_pointing_mlflow_at_different_stores_each_keep_their_own(tmp_path):
    """Concurrent folds / scaling points log models through MLflow's process-wide URIs."""
    import threading
    import time

    import mlflow

    seen: dict[str, list[str]] = {"a": [], "b": []}

    def log(name: str) -> None:
        with process_uris(f"sqlite:///{tmp_path / name}.db"):
            for _ in range(20):
                seen[name].append(mlflow.get_tracking_uri())
                time.sleep(0.002)

    threads = [threading.Thread(target=log, args=(name,)) for name in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, uris in seen.items():
        assert set(uris) == {f"sqlite:///{tmp_path / name}.db"}
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_default_store_is_an_absolute_sqlite_database_with_artifacts_beside_it(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri(None, cwd=tmp_path)
    assert uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert default_artifact_location(uri) == (tmp_path / "mlartifacts").as_uri()
    assert resolve_tracking_uri("sqlite:///runs/m.db", cwd=tmp_path) == (
        f"sqlite:///{tmp_path}/runs/m.db"
    )
    assert resolve_tracking_uri("mlruns", cwd=tmp_path) == (tmp_path / "mlruns").as_uri()
    assert resolve_tracking_uri("http://mlflow:5000", cwd=tmp_path) == "http://mlflow:5000"
    assert default_artifact_location("http://mlflow:5000") is None


def test_nested_config_flattens_to_dotted_param_names():
    assert flatten({"lr": 0.005, "model": {"width": 1.0, "deep": {"x": [1, 2]}}}) == {
        "lr": 0.005,
        "model.width": 1.0,
        "model.deep.x": [1, 2],
    }


def test_git_commit_reads_branch_refs_packed_refs_and_detached_heads(tmp_path, monkeypatch):
    monkeypatch.delenv("FACS_GIT_COMMIT", raising=False)
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    inside = tmp_path / "repo" / "training"
    inside.mkdir()
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text("a" * 40 + "\n")
    assert git_commit(inside) == "a" * 40
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs\n{'b' * 40} refs/heads/main\n")
    assert git_commit(inside) == "b" * 40
    (git / "HEAD").write_text("c" * 40 + "\n")
    assert git_commit(inside) == "c" * 40
    monkeypatch.setenv("FACS_GIT_COMMIT", "d" * 40)
    assert git_commit(inside) == "d" * 40


def test_metrics_skip_nan_and_params_batch_past_mlflow_limits(tmp_path):
    run = create_run(f"sqlite:///{tmp_path}/m.db", "unit", "r")
    log_params(run, {f"p{i}": i for i in range(250)} | {"long": "x" * 7000})
    log_metrics(run, {"val_roc_auc_AU05": math.nan, "val_loss": 0.5, "inf": math.inf}, step=1)
    data = MlflowClient(run.tracking_uri).get_run(run.run_id).data
    assert len(data.params) == 251 and data.params["p249"] == "249"
    assert len(data.params["long"]) == 6000
    assert data.metrics == {"val_loss": 0.5}


def test_experiments_open_as_model_training_unless_they_say_otherwise(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    client.create_experiment("old-untagged")
    client.create_experiment("genai", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    names = ("new", "old-untagged", "genai")
    for name in names:
        create_run(uri, name, "r")
    kinds = {n: client.get_experiment_by_name(n).tags.get(EXPERIMENT_KIND_TAG) for n in names}
    assert kinds == {
        "new": "custom_model_development",
        "old-untagged": "custom_model_development",
        "genai": "genai_development",  # a user's own choice is kept
    }


def get_json(url: str, **query) -> dict:
    full = url + ("?" + urllib.parse.urlencode(query) if query else "")
    with urllib.request.urlopen(full, timeout=30) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and proxied artifacts."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    with mlflow_server(folder, str(folder / "artifacts")) as url:
        yield url, folder / "artifacts"


@pytest.mark.slow
def test_pretraining_against_an_mlflow_server_is_visible_through_its_rest_api(
    ray_local, server, tmp_path
):
    url, artifacts = server
    corpus = make_corpus(tmp_path / "corpus", images=160, identities=20)
    config = PretrainConfig(
        corpus=corpus.uri,
        workers=2,
        cpus_per_worker=0.5,
        batch_size=16,
        model=ModelConfig(width=0.125),
        augment=AugmentConfig(strength=0.5),
        max_epochs=1,
        storage_path=str(tmp_path / "runs"),
        run_name="served",
        mlflow_uri=url,
        experiment="facs-pretrain-served",
        cache_data=True,
        shuffle_buffer=32,
        prefetch_batches=2,
    )
    result = run_pretraining(config)
    api = url + "/api/2.0/mlflow"

    experiment = get_json(api + "/experiments/get-by-name", experiment_name="facs-pretrain-served")
    runs = post_json(
        api + "/runs/search",
        {
            "experiment_ids": [experiment["experiment"]["experiment_id"]],
            "filter": "tags.`facs.run_name` = 'served'",
        },
    )["runs"]
    assert [r["info"]["run_id"] for r in runs] == [result.mlflow_run_id]
    run = runs[0]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["corpus_uri"] == corpus.uri
    assert params["corpus_version"] == "1"
    assert params["corpus_manifest_hash"] == load_manifest(corpus.uri).content_hash(1)
    assert params["workers"] == "2" and params["lr"] == str(config.lr)
    assert float(params["pixel_mean"]) == pytest.approx(corpus.train_pixel_mean, abs=1e-9)
    metrics = {m["key"]: m for m in run["data"]["metrics"]}
    for key in ("train_loss", "val_loss", "val_f1_mean", "samples_per_s", "data_wait_fraction"):
        assert metrics[key]["step"] == 1, key
    history = get_json(
        api + "/metrics/get-history", run_id=result.mlflow_run_id, metric_key="val_loss"
    )
    assert [m["step"] for m in history["metrics"]] == [1]
    assert history["metrics"][0]["value"] == pytest.approx(result.best_val_loss)
    # System metrics, named by node: one node here, sampled by its local-rank-0 worker only.
    system = {k for k in metrics if k.startswith("system/")}
    assert {
        "system/node0/cpu_utilization_percentage",
        "system/node0/system_memory_usage_megabytes",
    } <= system
    assert all(k.startswith("system/node0/") for k in system)

    registered = get_json(api + "/registered-models/get", name=REGISTERED_MODEL_NAME)
    assert registered["registered_model"]["name"] == REGISTERED_MODEL_NAME
    version = get_json(
        api + "/model-versions/get", name=REGISTERED_MODEL_NAME, version=result.registered_version
    )["model_version"]
    assert version["run_id"] == result.mlflow_run_id
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert tags["corpus.version"] == "1"
    assert tags["corpus.manifest_hash"] == params["corpus_manifest_hash"]
    assert float(tags["pixel_mean"]) == pytest.approx(corpus.train_pixel_mean)
    # The version's logged model carries its scores, each linked to the corpus it was scored on.
    assert version["source"].startswith("models:/m-")  # the version is its logged model
    logged = MlflowClient(url).get_logged_model(version["source"].removeprefix("models:/"))
    scores = {m.key: m for m in logged.metrics}
    assert scores["final_best_val_loss"].value == pytest.approx(result.best_val_loss)
    assert scores["final_best_val_loss"].dataset_name == "corpus-v1"
    assert scores["final_best_val_loss"].dataset_digest == params["corpus_manifest_hash"][:36]
    assert logged.source_run_id == result.mlflow_run_id
    # The model's files went through the server's artifact proxy into its destination folder.
    assert list(artifacts.rglob("MLmodel")), f"no MLmodel file under {artifacts}"


def test_runs_logging_one_dataset_at_once_all_record_it(server):
    """Both demo arms log each fold's dataset at the same moment; MLflow's SQL store looks a
    dataset up and then inserts it, so concurrent loggers race on its UNIQUE constraint."""
    url, _ = server
    runs = [create_run(url, "facs-datasets-at-once", f"arm{i}") for i in range(8)]
    names = [f"disfa-key-fold{fold}" for fold in range(4)]
    for name in names:
        barrier = threading.Barrier(len(runs))

        def log(run, name=name, barrier=barrier):
            barrier.wait()
            log_dataset(run, name, "/data/disfa", "key", {"frames": 72}, context="test")

        with ThreadPoolExecutor(len(runs)) as pool:
            list(pool.map(log, runs))  # re-raises a worker's error
    client = MlflowClient(url)
    for run in runs:
        logged = [i.dataset for i in client.get_run(run.run_id).inputs.dataset_inputs]
        assert sorted(d.name for d in logged) == names
        assert {d.digest for d in logged} == {"key"}
