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
