"""The demo's results: the headline F1 of each arm and the labeler, one line per claim of the
paper with its margin, the summary files and MLflow tags, and how to open the runs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.storage import Location
from tune.demo_config import DemoConfig, DemoScale
from tune.demo_setup import SUMMARY, TABLE3, DemoPaths


def headline_f1(cv: Any) -> dict[str, float]:
    """F1 (%) over the paper's 8 AUs, per fold then averaged, of each arm and the labeler."""
    from pipeline.vocabulary import PAPER_COMPARISON_AUS

    out = {arm: round(100 * result.mean_f1_paper8, 2) for arm, result in cv.arms.items()}
    if cv.labeler is not None:
        out["labeler"] = round(100 * cv.labeler.mean("f1", PAPER_COMPARISON_AUS), 2)
    return out


def claim_lines(f1: dict[str, float]) -> list[str]:
    """The paper's claims as measured here: each margin, or that the claim does not hold."""

    def line(claim: str, ours: float, other: float, name: str) -> str:
        margin = ours - other
        verdict = f"beats {name} by" if margin > 0 else f"does NOT beat {name}: margin"
        return (
            f"claim: {claim}: pre-trained {verdict} {margin:+.1f} F1 "
            f"({ours:.1f} vs {other:.1f}; 8 AUs, per fold then averaged)"
        )

    lines = []
    if "pretrained" in f1 and "scratch" in f1:
        lines.append(line("pre-training helps", f1["pretrained"], f1["scratch"], "scratch"))
    if "pretrained" in f1 and "labeler" in f1:
        lines.append(
            line(
                "the student outgrows its noisy teacher",
                f1["pretrained"],
                f1["labeler"],
                "its own labeler (OpenFace stand-in, same test frames)",
            )
        )
    return lines


@dataclass
class DemoResult:
    """What the demo produced, and how to look at it."""

    paths: DemoPaths
    scale: DemoScale
    tracking_uri: str
    experiment_id: str
    pretrain_run_id: str
    compare_run_id: str
    arm_run_ids: dict[str, str]
    registered: dict[str, str]  # model name -> version
    table3: str
    #: F1 (%) over the paper's 8 AUs, per fold then averaged: pretrained, scratch, labeler.
    f1_8au_fold_mean: dict[str, float]
    #: One line per claim of the paper, with its measured margin.
    claims: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def experiment_id(tracking_uri: str, name: str) -> str:
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri).get_experiment_by_name(name)
    if experiment is None:
        raise RuntimeError(f"MLflow experiment {name!r} missing at {tracking_uri} after the demo")
    return experiment.experiment_id


def record_demo(result: DemoResult, root: Location, config: DemoConfig) -> None:
    """Table III and the summary into the work dir, and onto the comparison's MLflow run."""
    from training.tracking import RunHandle, log_metrics, set_tags

    summary = json.dumps(
        {"config": asdict(config), **asdict(result), "paths": asdict(result.paths)}, indent=2
    )
    root.join(TABLE3).write_bytes(result.table3.encode("utf-8"))
    root.join(SUMMARY).write_text_atomic(summary)
    if not result.compare_run_id:
        return
    run = RunHandle(result.tracking_uri, result.experiment_id, result.compare_run_id)
    log_metrics(run, {f"demo_seconds_{k}": v for k, v in result.seconds.items()}, step=0)
    set_tags(run, {"facs.demo.scale": config.scale, "facs.demo.workdir": result.paths.workdir})
    client = run.client()
    client.log_text(run.run_id, summary, "demo/demo-summary.json")
    client.log_text(run.run_id, result.table3, "demo/table3.md")


def mlflow_ui_hint(result: DemoResult) -> str:
    """How to look at the runs: the UI command (local store) or the server's pages."""
    from training.tracking import experiment_url

    experiment, compare = result.experiment_id, result.compare_run_id
    if result.tracking_uri.startswith(("http://", "https://")):
        base = result.tracking_uri.rstrip("/")
        how = f"Open the MLflow server: {experiment_url(base, experiment)}"
    else:
        base = "http://127.0.0.1:5000"
        how = (
            "Open the MLflow UI on the runs:\n"
            f"    mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 --port 5000\n"
            f"then browse {experiment_url(base, experiment)}"
        )
    lines = [
        "",
        how,
        f"    experiment {experiment}; pre-training run {result.pretrain_run_id}",
        f"    comparison run {compare}: {experiment_url(base, experiment, compare)}",
        *(f"    {arm} cross-validation run {run_id}" for arm, run_id in result.arm_run_ids.items()),
        "    registered models: "
        + ", ".join(f"{name} v{version}" for name, version in result.registered.items()),
        f"    Table III and a summary: {Location.of(result.paths.workdir).join(TABLE3).uri}, "
        f"{Location.of(result.paths.workdir).join(SUMMARY).uri}",
    ]
    return "\n".join(lines)
