"""`facs demo`: its flags and dispatch (the workflow is ``tune.demo``)."""

from __future__ import annotations

import argparse
from typing import Any

from tune.demo_config import SCALES, DemoConfig


def _run(args: argparse.Namespace) -> int:
    from pipeline.options import load_config, overrides_from_args

    config = load_config(DemoConfig, args.config, overrides_from_args(args))
    from tune.demo import run_demo

    run_demo(config, ray_address=args.ray_address, verbose=getattr(args, "verbose", False))
    return 0


def register(stages: Any) -> argparse.ArgumentParser:
    """Add ``facs demo`` to the ``facs`` subcommands."""
    from pipeline.options import config_parser

    return config_parser(
        stages,
        "demo",
        DemoConfig,
        "The whole pipeline on synthetic data: worlds -> corpus -> pre-training (2 workers) -> "
        "3-fold fine-tuning, pre-trained vs. scratch -> Table III and the MLflow runs. "
        f"About {SCALES['small'].minutes_on_2_cores:g} minutes on 2 CPU cores at the default "
        "scale; --scale and the per-field options grow it.",
        _run,
    )
