"""Build -> pre-train -> fine-tune with every artifact on S3 (moto's server on 127.0.0.1).

The tiny demo runs with ``--workdir s3://...`` against an ``mlflow server`` whose artifacts go to
the same bucket: the worlds, the corpus, Ray Train's checkpoints, the DISFA cache, the report and
the logged models must all be objects there, and nothing may land in the local working folder.
"""

from __future__ import annotations

import io

import boto3
import pytest
from mlflow.tracking import MlflowClient
from mlflow_helpers import check_demo_runs, mlflow_server

from pipeline.storage import Location
from tune.demo import run_demo
from tune.demo_config import DemoConfig
from tune.demo_setup import MARKER, SUMMARY, TABLE3


def bucket_keys(endpoint: str, bucket: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=endpoint)
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


@pytest.fixture(scope="module")
def s3_demo(s3_server, ray_local, tmp_path_factory):
    """The tiny demo with its work dir and MLflow artifacts in one bucket; run from an empty cwd."""
    bucket = "facs-e2e"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    folder = tmp_path_factory.mktemp("s3-demo")
    cwd = folder / "cwd"
    cwd.mkdir()
    artifacts = f"s3://{bucket}/mlartifacts"
    with (
        mlflow_server(
            folder / "mlflow", artifacts, env={"MLFLOW_S3_ENDPOINT_URL": s3_server}
        ) as url,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.chdir(cwd)
        out = io.StringIO()
        config = DemoConfig(scale="tiny", workdir=f"s3://{bucket}/demo", mlflow_uri=url, seed=2)
        result = run_demo(config, out=out)
        yield result, url, bucket, cwd, bucket_keys(s3_server, bucket)


def test_every_stage_writes_its_artifacts_to_the_bucket(s3_demo):
    result, _, bucket, _, keys = s3_demo
    assert result.paths.workdir == f"s3://{bucket}/demo"

    def under(prefix: str) -> list[str]:
        return [k for k in keys if k.startswith(prefix)]

    assert f"demo/{MARKER}" in keys and f"demo/{SUMMARY}" in keys and f"demo/{TABLE3}" in keys
    assert "demo/celeb/FaceImageCroppedWithAlignment.tsv" in keys
    assert any(k.startswith("demo/disfa/Videos_RightCamera/") for k in keys)
    assert "demo/corpus/manifest.json" in keys
    assert any(k.endswith(".parquet") for k in under("demo/corpus/versions/v0001/status=accepted"))
    assert any(k.endswith(".parquet") for k in under("demo/disfa-cache/"))
    # Ray Train's checkpoints: pre-training, and every fold of both arms.
    pretrain = under("demo/runs/pretrain/")
    assert any("/epoch-0001-" in k and k.endswith("training_state.pt") for k in pretrain), pretrain
    assert any(k.endswith("facs_run.json") for k in pretrain)
    finetune = under("demo/runs/finetune/")
    for arm in ("pretrained", "scratch"):
        # One lock-step trainer per arm (the demo's folds_per_trainer 0), each fold its own part.
        for fold in (1, 2, 3):
            assert any(
                f"/{arm}-folds1-2-3/" in k and "/final" in k and f"/fold{fold}/" in k
                for k in finetune
            ), (arm, fold)
    assert any(k.endswith("report/table3.md") for k in finetune)
    # MLflow's artifacts (both logged models, the report) went through the server to S3.
    artifacts = under("mlartifacts/")
    assert sum(k.endswith("/MLmodel") for k in artifacts) >= 2, artifacts
    assert any(k.endswith("report/table3.md") for k in artifacts)


def test_the_checkpoints_read_back_from_s3(s3_demo):
    result, url, bucket, _, _ = s3_demo
    client = MlflowClient(url)
    version = client.get_model_version(
        "facs-vgg13-pretrained", result.registered["facs-vgg13-pretrained"]
    )
    checkpoint = version.tags["checkpoint"]
    assert checkpoint.startswith(f"s3://{bucket}/demo/runs/pretrain/")
    assert Location.of(checkpoint).is_dir()


def test_mlflow_sees_the_runs_and_models(s3_demo):
    result, url, _, _, _ = s3_demo
    check_demo_runs(url, result)


def test_nothing_is_written_to_the_local_working_folder(s3_demo):
    _, _, _, cwd, _ = s3_demo
    assert sorted(p.name for p in cwd.iterdir()) == []
