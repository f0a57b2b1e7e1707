"""GPU check: compute-only MFU of width-1.0 VGG13 and end-to-end ``facs pretrain`` on one GPU.

Run through ``benchmarks/gpu_check.sh`` (which exits 0 at once on a machine without a CUDA GPU).
Within about 8 minutes on one GPU it writes ``benchmarks/results/gpu.json``:

1. compute-only: training steps on ready uint8 batches already on the device (augmentation,
   bf16 autocast, channels_last, Adam), batches 256-4,096, without and with ``torch.compile``:
   samples/s and MFU = achieved FLOP/s / the assumed dense bf16 peak (989 TFLOP/s: H100/H200);
2. end to end: ``facs pretrain`` through the real CLI with 1 worker on the GPU over a synthetic
   corpus of ``--rows`` rows (written by ``tests/corpus_fixture.py``, the corpus's own schema):
   samples/s and data-wait fraction of the steady epochs (the first is warm-up), and the ratio
   end-to-end / compute-only at the same batch and compile setting.

Goals (issue 15): MFU >= 40%, end-to-end >= 0.8x compute-only, data-wait < 5%.

    bash benchmarks/gpu_check.sh                 # the whole check
    python benchmarks/gpu_check.py --rows 20000 --steps 60 --batch 512   # a shorter one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from corpus_fixture import make_corpus  # noqa: E402
from pretrain_throughput import gpu_mfu  # noqa: E402  (benchmarks/ is this script's folder)

RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"
GOALS = {"mfu": 0.40, "end_to_end_vs_compute": 0.8, "data_wait_fraction": 0.05}


def end_to_end(rows: int, batch: int, steps: int, compile_model: bool, folder: Path) -> dict:
    """``facs pretrain`` with 1 GPU worker; steady-epoch samples/s and data-wait from MLflow."""
    from mlflow.tracking import MlflowClient

    started = time.perf_counter()
    corpus = make_corpus(folder / "corpus", images=rows, identities=max(50, rows // 100), files=16)
    corpus_seconds = time.perf_counter() - started
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    cpus = max(1, (os.cpu_count() or 2) // 2)  # the rest stay free for Ray Data's read tasks
    command = [
        sys.executable, "-m", "cluster.cli", "pretrain", "--corpus", corpus.uri,
        "--workers", "1", "--gpus-per-worker", "1", "--cpus-per-worker", str(cpus),
        "--batch-size", str(batch), "--model-width", "1.0", "--max-steps", str(steps),
        "--max-epochs", "1000", "--patience", "0", "--val-batches", "2",
        "--compile" if compile_model else "--no-compile",
        "--storage-path", str(folder / "runs"), "--run-name", "gpu-check",
        "--mlflow-uri", tracking, "--register-as", "",
    ]  # fmt: skip
    print("[gpu_check] " + " ".join(command[2:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = time.perf_counter() - started
    client = MlflowClient(tracking)
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name LIKE 'gpu-check%'")

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}

    speed, wait = history("samples_per_s"), history("data_wait_fraction")
    steady = [e for e in sorted(speed) if e > 1] or sorted(speed)
    return {
        "command": "facs " + " ".join(command[3:]),
        "rows": rows,
        "batch": batch,
        "steps": steps,
        "compile": compile_model,
        "corpus_write_seconds": round(corpus_seconds, 1),
        "wall_seconds_with_startup": round(wall, 1),
        "samples_per_s_by_epoch": [round(speed[e], 1) for e in sorted(speed)],
        "samples_per_s_steady": round(statistics.median(speed[e] for e in steady), 1),
        "data_wait_fraction_steady": round(statistics.median(wait[e] for e in steady), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="256,512,1024,2048,4096", help="compute-only")
    parser.add_argument("--compile-batches", default="1024,4096", help="compute-only, compiled")
    parser.add_argument("--compute-steps", type=int, default=30)
    parser.add_argument("--rows", type=int, default=200_000, help="end-to-end corpus rows")
    parser.add_argument("--batch", type=int, default=1024, help="end-to-end batch")
    parser.add_argument("--steps", type=int, default=1000, help="end-to-end optimizer steps")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("[gpu_check] no CUDA GPU here: nothing measured, gpu.json left as it is")
        return
    started = time.perf_counter()
    batches = [int(b) for b in args.batches.split(",")]
    plain = gpu_mfu(batches, args.compute_steps, compile_model=False)
    compiled = gpu_mfu([int(b) for b in args.compile_batches.split(",")], args.compute_steps, True)
    with tempfile.TemporaryDirectory(prefix="facs-gpu-check-") as folder:
        e2e = end_to_end(args.rows, args.batch, args.steps, False, Path(folder))
    compute = {r["batch"]: r for r in plain["rows"] if "samples_per_s" in r}
    reference = compute.get(args.batch, {}).get("samples_per_s")
    ratio = e2e["samples_per_s_steady"] / reference if reference else None
    best_mfu = max((r["mfu"] for r in plain["rows"] + compiled["rows"] if "mfu" in r), default=0)
    results = {
        "command": "python " + " ".join(sys.argv),
        "device": plain["device"],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "torch": torch.__version__,
        "compute_only": plain,
        "compute_only_compiled": compiled,
        "end_to_end": e2e,
        "end_to_end_vs_compute_only": round(ratio, 3) if ratio else None,
        "best_mfu": best_mfu,
        "goals": GOALS,
        "meets": {
            "mfu": best_mfu >= GOALS["mfu"],
            "end_to_end_vs_compute": bool(ratio and ratio >= GOALS["end_to_end_vs_compute"]),
            "data_wait_fraction": e2e["data_wait_fraction_steady"] < GOALS["data_wait_fraction"],
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("best_mfu", "end_to_end_vs_compute_only", "meets")}))
    print(f"[gpu_check] wrote {args.out}")


if __name__ == "__main__":
    main()
