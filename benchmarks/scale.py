"""Millions of images: build, grow, describe, subset and pre-train on a 1,000,000-row corpus.

Through the real CLI, at two sizes (100,000 rows and ``--rows``, 1,000,000 by default), each step
timed and its peak memory measured: the proportional set size (PSS, so the object store's shared
pages count once) summed over the CLI process and every process under it (the local Ray it
starts: GCS, raylet, workers), sampled every 0.05 s at a step's start, the interval growing by a
tenth a sample to 0.5 s (a step of a second is sampled about 15 times, not twice); the CLI
process's own exact peak RSS (from ``wait4``) is recorded beside it.

Input, in the formats users have at this size:
- an MS-Celeb-1M TSV (``FaceImageCroppedWithAlignment.tsv`` columns: MID, rank, URLs, FaceID,
  FaceRectangle, base64 FaceData): a pool of faces rendered by ``facs synth celeb`` (as 96 px
  JPEGs, about 3 KB, the size of an aligned crop), each row's
  JPEG given a comment segment with its row number, so every row's bytes (and content hash) differ
  and nothing is dropped as a duplicate; 10 images per person (100,000 people at 1M);
- the paper's released label-CSV format (header-less CSV + ``labels.txt``), one line per image.
The crops are aligned faces, so the build runs with ``--face-detector none`` (as the paper's
MS-Celeb crops allow).

Steps, per size: ``corpus build``; ``corpus add`` of 100,000 further rows (the growing corpus);
``corpus stats``; ``corpus subset --images 100000`` and ``--identities 1000``; ``pretrain``
streaming over the whole corpus (its pixel-mean pass reads every training row; epochs are bounded
by ``--batches-per-epoch`` and each reads the files in a new order). Goals (issue 15): peak memory
at 1M <= 1.3x at 100k for every step; build rows/s at 1M >= 0.9x at 100k.

    python benchmarks/scale.py                        # 100k and 1M rows (about 8 min alone)
    python benchmarks/scale.py --rows 20000 --small 5000 --add-rows 2000 --no-write   # a smoke run
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

#: The environment this benchmark was started in, taken before any import of the package sets
#: its defaults in it (``pipeline/__init__``): each ``facs`` command, of whichever tree, starts
#: from this, so a tree without a default does not inherit this tree's.
LAUNCH_ENV = dict(os.environ)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpus_build import with_comment  # noqa: E402  (benchmarks/ is this script's folder)

from pipeline.labels import read_openface_image_csvs  # noqa: E402
from pipeline.labels.release_csv import RELEASE_HEADER  # noqa: E402
from pipeline.names import image_key, msceleb_image_name  # noqa: E402
from pipeline.sources.msceleb_tsv import parse_tsv_line  # noqa: E402
from pipeline.vocabulary import OPENFACE_AUS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
IMAGES_PER_PERSON = 10
#: Side of the pool's JPEGs: aligned crops (the renderer's 256 px photos decode 5x slower).
CROP_SIDE = 96
GOALS = {"memory_1m_vs_100k_max": 1.3, "build_rows_per_s_1m_vs_100k_min": 0.9}


def process_kind(process: psutil.Process) -> str:
    """A short name for what a process is: the CLI, a Ray daemon, or a Ray worker's task."""
    name = process.name()
    if name.startswith("ray::"):
        return name.split("(")[0]
    line = " ".join(process.cmdline()[:3])
    for daemon in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env"):
        if daemon in line:
            return daemon
    return "cli" if "cluster.cli" in line else name


class TreeMemory:
    """Peak PSS summed over a process and all its descendants: sampled every ``first`` s at the
    start, each interval a tenth longer than the one before, up to ``every`` s."""

    def __init__(self, pid: int, every: float = 0.5, first: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.every, self.first = every, first
        self.peak = 0
        #: PSS by kind of process at the peak sample (what grows with the corpus, and where).
        self.peak_parts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[str, int]:
        parts: dict[str, int] = {}
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return parts
        for process in processes:
            try:
                pss = process.memory_full_info().pss
                kind = process_kind(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            parts[kind] = parts.get(kind, 0) + pss
        return parts

    def _run(self) -> None:
        interval = self.first
        while not self._stop.is_set():
            parts = self._sample()
            if sum(parts.values()) > self.peak:
                self.peak, self.peak_parts = sum(parts.values()), parts
            self._stop.wait(interval)
            interval = min(self.every, interval * 1.1)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Runner:
    """Runs ``facs`` commands, each timed and memory-sampled; output goes to one log file.
    ``tree`` is the checkout whose code runs (the driver's and, by ``PYTHONPATH``, its Ray
    workers'): this one, or another commit's worktree in an A/B."""

    def __init__(self, log: Path, tree: Path = ROOT) -> None:
        self.log = log
        self.tree = tree

    def facs(self, *args: str) -> dict:
        text = "facs " + " ".join(shlex.quote(a) for a in args)
        print(f"[scale] {text}", flush=True)
        with open(self.log, "a") as handle:
            handle.write(f"\n$ {text}\n")
            handle.flush()
            started = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-m", "cluster.cli", *args],
                cwd=self.tree,
                env={**LAUNCH_ENV, "PYTHONPATH": str(self.tree)},
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
            with TreeMemory(process.pid) as memory:
                _, status, usage = os.wait4(process.pid, 0)
            process.returncode = code = os.waitstatus_to_exitcode(status)
            seconds = time.perf_counter() - started
        if code:
            raise SystemExit(f"[scale] failed ({code}): {text}; see {self.log}")
        print(f"[scale]   {seconds:.0f} s, peak {memory.peak / 2**30:.2f} GiB", flush=True)
        return {
            "command": text,
            "seconds": round(seconds, 1),
            "peak_memory_gb": memory.peak / 1e9,
            "cli_max_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3),
            "peak_by_process_gb": {
                kind: round(pss / 1e9, 3)
                for kind, pss in sorted(memory.peak_parts.items(), key=lambda item: -item[1])
            },
        }


def face_pool(runner: Runner, folder: Path, people: int) -> list[tuple[bytes, list[int]]]:
    """Faces rendered by ``facs synth celeb`` with their labeler's AU presence, as a pool."""
    runner.facs("synth", "celeb", "--out", str(folder), "--tiers", f"{people}x8", "--seed", "7")
    labels = read_openface_image_csvs(str(folder / "openface"))
    by_key = {
        image_key(name): [int(labels[au][i].as_py() == 1) for au in OPENFACE_AUS]
        for i, name in enumerate(labels["image_name"].to_pylist())
    }
    pool = []
    tsv = folder / "FaceImageCroppedWithAlignment.tsv"
    for line in tsv.read_bytes().splitlines():
        record = parse_tsv_line(line, str(tsv))
        if record["reject_reason"] is None and image_key(record["image_name"]) in by_key:
            pool.append((aligned_crop(record["data"]), by_key[image_key(record["image_name"])]))
    if not pool:
        raise SystemExit(f"[scale] no labelled faces in {folder}")
    return pool


def aligned_crop(jpeg: bytes, side: int = CROP_SIDE) -> bytes:
    """The rendered photo as a ``side`` px JPEG, the size of an aligned face crop."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def write_inputs(
    pool: list[tuple[bytes, list[int]]], first: int, rows: int, folder: Path
) -> tuple[Path, Path]:
    """Rows ``first .. first+rows-1`` as an MS-Celeb TSV and a released label CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    tsv, csv = folder / "FaceImageCroppedWithAlignment.tsv", folder / "labels.csv"
    au_at = {au: RELEASE_HEADER.index(au) for au in OPENFACE_AUS}
    rectangle = base64.b64encode(bytes(16)).decode()
    started = time.perf_counter()
    with open(tsv, "w") as faces, open(csv, "w") as labels:
        for row in range(first, first + rows):
            jpeg, aus = pool[row % len(pool)]
            person, rank = divmod(row, IMAGES_PER_PERSON)
            mid = f"m.sc{person:x}"
            data = base64.b64encode(with_comment(jpeg, f"facs-scale row {row}")).decode()
            faces.write(
                f"{mid}\t{rank}\thttp://img/{row}\thttp://page/{row}\t0\t{rectangle}\t{data}\n"
            )
            values = ["0"] * len(RELEASE_HEADER)
            values[0] = msceleb_image_name(mid, rank, 0)
            values[1], values[2] = "112", str(person % 2)
            for k, au in enumerate(OPENFACE_AUS):
                values[au_at[au]] = str(aus[k])
            labels.write(",".join(values) + "\n")
    print(f"[scale] wrote {rows:,} rows to {tsv} in {time.perf_counter() - started:.0f} s")
    return tsv, csv


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    """The face pool's size and the pre-training step's sizes (``pretrain_args`` reads them)."""
    parser.add_argument("--pool-people", type=int, default=64, help="x8 rendered faces")
    parser.add_argument("--batch", type=int, default=64, help="pre-training batch per worker")
    parser.add_argument("--batches-per-epoch", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)


def pretrain_args(args: argparse.Namespace, corpus: str, runs: Path, name: str) -> list[str]:
    """The pre-training step: 2 DDP workers streaming over the whole corpus (a pixel-mean pass
    over every training row, then ``--epochs`` epochs of ``--batches-per-epoch`` steps)."""
    return [
        "pretrain", "--corpus", corpus, "--workers", "2", "--cpus-per-worker", "0.5",
        "--batch-size", str(args.batch), "--model-width", "0.125",
        "--batches-per-epoch", str(args.batches_per_epoch), "--max-epochs", str(args.epochs),
        "--val-batches", "2", "--patience", "0", "--cache-data",
        "--storage-path", str(runs), "--run-name", name,
        "--mlflow-uri", f"sqlite:///{runs}.db", "--register-as", "",
    ]  # fmt: skip


def one_size(args: argparse.Namespace, runner: Runner, pool: list, work: Path, rows: int) -> dict:
    """Every step at one corpus size; ``{step: {seconds, rows, rows_per_s, peak_memory_gb}}``."""
    header = work / "labels.txt"
    header.write_text("Headers\n" + ",".join(RELEASE_HEADER) + "\n")
    tsv, csv = write_inputs(pool, 0, rows, work / f"input-{rows}")
    add_tsv, add_csv = write_inputs(pool, rows, args.add_rows, work / f"add-{rows}")
    corpus = str(work / f"corpus-{rows}")
    faces = ["--face-detector", "none", "--labels-release-header", str(header)]
    steps: dict[str, dict] = {}

    def record(step: str, result: dict, count: int) -> None:
        steps[step] = {**result, "rows": count, "rows_per_s": round(count / result["seconds"], 1)}

    record(
        "build",
        runner.facs("corpus", "build", "--corpus", corpus, "--tsv", str(tsv),
                    "--labels-release-csv", str(csv), *faces),
        rows,
    )  # fmt: skip
    record(
        "add",
        runner.facs("corpus", "add", "--corpus", corpus, "--tsv", str(add_tsv),
                    "--labels-release-csv", str(add_csv), *faces),
        args.add_rows,
    )  # fmt: skip
    total = rows + args.add_rows
    record("stats", runner.facs("corpus", "stats", "--corpus", corpus, "--json"), total)
    images = runner.facs("corpus", "subset", "--corpus", corpus, "--name", "images",
                         "--images", str(args.subset_images))  # fmt: skip
    people = runner.facs("corpus", "subset", "--corpus", corpus, "--name", "people",
                         "--identities", str(args.subset_identities))  # fmt: skip
    record("subset_images", images, total)
    record("subset_identities", people, total)
    steps["subset"] = {
        "seconds": round(images["seconds"] + people["seconds"], 1),
        "rows": 2 * total,
        "rows_per_s": round(2 * total / (images["seconds"] + people["seconds"]), 1),
        "peak_memory_gb": max(images["peak_memory_gb"], people["peak_memory_gb"]),
    }
    pretrain = runner.facs(*pretrain_args(args, corpus, work / f"runs-{rows}", "scale"))
    record("pretrain", pretrain, total)  # its pixel-mean pass reads every training row
    steps["pretrain"]["samples_trained"] = 2 * args.batch * args.batches_per_epoch * args.epochs
    manifest = json.loads(Path(corpus, "manifest.json").read_text())
    steps["build"]["accepted"] = manifest["versions"][0]["accepted"]
    steps["build"]["rejected"] = manifest["versions"][0]["rejected"]
    steps["add"]["accepted"] = manifest["versions"][1]["accepted"]
    steps["add"]["rejected"] = manifest["versions"][1]["rejected"]
    steps["build"]["manifest_bytes"] = Path(corpus, "manifest.json").stat().st_size
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="the large corpus")
    parser.add_argument("--small", type=int, default=100_000, help="the reference corpus")
    parser.add_argument("--add-rows", type=int, default=100_000)
    parser.add_argument("--subset-images", type=int, default=100_000)
    parser.add_argument("--subset-identities", type=int, default=1000)
    add_pretrain_arguments(parser)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="facs-scale-")
    work = args.work or Path(scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    runner = Runner(work / "scale.log")
    started, load_before = time.perf_counter(), os.getloadavg()
    pool = face_pool(runner, work / "pool", args.pool_people)
    sizes = {}
    for rows in (args.small, args.rows):
        sizes[rows] = one_size(args, runner, pool, work, rows)
    small, large = sizes[args.small], sizes[args.rows]
    steps = {}
    for step in ("build", "add", "stats", "subset", "pretrain"):
        memory_ratio = large[step]["peak_memory_gb"] / small[step]["peak_memory_gb"]
        speed_ratio = large[step]["rows_per_s"] / small[step]["rows_per_s"]
        steps[step] = {
            "rows_per_s_100k": small[step]["rows_per_s"],
            "rows_per_s_1m": large[step]["rows_per_s"],
            "peak_memory_gb_100k": round(small[step]["peak_memory_gb"], 3),
            "peak_memory_gb_1m": round(large[step]["peak_memory_gb"], 3),
            "memory_ratio": round(memory_ratio, 3),
            "rows_per_s_ratio": round(speed_ratio, 3),
            "meets_memory_goal": memory_ratio <= GOALS["memory_1m_vs_100k_max"],
        }
    steps["build"]["meets_speed_goal"] = (
        steps["build"]["rows_per_s_ratio"] >= GOALS["build_rows_per_s_1m_vs_100k_min"]
    )
    results = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "rows": args.rows + args.add_rows,
        "sizes": {"100k": args.small, "1m": args.rows},
        "memory": "peak PSS summed over the CLI process and every process under it (GB, 1e9)",
        "goals": GOALS,
        "steps": steps,
        "detail": {str(rows): size for rows, size in sizes.items()},
        "face_pool": len(pool),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "platform": platform.platform(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    print(json.dumps(steps, indent=2))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"[scale] wrote {RESULTS}")


if __name__ == "__main__":
    main()
