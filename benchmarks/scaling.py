"""Does DISFA F1 rise with the number of pre-training images and of people? (the paper's Figs 3, 4)

The paper's scaling experiments in miniature, through the product's own stages, on CPU:

1. a synthetic MS-Celeb world (noisy labels; ``--label-noise 1.0`` is OpenFace-like, the default
   0.5 is what a thin net learns from in a few CPU epochs) -> ``facs corpus build``;
2. a synthetic DISFA world (videos + intensity files in DISFA's layout);
3. ``run_scaling``: gender-balanced subsets by images and by people (+ the whole corpus), each
   pre-trained and fine-tuned (3 subject-independent folds) with one shared protocol.

Writes ``benchmarks/results/scaling.json`` (every point's images, people, F1 over 12 and 8 AUs,
PR-AUC, ROC-AUC, per-AU F1, MLflow run ids; Tables IV and V; whether F1 rose) and the two figures
``scaling_images.png`` and ``scaling_people.png``, whichever way the figures go.

    python benchmarks/scaling.py                       # ~45 min on 2 quiet cores
    python benchmarks/scaling.py --folds 1             # one fold: about a third of that
    python benchmarks/scaling.py --people 40 --images 60,all --identities 8,all \\
        --pretrain-epochs 1 --finetune-epochs 1 --no-write        # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.corpus.build import build_version  # noqa: E402
from pipeline.disfa import DisfaConfig  # noqa: E402
from pipeline.ray_runtime import ensure_ray  # noqa: E402
from pipeline.synth.celeb_world import generate_celeb  # noqa: E402
from pipeline.synth.disfa_world import generate_disfa  # noqa: E402
from training.augment import AugmentConfig  # noqa: E402
from training.evaluate import json_ready  # noqa: E402
from training.finetune_config import FinetuneConfig  # noqa: E402
from training.model import ModelConfig  # noqa: E402
from training.pretrain_config import PretrainConfig  # noqa: E402
from tune.scaling import run_scaling  # noqa: E402
from tune.scaling_config import ScalingConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def rank_correlation(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho (no ties expected in xs); None for fewer than 3 points."""
    if len(xs) < 3:
        return None
    rx = np.argsort(np.argsort(xs)).astype(float)
    ry = np.argsort(np.argsort(ys)).astype(float)
    return float(np.corrcoef(rx, ry)[0, 1])


def trend(result, axis: str) -> dict:
    points = result.axis(axis)
    xs = [p.x(axis) for p in points]
    figures = {}
    for metric in ("f1", "pr_auc", "roc_auc"):
        ys = [p.mean(metric) for p in points]
        figures[metric] = {
            "paper8": [round(y, 4) for y in ys],
            "spearman_vs_size": rank_correlation(xs, ys),
            "largest_minus_smallest": round(ys[-1] - ys[0], 4) if ys else None,
        }
    f1 = [p.mean("f1", paper8=False) for p in points]
    return {
        "sizes": xs,
        "points": [p.key for p in points],
        "f1_mean_12": [round(y, 4) for y in f1],
        **figures,
        "f1_mean_12_rises": bool(len(f1) >= 2 and f1[-1] > f1[0]),
        "f1_mean_12_monotonic": bool(all(b >= a for a, b in zip(f1, f1[1:], strict=False))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--images-per-person", type=int, default=10)
    parser.add_argument("--label-noise", type=float, default=0.5, help="1.0 ~ OpenFace 2.0")
    parser.add_argument("--rates", default="celeb", choices=["celeb", "balanced"])
    parser.add_argument("--subjects", type=int, default=27)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--images", default="300,1000,all")
    parser.add_argument("--identities", default="12,60,all")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument(
        "--no-batch-norm", action="store_true", help="the paper's net (no BatchNorm after convs)"
    )
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--pretrain-lr", type=float, default=0.001)
    parser.add_argument("--pretrain-steps", type=int, default=None, help="cap per epoch")
    parser.add_argument("--finetune-epochs", type=int, default=20)
    parser.add_argument("--finetune-patience", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=2, help="points run at once")
    parser.add_argument(
        "--folds", default="", help="only these folds (e.g. 1); default: all 3 (slower)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--no-write", action="store_true", help="do not write the results files")
    args = parser.parse_args()

    # Concurrent points' trainers must leave a CPU free for the Ray Data tasks that feed them.
    cpus_per_worker = min(1.0, max(0.25, ((os.cpu_count() or 2) - 1) / args.concurrent))
    load_before = os.getloadavg()
    ensure_ray(num_cpus=os.cpu_count(), progress_bars=False)
    work_dir = tempfile.TemporaryDirectory(prefix="facs-scaling-bench-")
    work = Path(args.work or work_dir.name)
    timings: dict[str, float] = {}
    start_all = time.perf_counter()

    start = time.perf_counter()
    celeb = generate_celeb(
        str(work / "celeb"),
        people=args.people,
        images_per_person=args.images_per_person,
        seed=args.seed + 1,
        noise=args.label_noise,
        rates=args.rates,
        use_ray=True,
    )
    corpus = build_version(celeb.corpus_config(str(work / "corpus")), append=False)
    timings["celeb_world_and_corpus"] = time.perf_counter() - start
    start = time.perf_counter()
    disfa = generate_disfa(
        str(work / "disfa"), subjects=args.subjects, frames=args.frames, seed=args.seed + 2
    )
    timings["disfa_world"] = time.perf_counter() - start

    config = ScalingConfig(
        corpus=str(work / "corpus"),
        disfa=DisfaConfig(root=disfa.out, cache=str(work / "disfa-cache")),
        images=args.images.split(","),
        identities=args.identities.split(","),
        subset_seed=args.seed,
        pretrain=PretrainConfig(
            model=ModelConfig(width=args.width, batch_norm=not args.no_batch_norm),
            augment=AugmentConfig(),
            workers=1,
            cpus_per_worker=cpus_per_worker,
            batch_size=32,
            lr=args.pretrain_lr,
            max_epochs=args.pretrain_epochs,
            patience=0,
            batches_per_epoch=args.pretrain_steps,
            cache_data=True,
            shuffle_buffer=1024,
            seed=args.seed,
        ),
        finetune=FinetuneConfig(
            val_subjects=1,
            only_folds=[int(k) for k in args.folds.split(",") if k],
            model=ModelConfig(width=args.width, batch_norm=not args.no_batch_norm),
            max_epochs=args.finetune_epochs,
            patience=args.finetune_patience,
            batch_size=32,
            class_weighting=True,
            cpus_per_worker=cpus_per_worker,
            shuffle_buffer=1024,
            plots=False,
            seed=args.seed,
        ),
        concurrent=args.concurrent,
        output=str(work / "scaling"),
        run_name="bench",
        mlflow_uri=f"sqlite:///{work / 'mlflow.db'}",
    )
    start = time.perf_counter()
    result = run_scaling(config)
    timings["scaling_experiment"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - start_all

    report = Path(result.report_uri)
    summary = json.loads((report / "scaling.json").read_text())
    results = {
        "question": "does DISFA F1 rise with the number of pre-training images and of people?",
        "worlds": {
            "celeb": {
                "people": celeb.people,
                "images": celeb.images,
                "label_noise": args.label_noise,
                "rates": args.rates,
                "corpus_accepted": corpus.accepted,
                "corpus_rejected": corpus.rejected,
            },
            "disfa": {"subjects": list(disfa.subjects), "frames_per_video": disfa.frames_per_video},
        },
        "protocol": {k: summary[k] for k in ("balance", "subset_seed", "pretrain", "finetune")},
        "arguments": {**vars(args), "cpus_per_worker": cpus_per_worker},
        "trend": {"images": trend(result, "images"), "identities": trend(result, "identities")},
        "points": summary["points"],
        "table4_markdown": (report / "table4.md").read_text(),
        "table5_markdown": (report / "table5.md").read_text(),
        "references_f1_paper8": summary["references_f1_paper8"],
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "note": "F1 at threshold 0.5 on the DISFA test frames of the folds pooled, means over the "
        "paper's 8 AUs unless marked 12. Tiny synthetic worlds, a thin net and a few epochs on a "
        "shared 2-core CPU, one seed: the figures show a direction at best, not the paper's "
        "numbers, and differences of a few points are within run-to-run noise.",
    }
    print(results["table4_markdown"])
    print(results["table5_markdown"])
    print(json.dumps(results["trend"], indent=2))
    print(f"total {timings['total']:.0f} s")
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "scaling.json").write_text(json.dumps(json_ready(results), indent=2) + "\n")
        shutil.copyfile(report / "figure3_images.png", RESULTS / "scaling_images.png")
        shutil.copyfile(report / "figure4_people.png", RESULTS / "scaling_people.png")
        print(f"wrote {RESULTS / 'scaling.json'} and the two figures")
    ray.shutdown()
    work_dir.cleanup()


if __name__ == "__main__":
    main()
