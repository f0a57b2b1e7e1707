"""Which pre-training recipe learns most at the demo's budget? Variants x seeds, through the CLI.

One demo-sized world (`facs synth celeb` 300 people x 10 photos, `facs synth disfa` 27 subjects,
`facs corpus build`); then, per seed and variant, `facs pretrain` exactly as `facs demo` runs it
(2 workers, 2,000 steps, width 0.125, batch 32) plus the variant's flags, and a linear probe of
the pre-trained features on the DISFA world's 3 folds (`training/linear_probe.py`: F1, PR-AUC and
ROC-AUC over the paper's 8 AUs, per fold then averaged), with the run's best validation loss.
Seeds vary the pre-training (initialisation, shuffling, augmentation) on the same world.
Writes ``benchmarks/results/pretrain_recipe.json`` with the command line.

    python benchmarks/pretrain_recipe.py                       # lr 1e-3 / 2e-3 / 3e-3 / cosine
    python benchmarks/pretrain_recipe.py --seeds 0 --variants "lr2e-3=--lr 0.002"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.disfa import DisfaConfig  # noqa: E402
from pipeline.vocabulary import PAPER_COMPARISON_AUS  # noqa: E402
from training.finetune import prepared_folds  # noqa: E402
from training.finetune_config import FinetuneConfig  # noqa: E402
from training.init_weights import resolve_init, trained_model  # noqa: E402
from training.linear_probe import probe_cross_validation  # noqa: E402
from tune.demo_config import SCALES  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "pretrain_recipe.json"
DEMO = SCALES["small"]
VARIANTS = (
    "lr1e-3=--lr 0.001",
    "lr2e-3=--lr 0.002",
    "lr3e-3=--lr 0.003",
    "lr1e-3-cosine=--lr 0.001 --schedule cosine",
)


def facs(log: Path, *args: str) -> None:
    text = "facs " + " ".join(shlex.quote(a) for a in args)
    print(f"[recipe] {text}", flush=True)
    with open(log, "a") as handle:
        handle.write(f"\n$ {text}\n")
        handle.flush()
        done = subprocess.run(
            [sys.executable, "-m", "cluster.cli", *args], cwd=ROOT, stdout=handle, stderr=handle
        )
    if done.returncode:
        raise SystemExit(f"[recipe] failed ({done.returncode}): {text}; see {log}")


def probe(work: Path, model: str, tracking: str) -> dict[str, float]:
    """The linear probe's F1 / PR-AUC / ROC-AUC (%) over the paper's 8 AUs, per fold then mean."""
    config = FinetuneConfig(disfa=DisfaConfig(root=str(work / "disfa"), cache=str(work / "cache")))
    frames, folds = prepared_folds(config)
    network = trained_model(resolve_init(model, tracking))
    metrics = probe_cross_validation(network, frames, folds, config.threshold)
    return {
        name: round(100 * metrics.mean(name, PAPER_COMPARISON_AUS), 2)
        for name in ("f1", "pr_auc", "roc_auc")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument(
        "--variants", default=";".join(VARIANTS), help="NAME=FLAGS pairs separated by ';'"
    )
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    variants = dict(item.split("=", 1) for item in args.variants.split(";") if item)
    seeds = [int(s) for s in args.seeds.split(",")]
    holder = tempfile.TemporaryDirectory(prefix="facs-recipe-")
    work = Path(args.work or holder.name)
    work.mkdir(parents=True, exist_ok=True)
    log, tracking = work / "recipe.log", f"sqlite:///{work / 'mlflow.db'}"
    started, load_before = time.perf_counter(), os.getloadavg()
    world = str(args.world_seed)
    facs(log, "synth", "celeb", "--out", str(work / "celeb"), "--people", str(DEMO.people),
         "--images-per-person", str(DEMO.images_per_person), "--seed", world,
         "--wild-noise", "0", "--use-ray")  # fmt: skip
    facs(log, "synth", "disfa", "--out", str(work / "disfa"), "--subjects",
         str(DEMO.disfa_subjects), "--frames", str(DEMO.disfa_frames), "--stride",
         str(DEMO.disfa_stride), "--seed", str(args.world_seed + 1), "--use-ray")  # fmt: skip
    celeb = work / "celeb"
    facs(log, "corpus", "build", "--corpus", str(work / "corpus"),
         "--tsv", str(celeb / "FaceImageCroppedWithAlignment.tsv"),
         "--labels-openface-images", str(celeb / "openface"), "--bios", str(celeb / "Bios"))  # fmt: skip
    runs: list[dict] = []
    for seed in seeds:
        for name, flags in variants.items():
            model = f"recipe-{name}-s{seed}"
            began = time.perf_counter()
            facs(log, "pretrain", "--corpus", str(work / "corpus"),
                 "--workers", str(DEMO.pretrain_workers), "--cpus-per-worker", "0.5",
                 "--batch-size", str(DEMO.batch_size), "--shuffle-buffer", "1024",
                 "--prefetch-batches", "2", "--max-steps", str(DEMO.pretrain_steps),
                 "--max-epochs", "10000", "--patience", "0", "--cache-data",
                 "--model-width", str(DEMO.width), "--seed", str(seed),
                 "--storage-path", str(work / "runs"), "--run-name", model,
                 "--mlflow-uri", tracking, "--register-as", model, *shlex.split(flags))  # fmt: skip
            scores = probe(work, f"models:/{model}/1", tracking)
            runs.append(
                {
                    "variant": name,
                    "flags": flags,
                    "seed": seed,
                    **scores,
                    "best_val_loss": best_val_loss(tracking, model),
                    "seconds": round(time.perf_counter() - began, 1),
                }
            )
            print(f"[recipe] {json.dumps(runs[-1])}", flush=True)
    summary = {
        name: {
            metric: {
                "per_seed": [r[metric] for r in runs if r["variant"] == name],
                "mean": round(float(np.mean([r[metric] for r in runs if r["variant"] == name])), 2),
            }
            for metric in ("f1", "pr_auc", "roc_auc", "best_val_loss")
        }
        for name in variants
    }
    results = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "question": "which pre-training recipe gives the best features at the demo's budget "
        "(2 workers x 2,000 steps, width 0.125, 3,000 noisily labelled photos)?",
        "metric": "linear probe of the frozen pre-trained features on the DISFA world: F1 (%) at "
        "0.5, PR-AUC and ROC-AUC over the paper's 8 AUs, per fold then averaged",
        "seeds": seeds,
        "world_seed": args.world_seed,
        "summary": summary,
        "runs": runs,
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    print(json.dumps(summary, indent=2))
    if not args.no_write:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"[recipe] wrote {RESULTS}")


def best_val_loss(tracking: str, model: str) -> float:
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    version = client.get_model_version(model, "1")
    return round(client.get_run(version.run_id).data.metrics["best_val_loss"], 4)


if __name__ == "__main__":
    main()
