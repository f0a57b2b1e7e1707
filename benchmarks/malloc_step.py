"""glibc malloc settings against a CPU training step: why the heap trim is only for read workers.

Each setting runs in a fresh process (glibc reads ``MALLOC_*`` when a process starts): the VGG13
(``--width``, channels_last, one torch thread) takes 20 Adam steps on a batch of 32; the median of
the last 15 is one run. Settings alternate, ``--repeats`` runs each; medians and ratios against
glibc's defaults go to ``benchmarks/results/malloc_step.json``.

    python benchmarks/malloc_step.py [--width 0.25] [--repeats 3]      # about 2 minutes alone
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "malloc_step.json"
SETTINGS: dict[str, dict[str, str]] = {
    "glibc defaults": {},
    "trim 0 (what the corpus read workers get)": {"MALLOC_TRIM_THRESHOLD_": "0"},
    "trim 0, mmap threshold 32 MiB": {
        "MALLOC_TRIM_THRESHOLD_": "0",
        "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    },
}
STEP = """
import statistics, sys, time
import torch
sys.path.insert(0, {root!r})
from training.model import build_model
from training.model_config import ModelConfig
torch.set_num_threads(1)
model = build_model(ModelConfig(width={width})).to(memory_format=torch.channels_last)
optimizer = torch.optim.Adam(model.parameters(), 1e-3)
x = torch.randn(32, 1, 64, 64).to(memory_format=torch.channels_last)
y = (torch.rand(32, 17) > 0.5).float()
times = []
for i in range(20):
    started = time.perf_counter()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if i >= 5:
        times.append(time.perf_counter() - started)
print(statistics.median(times) * 1000)
"""


def one_run(width: float, env: dict[str, str]) -> float:
    """Median milliseconds per step in a fresh process started with ``env`` added."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", STEP.format(root=str(ROOT), width=width)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for repeat in range(args.repeats):
        for name, env in SETTINGS.items():
            runs[name].append(round(one_run(args.width, env), 2))
            print(f"[malloc] {repeat} {name}: {runs[name][-1]:.1f} ms/step", flush=True)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    base = medians["glibc defaults"]
    results = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "what": f"ms per CPU training step, width {args.width}, batch 32, one torch thread, "
        "channels_last; median of the last 15 of 20 steps a run, median over runs",
        "settings": SETTINGS,
        "median_ms_per_step": medians,
        "ratio_vs_glibc_defaults": {name: round(m / base, 3) for name, m in medians.items()},
        "runs": runs,
    }
    print(json.dumps(results["ratio_vs_glibc_defaults"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
