"""The console: the product's own lines on the terminal, Ray's and the libraries' output in a file."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pipeline import console

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "photos"


@pytest.fixture
def restored_console(monkeypatch):
    """quiet_console changes process-wide logging and warnings: put them back after the test."""
    monkeypatch.setattr(console, "_state", {"path": None, "file": None, "announced": False})
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    saved = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate)
        for n in console._QUIET_LOGGERS
    }
    yield
    for name, (handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate = propagate


def test_streamed_ray_lines_reach_the_terminal_only_when_they_are_the_products(
    tmp_path, capsys, restored_console
):
    console.quiet_console(tmp_path / "console.log")
    console._ray_lines(
        {
            "lines": [
                "Reporting training result 1: TrainingReport(...)",
                "[facs] pretrain epoch 1/3 train_loss 0.69",
            ],
            "pid": 4242,
            "actor_name": "RayTrainWorker",
            "is_err": False,
        }
    )
    console._ray_lines({"lines": ["WARNING: 12 PYTHON worker processes"], "pid": "raylet"})
    out = capsys.readouterr().out
    assert "[facs] pretrain epoch 1/3 train_loss 0.69" in out
    assert "Reporting training result" not in out and "PYTHON worker" not in out
    assert f"own output: {tmp_path / 'console.log'}" in out  # where the rest went, said once
    logged = (tmp_path / "console.log").read_text()
    assert "(RayTrainWorker) Reporting training result 1" in logged
    assert "(pid=raylet) WARNING: 12 PYTHON worker processes" in logged
    assert "[facs] pretrain epoch 1/3" in logged  # the file has everything


def build(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    corpus = tmp_path / f"corpus{len(flags)}"
    command = [sys.executable, "-m", "cluster.cli", *flags, "corpus", "build"]
    command += ["--corpus", str(corpus), "--images", str(FACES)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    return subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path, check=True
    )


@pytest.mark.slow
def test_a_ray_stage_prints_its_own_lines_and_logs_rays_unless_verbose(tmp_path):
    if not FACES.is_dir():
        pytest.skip(f"real face photos not available: {FACES}")
    quiet = build(tmp_path)
    shown = quiet.stdout + quiet.stderr
    assert "[facs]" in shown
    assert "streaming_executor" not in shown and "Execution plan of Dataset" not in shown
    (path,) = re.findall(r"own output: (\S+)", shown)
    assert "Execution plan of Dataset" in Path(path).read_text()  # kept, in the file
    loud = build(tmp_path, "--verbose")
    assert "Execution plan of Dataset" in loud.stdout + loud.stderr
    assert len(shown.splitlines()) < len((loud.stdout + loud.stderr).splitlines())


def test_the_default_console_log_is_named_by_the_sub_command_not_its_values() -> None:
    from cluster.cli import default_console_log

    path = default_console_log(["pretrain", "--corpus", "/tmp/some/corpus", "--workers", "2"])
    assert path.name.startswith("pretrain-") and path.parent.name == "facs-logs"
    assert "corpus" not in path.name
    nested = default_console_log(["corpus", "build", "--corpus", "s3://b/c"])
    assert nested.name.startswith("corpus-build-") and nested.parent.name == "facs-logs"
    assert default_console_log(["--verbose"]).name.startswith("facs-")
