"""channels_last vs. the default (contiguous) memory format for VGG13 training on CPU.

The product used channels_last only on GPU. This times the fine-tuning/pre-training step as a CPU
worker runs it (one thread per worker: the demo gives each worker one CPU): uint8 faces ->
``to_model_input`` -> ``FaceAugment`` -> forward, BCE, backward, Adam; and the evaluation forward.
Both formats run side by side, alternating, ``--repeats`` times; the ratio is the median of the
per-repeat ratios. Writes ``benchmarks/results/cpu_memory_format.json``. Run it alone.

    python benchmarks/cpu_memory_format.py [--width 0.125] [--batch 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.augment import FaceAugment, to_model_input  # noqa: E402
from training.model import ModelConfig, build_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cpu_memory_format.json"


def step_seconds(channels_last: bool, width: float, batch: int, steps: int) -> dict[str, float]:
    """Mean seconds of one training step and one evaluation forward in one memory format."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=width, batch_norm=True, num_outputs=12))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    augment = FaceAugment()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    faces = torch.randint(0, 256, (batch, 64, 64), dtype=torch.uint8)
    targets = (torch.rand(batch, 12) > 0.7).float()

    def train_step() -> None:
        images = augment(to_model_input(faces, 0.5, channels_last=channels_last))
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    augment.train()
    for _ in range(3):
        train_step()
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    train = (time.perf_counter() - start) / steps
    model.eval()
    with torch.no_grad():
        model(to_model_input(faces, 0.5, channels_last=channels_last))
        start = time.perf_counter()
        for _ in range(steps):
            model(to_model_input(faces, 0.5, channels_last=channels_last))
        evaluate = (time.perf_counter() - start) / steps
    return {"train_step_ms": 1000 * train, "eval_forward_ms": 1000 * evaluate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    runs: list[dict] = []
    for repeat in range(args.repeats):
        pair = {}
        for name, flag in (("contiguous", False), ("channels_last", True)):
            pair[name] = step_seconds(flag, args.width, args.batch, args.steps)
        pair["train_speedup"] = (
            pair["contiguous"]["train_step_ms"] / pair["channels_last"]["train_step_ms"]
        )
        pair["eval_speedup"] = (
            pair["contiguous"]["eval_forward_ms"] / pair["channels_last"]["eval_forward_ms"]
        )
        runs.append(pair)
        print(
            f"repeat {repeat + 1}/{args.repeats}: train step "
            f"{pair['contiguous']['train_step_ms']:.1f} -> "
            f"{pair['channels_last']['train_step_ms']:.1f} ms (x{pair['train_speedup']:.2f}), "
            f"eval {pair['contiguous']['eval_forward_ms']:.1f} -> "
            f"{pair['channels_last']['eval_forward_ms']:.1f} ms (x{pair['eval_speedup']:.2f})",
            flush=True,
        )
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]]),
        "width": args.width,
        "batch": args.batch,
        "threads": args.threads,
        "torch": torch.__version__,
        "median_train_speedup": round(statistics.median(r["train_speedup"] for r in runs), 3),
        "median_eval_speedup": round(statistics.median(r["eval_speedup"] for r in runs), 3),
        "runs": runs,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
        },
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if not args.no_write:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
