"""`facs demo` end to end at tiny scale against a real `mlflow server`, and its guard rails."""

from __future__ import annotations

import argparse
import io
import json

import pytest
from mlflow.tracking import MlflowClient
from mlflow_helpers import check_demo_runs, mlflow_server

from cluster.demo_cli import register
from pipeline.options import load_config, overrides_from_args
from training.finetune_config import REGISTERED_MODEL_NAME as DISFA_MODEL
from training.pretrain_config import REGISTERED_MODEL_NAME as PRETRAINED_MODEL
from tune.demo import run_demo
from tune.demo_config import SCALES, DemoConfig
from tune.demo_report import DemoResult, claim_lines, mlflow_ui_hint
from tune.demo_setup import (
    MARKER,
    SUMMARY,
    TABLE3,
    DemoPaths,
    finetune_cpus,
    prepare_workdir,
    validation_people,
)


@pytest.fixture(scope="module")
def tiny_demo(ray_local, tmp_path_factory):
    """The tiny demo against an MLflow server, its printed output, and where it ran."""
    folder = tmp_path_factory.mktemp("demo")
    with mlflow_server(folder / "mlflow", str(folder / "mlflow" / "artifacts")) as url:
        out = io.StringIO()
        config = DemoConfig(scale="tiny", workdir=str(folder / "work"), mlflow_uri=url)
        result = run_demo(config, out=out)
        yield result, out.getvalue(), url, folder


def test_tiny_demo_leaves_every_run_and_both_models_in_the_mlflow_server(tiny_demo):
    result, _, url, _ = tiny_demo
    check_demo_runs(url, result)
    client = MlflowClient(url)
    logged = {a.path for a in client.list_artifacts(result.compare_run_id, "demo")}
    assert {"demo/table3.md", "demo/demo-summary.json"} <= logged
    timings = client.get_run(result.compare_run_id).data.metrics
    assert timings["demo_seconds_pretrain"] > 0 and timings["demo_seconds_finetune"] > 0


def test_tiny_demo_prints_progress_table3_and_how_to_open_the_runs(tiny_demo):
    result, output, url, folder = tiny_demo
    assert f"takes about {SCALES['tiny'].minutes_on_2_cores:g} minutes" in output
    for index in range(1, 7):
        assert f"[demo {index}/6 +" in output
    assert output.count("done in") >= 6
    assert "Table III" in output
    assert "| VGG13 pre-trained (this run) |" in output
    assert "| VGG13 from scratch (this run) |" in output
    assert "| OpenFace 2.0 (measured here) |" in output
    assert "| OpenFace 2.0 (paper) | 41.9 |" in output
    claims = [line for line in output.splitlines() if line.startswith("[demo] claim:")]
    assert len(claims) == 2 and result.claims == [c[len("[demo] ") :] for c in claims]
    f1 = result.f1_8au_fold_mean
    assert set(f1) == {"pretrained", "scratch", "labeler"}
    margin = f1["pretrained"] - f1["scratch"]
    verdict = "beats scratch by" if margin > 0 else "does NOT beat scratch: margin"
    assert f"pre-trained {verdict} {margin:+.1f} F1" in claims[0]
    assert f"{url}/#/experiments/{result.experiment_id}" in output
    assert result.compare_run_id in output and result.pretrain_run_id in output
    work = folder / "work"
    assert (work / TABLE3).read_text() == result.table3
    summary = json.loads((work / SUMMARY).read_text())
    assert summary["registered"] == result.registered
    assert summary["scale"]["people"] == SCALES["tiny"].people
    # The MLflow server, not the work dir, holds the runs.
    assert not (work / "mlflow.db").exists()


# -- Without Ray ------------------------------------------------------------------------------


def demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facs")
    register(parser.add_subparsers(dest="stage", required=True))
    return parser


def test_scale_preset_with_one_field_overridden_from_the_command_line():
    args = demo_parser().parse_args(["demo", "--scale", "tiny", "--people", "40", "--width", "0.5"])
    config = load_config(DemoConfig, args.config, overrides_from_args(args))
    scale = config.resolved()
    assert (scale.people, scale.width) == (40, 0.5)
    assert scale.disfa_subjects == SCALES["tiny"].disfa_subjects
    assert DemoConfig().resolved() == SCALES["small"]


def test_claim_lines_give_each_margin_and_say_plainly_when_a_claim_does_not_hold():
    helps, outgrows = claim_lines({"pretrained": 58.7, "scratch": 27.6, "labeler": 60.2})
    assert "pre-trained beats scratch by +31.1 F1 (58.7 vs 27.6" in helps
    assert "pre-trained does NOT beat its own labeler" in outgrows
    assert "margin -1.5 F1 (58.7 vs 60.2" in outgrows
    assert claim_lines({"pretrained": 50.0}) == []


def test_unknown_scale_and_too_few_subjects_are_refused():
    with pytest.raises(SystemExit):
        demo_parser().parse_args(["demo", "--scale", "huge"])
    with pytest.raises(ValueError, match="disfa_subjects"):
        DemoConfig(disfa_subjects=2)


def test_a_world_without_validation_people_is_refused_before_any_work(tmp_path):
    seed = next(s for s in range(100) if validation_people(s, 5) == 0)
    config = DemoConfig(scale="tiny", people=5, seed=seed, workdir=str(tmp_path / "work"))
    with pytest.raises(ValueError, match="validation split"):
        run_demo(config, out=io.StringIO())
    assert not (tmp_path / "work").exists()


def test_a_foreign_work_dir_is_refused_and_an_earlier_demos_data_is_replaced(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "me.jpg").write_bytes(b"mine")
    with pytest.raises(ValueError, match="not made by `facs demo`"):
        prepare_workdir(DemoConfig(workdir=str(foreign)))
    assert (foreign / "me.jpg").read_bytes() == b"mine"

    work = tmp_path / "demo"
    prepare_workdir(DemoConfig(workdir=str(work)))
    assert (work / MARKER).is_file()
    (work / "corpus").mkdir()
    (work / "corpus" / "manifest.json").write_text("{}")
    (work / "mlflow.db").write_text("kept")
    prepare_workdir(DemoConfig(workdir=str(work)))
    assert not (work / "corpus").exists()
    assert (work / "mlflow.db").read_text() == "kept"


def test_the_ui_hint_for_a_local_store_names_the_command_and_the_runs(tmp_path):
    result = DemoResult(
        paths=DemoPaths.under(str(tmp_path)),
        scale=SCALES["tiny"],
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        experiment_id="7",
        pretrain_run_id="p1",
        compare_run_id="c1",
        arm_run_ids={"scratch": "s1", "pretrained": "t1"},
        registered={PRETRAINED_MODEL: "1", DISFA_MODEL: "2"},
        table3="",
        f1_8au_fold_mean={},
    )
    hint = mlflow_ui_hint(result)
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in hint
    assert "http://127.0.0.1:5000/#/experiments/7/runs/c1" in hint
    assert "#/experiments/7/runs?workflowType=machine_learning" in hint  # opens on the runs
    assert f"{PRETRAINED_MODEL} v1" in hint and f"{DISFA_MODEL} v2" in hint


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("concurrent", [0, 1, 2, 3, 4, 6])
def test_fold_trainers_meant_to_run_at_once_fit_the_cpus_together(cpus, concurrent):
    share = finetune_cpus(cpus, concurrent, use_gpu=False)
    at_once = 6 if concurrent == 0 else concurrent
    if cpus / at_once >= 0.25:  # above the floor, Ray must be able to start them all together
        assert share * at_once <= cpus
        assert share >= min(1.0, cpus / at_once) - 0.01
    assert 0.25 <= share <= 1.0
