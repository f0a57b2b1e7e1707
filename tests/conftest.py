"""Shared test fixtures: the real data in ../shared, a local Ray, an S3-compatible server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data next to the project root; tests using it skip when it is absent."""
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(
            f"real test data not found at {data} (the ../shared folder next to the project)"
        )
    return data


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray instance (2 CPUs) for the whole test session.

    Started after the S3 server: Ray's workers take the environment (the AWS endpoint variables)
    from when Ray starts, so a Ray started before them sent S3 tests to the real AWS.
    """
    import ray

    from pipeline.ray_runtime import ensure_ray

    ensure_ray(num_cpus=2, log_to_driver=False, progress_bars=False)
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server) on 127.0.0.1, with the standard AWS env vars pointing at it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
    )
    try:
        wait_for_port(port)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the test S3 server; yields its name."""
    import uuid

    import boto3

    name = f"facs-test-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name
