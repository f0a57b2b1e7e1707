"""Bad input through the real `facs` command: a one-line message, exit status 2, no traceback,
nothing written, and no Ray started for what needs no data.

Each command runs as its own process with ``RAY_ADDRESS`` pointing at a port where no Ray listens:
a command that tried to start or join Ray before refusing would fail differently (or hang).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
from corpus_fixture import make_corpus

ROOT = Path(__file__).resolve().parents[1]


def facs(
    args: list[str], cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "FACS_"))}
    env.update(extra_env or {})
    env["RAY_ADDRESS"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def refused(done: subprocess.CompletedProcess, *expected: str) -> str:
    """Assert a clean refusal mentioning ``expected``; the error line."""
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("facs: error: "), output[-3000:]
    for text in expected:
        assert text in error, error
    return error


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> str:
    """A corpus whose rows were all stored without labels (a build without label sources)."""
    return make_corpus(
        tmp_path_factory.mktemp("unlabelled") / "corpus", images=40, labelled=False
    ).uri


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> str:
    return make_corpus(tmp_path_factory.mktemp("labelled") / "corpus", images=40).uri


def test_corpus_build_onto_an_existing_file_is_refused_and_the_file_kept(tmp_path):
    target = tmp_path / "corpus.txt"
    target.write_text("my notes")
    (tmp_path / "photos").mkdir()
    before = listing(tmp_path)
    done = facs(["corpus", "build", "--corpus", str(target), "--images", "photos"], tmp_path)
    refused(done, f"--corpus {target} is a file", "expected a folder")
    assert listing(tmp_path) == before


def test_corpus_stats_of_version_0_is_refused(labelled, tmp_path):
    refused(facs(["corpus", "stats", "--corpus", labelled, "--version", "0"], tmp_path),
            "version 0 does not exist (versions 1..1)")  # fmt: skip


@pytest.mark.parametrize("flag", ["--identities", "--images"])
def test_a_subset_of_0_is_refused_and_nothing_recorded(labelled, tmp_path, flag):
    corpus = Path(labelled)
    before = listing(corpus)
    done = facs(["corpus", "subset", "--corpus", labelled, flag, "0"], tmp_path)
    refused(done, f"SubsetConfig.{flag[2:]}: expected a number >= 1, got 0")
    assert listing(corpus) == before


def test_corpus_stats_json_of_an_unlabelled_corpus_is_valid_json_with_null_rates(
    unlabelled, tmp_path
):
    done = facs(["corpus", "stats", "--corpus", unlabelled, "--json"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    def no_constants(name: str):
        raise AssertionError(f"{name} is not JSON")

    stats = json.loads(done.stdout, parse_constant=no_constants)
    assert stats["labelled_images"] == 0 and stats["images"] == 40
    assert set(stats["au_base_rates"].values()) == {None}
    markdown = facs(["corpus", "stats", "--corpus", unlabelled], tmp_path)
    assert markdown.returncode == 0 and "| AU01 | n/a |" in markdown.stdout


def test_pretraining_an_unlabelled_corpus_says_no_row_is_labelled_and_how_to_label(
    unlabelled, tmp_path
):
    done = facs(["pretrain", "--corpus", unlabelled], tmp_path)
    refused(done, "no row is labelled", "40 rows", "--labels-release-csv", "--label-model")
    assert "the dataset has no faces" not in done.stderr
    assert listing(tmp_path) == {}  # no runs/, no mlflow.db


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pretrain", "--corpus", "{labelled}", "--model-width", "-1"], "width > 0, got -1.0"),
        (["pretrain", "--corpus", "{labelled}", "--version", "0"], "version >= 1, got 0"),
        (["predict", "photo.jpg"], "expected a model (--model"),
        (
            ["finetune", "--disfa", "d", "--init", "scratch", "--threshold", "1.5"],
            "threshold in (0, 1), got 1.5",
        ),
        (["finetune", "--init", "scratch"], "expected the DISFA folder (--disfa)"),
        (["tune", "--finetune-init", "scratch"], "expected the DISFA folder (--disfa)"),
        (["experiment", "scaling", "--corpus", "{labelled}"], "DISFA folder (--disfa)"),
        (
            ["corpus", "build", "--corpus", "c", "--images", "p", "--label-threshold", "2"],
            "label_threshold in (0, 1), got 2.0",
        ),
        (["corpus", "build", "--corpus", "c"], "no input given: pass --images"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value)[:40],
)
def test_config_errors_are_reported_before_ray_starts_and_nothing_is_written(
    labelled, tmp_path, args, expected
):
    args = [arg.format(labelled=labelled) for arg in args]
    before = listing(Path(labelled))
    refused(facs(args, tmp_path), expected)
    assert listing(tmp_path) == {}
    assert listing(Path(labelled)) == before


def test_fault_injection_for_a_worker_that_does_not_exist_is_refused_before_ray_starts(
    labelled, tmp_path
):
    env = {"FACS_PRETRAIN_FAIL_AT_EPOCH": "1", "FACS_PRETRAIN_FAIL_RANK": "3"}
    done = facs(["pretrain", "--corpus", labelled], tmp_path, env)
    refused(done, "FACS_PRETRAIN_FAIL_RANK: expected a worker rank in [0, 1), got 3")
    assert listing(tmp_path) == {}


def test_the_unlabelled_fixture_really_has_no_labels(unlabelled):
    import pyarrow.parquet as pq

    from pipeline.corpus.read import version_files

    root, files = version_files(unlabelled, 1)
    table = pq.ParquetDataset(files, filesystem=root.fs).read(columns=["label_source", "AU01"])
    assert set(table.column("label_source").to_pylist()) == {"none"}
    assert table.column("AU01").null_count == table.num_rows
