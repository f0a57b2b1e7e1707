"""What does `facs demo` show, and how long does it take? (The README's main job: <= 10 min.)

Runs the demo once, in a fresh temporary work dir with its own local Ray and MLflow store, exactly
as `facs demo` does, and writes the wall time per stage, Table III's headline figures (F1 over the
paper's 8 AUs, per fold then averaged: pre-trained, scratch, the measured labeler) and the claim
lines to benchmarks/results/demo.json (``--scale tiny`` writes demo_tiny.json), with the command.

    python benchmarks/demo_timing.py [--scale small] [--seed 0] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tune.demo import run_demo  # noqa: E402
from tune.demo_config import SCALES, DemoConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
LIMIT_MINUTES = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="small", choices=sorted(SCALES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    parser.add_argument(
        "--keep", type=Path, default=None, help="run in this new folder and keep it (default: "
        "a temporary one): worlds, corpus, checkpoints and each fold's test predictions",
    )  # fmt: skip
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="facs-demo-bench-") as work:
        start = time.perf_counter()
        workdir = args.keep or Path(work) / "demo"
        config = DemoConfig(scale=args.scale, workdir=str(workdir), seed=args.seed)
        result = run_demo(config)
        wall = time.perf_counter() - start
    results = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "scale": args.scale,
        "seed": args.seed,
        "label_noise": config.label_noise,
        "wild_noise": config.wild_noise,
        "preset": SCALES[args.scale].__dict__,
        "wall_seconds": round(wall, 1),
        "wall_minutes": round(wall / 60, 2),
        "limit_minutes": LIMIT_MINUTES if args.scale == "small" else None,
        "within_limit": wall / 60 <= LIMIT_MINUTES if args.scale == "small" else None,
        "stage_seconds": result.seconds,
        "f1_8au_fold_mean": result.f1_8au_fold_mean,
        "claims": result.claims,
        "table3": result.table3,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "note": "one run of `facs demo` (run_demo) from a cold local Ray, wall-clock",
    }
    print(json.dumps(results, indent=2))
    if not args.no_write:
        target = RESULTS / ("demo.json" if args.scale == "small" else f"demo_{args.scale}.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
