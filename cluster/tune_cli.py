"""`facs tune`: the sweep's subcommand (registered by cluster/cli.py)."""

from __future__ import annotations

import argparse

from pipeline.options import config_parser, load_config, overrides_from_args
from pipeline.ray_runtime import ensure_ray
from tune.sweep_config import SweepConfig

HELP = (
    "Sweep DISFA fine-tuning hyper-parameters (Optuna TPE + ASHA on Ray Tune) on validation "
    "subjects; then, once, report the chosen config's test F1."
)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config_class, args.config, overrides_from_args(args))
    from tune.sweep import check_sweep, run_sweep

    check_sweep(config)
    ensure_ray(args.ray_address, progress_bars=True)
    result = run_sweep(config)
    return 3 if result.interrupted else 0


def register(stages) -> argparse.ArgumentParser:
    """Add ``facs tune`` to the ``facs`` subparsers ``stages``."""

    parser = config_parser(stages, "tune", SweepConfig, HELP, _run)
    parser.add_argument(
        "--disfa",
        dest="cfg__finetune__disfa__root",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="the DISFA folder (short for --finetune-disfa-root)",
    )
    return parser
