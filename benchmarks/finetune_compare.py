"""Does noisy pre-training help fine-tuning? Scratch vs. pre-trained on the synthetic worlds (CPU).

The paper's claim in miniature, end to end through the product's own stages:

1. a synthetic MS-Celeb world (``pipeline.synth.celeb_world``, OpenFace-like noisy labels) ->
   ``facs corpus build`` (Haar face detection, labels from the noisy OpenFace CSVs);
2. ``facs pretrain`` on it (Ray Train, a few epochs, small width), registered in MLflow;
3. a synthetic DISFA world (videos + intensity files in DISFA's layout) -> ingestion;
4. ``facs finetune --compare-init``: the paper's 3 subject-independent folds (restricted to the
   subjects present), scratch and pre-trained side by side with the same folds, seeds, epochs,
   batch size, learning rate and architecture.

Writes ``benchmarks/results/finetune.json`` with both arms' mean F1 (12 AUs and the paper's 8,
test folds pooled, and per fold) and the Table III markdown, whichever way the comparison goes.

    python benchmarks/finetune_compare.py                 # ~12-15 min on 2 cores
    python benchmarks/finetune_compare.py --people 40 --subjects 6 --frames 30 \\
        --pretrain-epochs 1 --finetune-epochs 1           # a smoke run (no results file)
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

import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.corpus.build import build_version  # noqa: E402
from pipeline.disfa import DisfaConfig  # noqa: E402
from pipeline.ray_runtime import ensure_ray  # noqa: E402
from pipeline.synth.celeb_world import generate_celeb  # noqa: E402
from pipeline.synth.disfa_world import generate_disfa  # noqa: E402
from pipeline.vocabulary import PAPER_COMPARISON_AUS  # noqa: E402
from training.augment import AugmentConfig  # noqa: E402
from training.evaluate import json_ready  # noqa: E402
from training.finetune import run_cross_validation  # noqa: E402
from training.finetune_config import FinetuneConfig  # noqa: E402
from training.model import ModelConfig  # noqa: E402
from training.pretrain import run_pretraining  # noqa: E402
from training.pretrain_config import PretrainConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "finetune.json"


def arm_summary(arm) -> dict:
    pooled = arm.metrics.pooled
    return {
        "init_source": arm.init_source,
        "mean_f1_12": round(arm.mean_f1, 4),
        "mean_f1_paper8": round(arm.mean_f1_paper8, 4),
        "mean_pr_auc_12": round(pooled.mean()["pr_auc"], 4),
        "mean_roc_auc_12": round(pooled.mean()["roc_auc"], 4),
        "fold_mean_f1_12": round(arm.metrics.fold_mean("f1"), 4),
        "fold_mean_f1_paper8": round(arm.metrics.fold_mean("f1", PAPER_COMPARISON_AUS), 4),
        "per_fold": {
            str(f.fold.index): {
                "test_subjects": list(f.fold.test_subjects),
                "f1_12": round(arm.metrics.per_fold[f.fold.index].mean()["f1"], 4),
                "epochs": f.epochs,
                "best_epoch": f.best_epoch,
                "best_val_loss": round(f.best_monitor, 4),
                "seconds": round(f.seconds, 1),
            }
            for f in arm.folds
        },
        "per_au_pooled": {
            au: {
                "f1": round(pooled.f1[au], 4),
                "pr_auc": pooled.pr_auc[au],
                "roc_auc": pooled.roc_auc[au],
                "positives": pooled.positives[au],
            }
            for au in pooled.au_names
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=150)
    parser.add_argument("--images-per-person", type=int, default=12)
    parser.add_argument("--subjects", type=int, default=9)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--pretrain-lr", type=float, default=0.001)
    parser.add_argument("--finetune-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--label-noise", type=float, default=1.0, help="celeb world labeler noise (1.0 ~ OpenFace)"
    )
    parser.add_argument(
        "--batch-norm", action="store_true", help="BatchNorm after each conv (both arms)"
    )
    parser.add_argument(
        "--class-weighting", action="store_true", help="BCE pos_weight in fine-tuning (both arms)"
    )
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    args = parser.parse_args()

    load_before = os.getloadavg()
    ensure_ray(num_cpus=os.cpu_count(), progress_bars=False)
    work_dir = tempfile.TemporaryDirectory(prefix="facs-finetune-bench-")
    work = Path(args.work or work_dir.name)
    mlflow_uri = f"sqlite:///{work / 'mlflow.db'}"
    timings: dict[str, float] = {}
    start_all = time.perf_counter()

    start = time.perf_counter()
    celeb = generate_celeb(
        str(work / "celeb"),
        people=args.people,
        images_per_person=args.images_per_person,
        seed=args.seed + 1,
        noise=args.label_noise,
        rates="celeb",
        use_ray=True,
    )
    timings["celeb_world"] = time.perf_counter() - start

    start = time.perf_counter()
    corpus = build_version(celeb.corpus_config(str(work / "corpus")), append=False)
    timings["corpus_build"] = time.perf_counter() - start

    start = time.perf_counter()
    pretrained = run_pretraining(
        PretrainConfig(
            corpus=str(work / "corpus"),
            model=ModelConfig(width=args.width, batch_norm=args.batch_norm),
            augment=AugmentConfig(),
            workers=1,
            cpus_per_worker=1.0,
            batch_size=32,
            lr=args.pretrain_lr,
            max_epochs=args.pretrain_epochs,
            patience=0,
            cache_data=True,
            shuffle_buffer=1024,
            storage_path=str(work / "pretrain"),
            run_name="pretrain",
            mlflow_uri=mlflow_uri,
            seed=args.seed,
        )
    )
    timings["pretrain"] = time.perf_counter() - start
    source = f"models:/{pretrained.registered_model}/{pretrained.registered_version}"

    start = time.perf_counter()
    disfa = generate_disfa(
        str(work / "disfa"), subjects=args.subjects, frames=args.frames, seed=args.seed + 2
    )
    timings["disfa_world"] = time.perf_counter() - start

    start = time.perf_counter()
    config = FinetuneConfig(
        disfa=DisfaConfig(root=disfa.out, cache=str(work / "disfa-cache")),
        pretrained=source,
        compare_init=True,
        val_subjects=1,
        model=ModelConfig(width=args.width, batch_norm=args.batch_norm),
        class_weighting=args.class_weighting,
        max_epochs=args.finetune_epochs,
        patience=10,
        batch_size=32,
        cpus_per_worker=1.0,
        shuffle_buffer=1024,
        storage_path=str(work / "finetune"),
        run_name="compare",
        mlflow_uri=mlflow_uri,
        seed=args.seed,
    )
    cv = run_cross_validation(config)
    timings["finetune_cv_with_ingest"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - start_all

    scratch, pre = cv.arms["scratch"], cv.arms["pretrained"]
    results = {
        "question": "fine-tuned from a noisily pre-trained VGG13 vs. from scratch, same budget",
        "worlds": {
            "celeb": {
                "people": celeb.people,
                "images": celeb.images,
                "label_noise": args.label_noise,
                "rates": "celeb",
                "corpus_accepted": corpus.accepted,
                "corpus_rejected": corpus.rejected,
            },
            "disfa": {
                "subjects": list(disfa.subjects),
                "frames_per_video": disfa.frames_per_video,
                "fold_scheme": "paper (restricted to the subjects present)",
                "val_subjects_per_fold": config.val_subjects,
            },
        },
        "pretraining": {
            "model_uri": source,
            "width": args.width,
            "epochs": pretrained.epochs,
            "lr": args.pretrain_lr,
            "best_val_loss": round(pretrained.best_val_loss, 4),
            "val_f1_mean_last_epoch": pretrained.metrics.get("val_f1_mean"),
        },
        "finetuning": {
            "lr": config.lr,
            "batch_size": config.batch_size,
            "max_epochs": config.max_epochs,
            "patience": config.patience,
            "monitor": config.monitor,
            "threshold": config.threshold,
            "class_weighting": config.class_weighting,
            "batch_norm": args.batch_norm,
            "same_for_both_arms": "folds, validation subjects, seeds, architecture, epochs, "
            "batch size, learning rate, augmentation, pixel mean per fold",
        },
        "scratch": arm_summary(scratch),
        "pretrained": arm_summary(pre),
        "gain_mean_f1_12": round(pre.mean_f1 - scratch.mean_f1, 4),
        "gain_mean_f1_paper8": round(pre.mean_f1_paper8 - scratch.mean_f1_paper8, 4),
        "pretrained_beats_scratch": pre.mean_f1 > scratch.mean_f1,
        "table3_markdown": cv.table3,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "note": "F1 at threshold 0.5 on the test frames of the 3 folds pooled (per fold too). "
        "Small synthetic worlds and a few epochs on a shared 2-core CPU: the figures show the "
        "direction of the effect, not the paper's numbers.",
    }
    print(cv.table3)
    print(
        f"scratch F1 {scratch.mean_f1:.3f} (8 AUs {scratch.mean_f1_paper8:.3f}); pre-trained "
        f"F1 {pre.mean_f1:.3f} (8 AUs {pre.mean_f1_paper8:.3f}); total {timings['total']:.0f} s"
    )
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(json_ready(results), indent=2) + "\n")
        print(f"wrote {RESULTS}")
    ray.shutdown()
    work_dir.cleanup()


if __name__ == "__main__":
    main()
