"""The worker's input path, this tree against another commit: did a change slow it down?

Runs ``pretrain_throughput.py --input-path`` (one worker's Ray Data shard -> shuffle buffer ->
collate -> device copy, then augmentation; model step skipped) in this tree and in a worktree of
``--base``, alternating, ``--repeats`` times each; writes each run's steady rows/s and the median
ratio this tree / base per batch size and path to ``--out``.

    python benchmarks/input_path_ab.py --base dd8ab3c~1      # about 7 minutes alone on 2 cores
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "input_path_ab.json"


def rev(tree: Path, name: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", name], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def one_run(tree: Path, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """``{"<batch> <path>": steady rows/s}`` of one input-path run in ``tree``."""
    command = [
        sys.executable, "benchmarks/pretrain_throughput.py", "--input-path",
        "--input-rows", str(args.rows), "--repeats", "1", "--input-batches", args.batches,
        "--out", str(out),
    ]  # fmt: skip
    subprocess.run(command, cwd=tree, check=True, capture_output=True)
    rows = json.loads(out.read_text())["input_path"]["rows"]
    return {
        f"{row['batch']} {path}": row[path]["steady_rows_per_s_median"]
        for row in rows
        for path in ("uint8", "augmented")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batches", default="1024,4096")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="facs-ab-"))
    base_tree = scratch / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.base],
        check=True,
        capture_output=True,
    )
    runs: dict[str, list[dict[str, float]]] = {"this": [], "base": []}
    try:
        for repeat in range(args.repeats):
            for side, tree in (("base", base_tree), ("this", ROOT)):
                runs[side].append(one_run(tree, args, scratch / f"{side}-{repeat}.json"))
                print(f"[ab] {side} {repeat}: {runs[side][-1]}", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)])
    keys = list(runs["this"][0])
    medians = {
        side: {key: statistics.median(run[key] for run in side_runs) for key in keys}
        for side, side_runs in runs.items()
    }
    results = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "this": rev(ROOT, "HEAD"),
        "base": rev(ROOT, args.base),
        "what": "steady rows/s of one worker's input path (pretrain_throughput.py --input-path), "
        "alternating base / this, median of the runs; ratio = this / base",
        "median_rows_per_s": medians,
        "ratio_this_vs_base": {
            key: round(medians["this"][key] / medians["base"][key], 3) for key in keys
        },
        "runs": runs,
    }
    print(json.dumps(results["ratio_this_vs_base"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"[ab] wrote {args.out}")


if __name__ == "__main__":
    main()
