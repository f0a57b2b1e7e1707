"""An `mlflow server` on 127.0.0.1 for tests, its REST API, and the demo's expected runs in it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from training.finetune_config import REGISTERED_MODEL_NAME as DISFA_MODEL
from training.pretrain_config import REGISTERED_MODEL_NAME as PRETRAINED_MODEL


@contextmanager
def mlflow_server(folder: Path, artifacts: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1: SQLite backend, artifacts proxied to ``artifacts``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = folder / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{folder / 'server.db'}",
                "--artifacts-destination",
                artifacts,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # the server and its uvicorn worker, stopped together
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(url + "/health", timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"mlflow server did not start on {url}:\n{log_path.read_text()}")
                time.sleep(0.5)
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def rest(url: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """One call of the MLflow REST API (GET with ``query``, or POST with ``body``)."""
    address = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        address += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        address, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def check_demo_runs(url: str, result: Any) -> None:
    """Through the server: the pre-training run, both CV parents with 3 fold children, metrics,
    and both registered models. ``result``: a ``DemoResult`` or its ``demo-summary.json`` fields."""
    runs = rest(url, "runs/search", {"experiment_ids": [result.experiment_id], "max_results": 100})[
        "runs"
    ]
    by_id = {run["info"]["run_id"]: run for run in runs}

    def metrics(run: dict) -> dict[str, float]:
        return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}

    def tags(run: dict) -> dict[str, str]:
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    experiment = rest(url, "experiments/get", experiment_id=result.experiment_id)["experiment"]
    kind = {t["key"]: t["value"] for t in experiment.get("tags", [])}.get("mlflow.experimentKind")
    assert kind == "custom_model_development"  # the UI opens it on its training runs

    pretrain = by_id[result.pretrain_run_id]
    assert pretrain["info"]["status"] == "FINISHED"
    assert tags(pretrain)["facs.stage"] == "pretrain"
    assert {"val_loss", "train_loss", "final_best_val_loss"} <= set(metrics(pretrain))
    params = {p["key"] for p in pretrain["data"].get("params", [])}
    assert {"lr", "batch_size", "corpus_manifest_hash"} <= params
    assert not {p for p in params if p.startswith("fail")}  # test-only settings are not params

    assert by_id[result.compare_run_id]["info"]["status"] == "FINISHED"
    assert set(result.arm_run_ids) == {"pretrained", "scratch"}
    for arm, parent_id in result.arm_run_ids.items():
        parent = by_id[parent_id]
        assert parent["info"]["status"] == "FINISHED"
        assert tags(parent)["facs.init"] == arm
        assert tags(parent)["mlflow.parentRunId"] == result.compare_run_id
        assert 0.0 <= metrics(parent)["test_pooled_f1_mean"] <= 1.0
        assert "labeler_f1_mean" in metrics(parent)  # the labeler, scored on the same frames
        children = [r for r in runs if tags(r).get("mlflow.parentRunId") == parent_id]
        assert sorted(int(tags(r)["facs.fold"]) for r in children) == [1, 2, 3]
        for child in children:
            assert child["info"]["status"] == "FINISHED"
            assert {"val_loss", "test_f1_mean"} <= set(metrics(child))

    owners = {
        PRETRAINED_MODEL: result.pretrain_run_id,
        DISFA_MODEL: result.arm_run_ids["pretrained"],
    }
    assert set(result.registered) == set(owners)
    for name, run_id in owners.items():
        model = rest(url, "registered-models/get", name=name)["registered_model"]
        versions = {v["version"]: v for v in model["latest_versions"]}
        assert versions[result.registered[name]]["run_id"] == run_id
