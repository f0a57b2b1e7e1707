"""How long does `facs demo` take at its default scale on this machine? (The README promises <= 15 min.)

Runs the demo once, in a fresh temporary work dir with its own local Ray and MLflow store, exactly
as `facs demo` does, and writes the wall time per stage to benchmarks/results/demo.json.

    python benchmarks/demo_timing.py [--scale small] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.demo import run_demo  # noqa: E402
from cluster.demo_config import SCALES, DemoConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "demo.json"
LIMIT_MINUTES = 15.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="small", choices=sorted(SCALES))
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="facs-demo-bench-") as work:
        start = time.perf_counter()
        result = run_demo(DemoConfig(scale=args.scale, workdir=str(Path(work) / "demo")))
        wall = time.perf_counter() - start
    results = {
        "scale": args.scale,
        "preset": SCALES[args.scale].__dict__,
        "wall_seconds": round(wall, 1),
        "wall_minutes": round(wall / 60, 2),
        "limit_minutes": LIMIT_MINUTES if args.scale == "small" else None,
        "within_limit": wall / 60 <= LIMIT_MINUTES if args.scale == "small" else None,
        "stage_seconds": result.seconds,
        "mean_f1_12": {arm: round(f1, 4) for arm, f1 in result.mean_f1.items()},
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
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
