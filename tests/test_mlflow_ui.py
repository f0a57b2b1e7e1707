"""The MLflow UI, rendered by a real headless Chromium against a real ``mlflow server``: the link
facs prints opens the experiment on its training runs, not on MLflow 3's GenAI pages."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from mlflow_helpers import mlflow_server

from training.tracking import create_run, experiment_url, log_dataset, log_metrics

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)"),
]


def page_text(url: str, profile: str) -> str:
    """The visible text of ``url`` once its scripts have run (tags, scripts and styles dropped)."""
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",  # a fresh browser: no workflow remembered
            "--virtual-time-budget=30000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    html = re.sub(r"<script.*?</script>|<style.*?</style>", " ", done.stdout, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_the_printed_link_opens_the_experiment_on_its_training_runs(tmp_path):
    with mlflow_server(tmp_path / "server", str(tmp_path / "artifacts")) as url:
        run = create_run(url, "facs-pretrain-ui", "pretrain-ui-check")
        log_metrics(run, {"val_loss": 0.25, "val_f1_mean": 0.5}, step=1)
        log_dataset(run, "corpus-v1", str(tmp_path / "corpus"), "abc123", {"train_rows": 10})
        runs_page = page_text(experiment_url(url, run.experiment_id), str(tmp_path / "p1"))
        # The bare experiment link, as MLflow 3 opens it in a fresh browser: the GenAI overview.
        bare = page_text(f"{url}/#/experiments/{run.experiment_id}", str(tmp_path / "p2"))
    assert "facs-pretrain-ui" in runs_page
    assert "pretrain-ui-check" in runs_page, runs_page[:2000]
    assert "corpus-v1" in runs_page  # the Dataset column
    assert "pretrain-ui-check" not in bare  # why the link carries the workflow
