"""`facs experiment scaling`: the scaling experiment's subcommand (registered by cluster/cli.py)."""

from __future__ import annotations

import argparse

from pipeline.options import (
    config_parser,
    from_dict,
    merge_dicts,
    overrides_from_args,
    read_yaml_mapping,
)
from pipeline.ray_runtime import ensure_ray
from tune.scaling_config import ScalingStudyConfig

HELP = (
    "Pre-train on gender-balanced subsets of the corpus (by images and by people), fine-tune "
    "each on DISFA with one protocol, and write Tables IV/V and Figures 3/4."
)


def load_scaling_config(yaml_path: str | None, overrides: dict | None = None) -> ScalingStudyConfig:
    """Defaults <- ``pretrain_yaml``/``finetune_yaml`` <- the scaling YAML <- flags (flags win)."""
    data = merge_dicts(read_yaml_mapping(yaml_path) if yaml_path else {}, overrides or {})
    for section in ("pretrain", "finetune"):
        base = data.get(f"{section}_yaml")
        if base:
            data[section] = merge_dicts(read_yaml_mapping(base), data.get(section) or {})
    return from_dict(
        ScalingStudyConfig, data, where=str(yaml_path) if yaml_path else "ScalingStudyConfig"
    )


def config_from_args(args: argparse.Namespace) -> ScalingStudyConfig:
    return load_scaling_config(args.config, overrides_from_args(args))


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from tune.scaling import check_scaling, run_scaling

    check_scaling(config)
    ensure_ray(args.ray_address, progress_bars=True)
    result = run_scaling(config)
    for axis in ("images", "identities"):
        for point in result.axis(axis):
            print(
                f"{axis:>10} {point.x(axis):>8,} ({point.images:,} images, {point.people:,} "
                f"people): F1 {100 * point.mean('f1'):.1f} (12 AUs "
                f"{100 * point.mean('f1', paper8=False):.1f}), PR-AUC "
                f"{100 * point.mean('pr_auc'):.1f}, ROC-AUC {100 * point.mean('roc_auc'):.1f}"
            )
    print(f"report: {result.report_uri} (MLflow run {result.mlflow_run_id})")
    return 0


def register(stages) -> argparse.ArgumentParser:
    """Add ``facs experiment scaling`` to the ``facs`` subparsers; returns its parser."""

    experiment = stages.add_parser("experiment", help="the paper's experiments (scaling)")
    commands = experiment.add_subparsers(dest="command", required=True)
    parser = config_parser(commands, "scaling", ScalingStudyConfig, HELP, _run)
    parser.add_argument(
        "--disfa",
        dest="cfg__disfa__root",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="the DISFA folder (short for --disfa-root)",
    )
    parser.add_argument(
        "--pretrain-steps",
        dest="cfg__pretrain__max_steps",
        type=int,
        metavar="N",
        default=argparse.SUPPRESS,
        help="optimizer steps of every point's pre-training (short for --pretrain-max-steps): "
        "a fixed budget, so a bigger subset gets more data, not more steps",
    )
    return parser
