"""Pre-training at a million rows, this tree against other commits: did a change slow it down?

``scale.py``'s pre-training step (2 DDP workers streaming over the whole corpus: the pixel-mean
pass over every training row, then 3 epochs of 20 steps), run through the real CLI in this tree
(or ``--this``), in a worktree of ``--base`` and of each ``--also NAME=REV``, every one in turn
(base first) in each of ``--repeats`` rounds, on one corpus (``--corpus``, else built once by this
tree from ``--rows`` rows as ``scale.py`` builds it). Each run's seconds, corpus rows/s and peak
memory (PSS of the process tree) are written to ``--out`` with each commit's median ratio to
base's. Every command starts from the environment this script was launched in.

Written to find what running the corpus's read tasks in workers of their own (``READ_TASK_ENV``)
cost: Ray Data's 32 footer-reading actors per read, each a new process in the read's
environment (``results/pretrain_ab.json``).

    python benchmarks/pretrain_ab.py --base dd8ab3c~1      # about 16 minutes alone on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from input_path_ab import rev  # benchmarks/ is this script's folder
from scale import ROOT, Runner, add_pretrain_arguments, face_pool, pretrain_args, write_inputs

from pipeline.labels.release_csv import RELEASE_HEADER

RESULTS = ROOT / "benchmarks" / "results" / "pretrain_ab.json"


def worktree(folder: Path, commit: str) -> Path:
    """A detached worktree of ``commit`` in ``folder``."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), commit],
        check=True,
        capture_output=True,
    )
    return folder


def build_corpus(runner: Runner, args: argparse.Namespace, scratch: Path) -> str:
    """A corpus of ``--rows`` rows built as ``scale.py`` builds it."""
    pool = face_pool(runner, scratch / "pool", args.pool_people)
    tsv, csv = write_inputs(pool, 0, args.rows, scratch / "input")
    header = scratch / "labels.txt"
    header.write_text("Headers\n" + ",".join(RELEASE_HEADER) + "\n")
    corpus = str(scratch / "corpus")
    runner.facs("corpus", "build", "--corpus", corpus, "--tsv", str(tsv),
                "--labels-release-csv", str(csv), "--face-detector", "none",
                "--labels-release-header", str(header))  # fmt: skip
    return corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--this", default="", help="a commit to run instead of this tree")
    parser.add_argument("--corpus", default="", help="a corpus scale.py built (skips the build)")
    parser.add_argument(
        "--also", action="append", default=[], metavar="NAME=REV",
        help="a further commit run in the same rotation (repeatable)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    add_pretrain_arguments(parser)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="facs-pretrain-ab-"))
    trees = {"base": worktree(scratch / "base", args.base)}
    commits = {"base": args.base}
    for name, _, commit in (item.partition("=") for item in args.also):
        trees[name] = worktree(scratch / name, commit)
        commits[name] = commit
    trees["this"] = worktree(scratch / "this", args.this) if args.this else ROOT
    commits["this"] = args.this or "HEAD"
    runners = {side: Runner(scratch / f"{side}.log", tree) for side, tree in trees.items()}
    runs: dict[str, list[dict]] = {side: [] for side in trees}
    try:
        corpus = args.corpus or build_corpus(runners["this"], args, scratch)
        for repeat in range(args.repeats):
            for side in trees:
                runs_dir = scratch / f"runs-{side}-{repeat}"
                result = runners[side].facs(*pretrain_args(args, corpus, runs_dir, "ab"))
                result["rows_per_s"] = round(args.rows / result["seconds"], 1)
                runs[side].append(result)
    finally:
        for tree in trees.values():
            if tree != ROOT:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)])
    medians = {
        side: {
            key: statistics.median(run[key] for run in side_runs)
            for key in ("seconds", "rows_per_s", "peak_memory_gb")
        }
        for side, side_runs in runs.items()
    }
    results = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "commits": {side: rev(ROOT, commit) for side, commit in commits.items()},
        "what": "scale.py's pretrain step on one corpus of --rows rows, each repeat running "
        "every commit in turn (base first); rows/s = corpus rows / the command's seconds; "
        "median of the runs; ratio = a commit's median / base's",
        "median": medians,
        "ratio_vs_base": {
            side: {key: round(value / medians["base"][key], 3) for key, value in median.items()}
            for side, median in medians.items()
            if side != "base"
        },
        "runs": runs,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(results["ratio_vs_base"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"[ab] wrote {args.out}")


if __name__ == "__main__":
    main()
