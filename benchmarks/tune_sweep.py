"""Does a `facs tune` sweep beat the paper's fine-tuning defaults on validation? (CPU, synthetic.)

A synthetic DISFA world -> ``run_sweep``: Optuna TPE + ASHA over the issue's search space, the
paper's defaults (lr 1e-4, batch 32, no weighting, 0.5 threshold, ...) as trial 1, every trial
judged on the validation subjects of the paper's 3 folds (restricted to the subjects present);
then, once, the chosen config cross-validated on the test subjects.

The networks start from scratch (no pre-training stage here, to stay within ~10 minutes on 2
cores); the question is the sweep's, not pre-training's. Writes
``benchmarks/results/tune_sweep.json`` whichever way the comparison goes.

    python benchmarks/tune_sweep.py                       # ~10 min on 2 cores
    python benchmarks/tune_sweep.py --trials 2 --epochs 1 --frames 30 --out /tmp/x.json  # smoke
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

from pipeline.disfa import DisfaConfig  # noqa: E402
from pipeline.ray_runtime import ensure_ray  # noqa: E402
from pipeline.synth.disfa_world import generate_disfa  # noqa: E402
from training.finetune_config import FinetuneConfig  # noqa: E402
from training.model import ModelConfig  # noqa: E402
from tune.sweep import run_sweep  # noqa: E402
from tune.sweep_config import SearchSpace, SweepConfig  # noqa: E402
from tune.sweep_result import result_json  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=9)
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batches-per-epoch", type=int, default=8)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/tune_sweep.json"))
    args = parser.parse_args()

    ensure_ray(num_cpus=os.cpu_count(), progress_bars=False)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="facs-tune-bench-") as tmp:
        world = generate_disfa(f"{tmp}/disfa", subjects=args.subjects, frames=args.frames, seed=3)
        finetune = FinetuneConfig(
            disfa=DisfaConfig(root=world.out, cache=f"{tmp}/cache"),
            init="scratch",
            model=ModelConfig(width=args.width),
            val_subjects=1,
            max_epochs=args.epochs,
            batches_per_epoch=args.batches_per_epoch,
            cpus_per_worker=1.0,
            shuffle_buffer=256,
            mlflow_uri=f"sqlite:///{tmp}/mlflow.db",
            plots=False,
        )
        config = SweepConfig(
            finetune=finetune,
            space=SearchSpace(batch_sizes=[16, 32], patiences=[2, 10]),
            num_samples=args.trials,
            cpus_per_trial=1.0,
            grace_period=1,
            reduction_factor=2,
            storage_path=f"{tmp}/sweeps",
            name="bench",
        )
        result = run_sweep(config)
    seconds = time.perf_counter() - start
    report = {
        "question": "does the tuned config beat the paper's fine-tuning defaults on validation?",
        "setup": {
            "disfa_subjects": list(world.subjects),
            "frames_per_video": args.frames,
            "init": "scratch (no pre-training in this benchmark)",
            "width": args.width,
            "max_epochs": args.epochs,
            "batches_per_epoch": args.batches_per_epoch,
            "trials": args.trials,
            "scheduler": "ASHA grace 1, reduction 2, on mean validation F1 over the 3 folds",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch CPU",
        },
        "defaults_val_f1": result.defaults.val_f1 if result.defaults else None,
        "best_val_f1": result.best.val_f1 if result.best else None,
        "tuned_beats_defaults_on_validation": result.beats_defaults,
        "best_params": result.best.params if result.best else None,
        "test_of_chosen_config": result.test,
        "trials": [
            {
                "params": t.params,
                "epochs": t.epochs,
                "val_f1": t.val_f1,
                "val_f1_fixed": t.val_f1_fixed,
                "val_f1_tuned": t.val_f1_tuned,
                "is_defaults": t.is_defaults,
            }
            for t in result.trials
        ],
        "seconds": round(seconds, 1),
        "raw": {k: v for k, v in result_json(result).items() if k in ("name", "interrupted")},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report[k] for k in list(report)[1:6]}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
