"""Benchmark scripts that must behave on any machine (their figures live in benchmarks/results)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GPU_JSON = ROOT / "benchmarks" / "results" / "gpu.json"


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_gpu_check_without_a_gpu_says_so_and_exits_0_leaving_its_results_alone() -> None:
    before = _digest(GPU_JSON)
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU" in done.stdout
    assert "wrote" not in done.stdout
    assert _digest(GPU_JSON) == before


def test_gpu_check_fails_loudly_when_its_interpreter_is_missing() -> None:
    """The guard must not read a broken interpreter as 'no GPU' and report success."""
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
        env={**os.environ, "PYTHON": "/nonexistent/python"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0


@pytest.mark.slow
def test_the_input_path_benchmark_runs_the_workers_batches_and_writes_its_section(tmp_path) -> None:
    """A tiny run of ``pretrain_throughput.py --input-path`` (its figures are the real run's)."""
    import json

    out = tmp_path / "pretrain.json"
    out.write_text(json.dumps({"cpu": {"kept": True}}))
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "pretrain_throughput.py"), "--input-path",
            "--input-rows", "1200", "--input-batches", "64,128", "--repeats", "1",
            "--augment-rows", "256", "--width", "0.125", "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["cpu"] == {"kept": True}  # the other sections stay
    section = results["input_path"]
    assert [row["batch"] for row in section["rows"]] == [64, 128]
    for row in section["rows"]:
        for path in ("uint8", "augmented"):
            assert row[path]["steady_rows_per_s_median"] > 0
            assert row[path]["runs"][0]["rows"] >= row["batch"]
    assert "--input-path" in results["commands"]["input_path"]
