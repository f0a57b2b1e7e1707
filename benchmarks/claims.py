"""The paper's three claims, measured with seeds through the real CLI, on the synthetic worlds.

Per seed (a new celeb world, DISFA world, subsets and initialisation each time):

1. ``facs synth celeb`` (a long-tailed world: a few people with many photos, many with few, as in
   MS-Celeb; noisy OpenFace-style labels) and ``facs synth disfa`` (27 subjects, sessions at a
   stride, the same labeler's OpenFace CSVs), then ``facs corpus build``;
2. claim (c), scaling: ``facs experiment scaling`` with a fixed optimizer-step budget per point,
   images spanning >= 10x, and people at a fixed image budget; each point is evaluated by
   ``--point-eval``: the declared cheaper linear probe of the frozen pre-trained features
   (default; ``training/linear_probe.py``, seconds per point) or the full fine-tune;
3. claims (a) and (b): ``facs finetune --compare-init`` from the largest point's pre-trained
   weights: pre-trained vs. scratch under identical folds, seeds and budget, with the labeler
   scored on exactly the same test frames (``--labeler-openface``).

Every F1 is in %, over the paper's 8 AUs, per fold then averaged over folds (n/a cells left out).
Writes ``benchmarks/results/claims.json`` (the command line, the seeds, every per-seed value,
means, spreads, Spearman's rho, the commands each seed ran) and prints each claim's verdict.

    python benchmarks/claims.py                      # the full run (3 seeds), <= 60 min alone
    python benchmarks/claims.py --seeds 0 --quick    # a smoke run of the whole path (minutes)
    python benchmarks/claims.py --only-compare --results benchmarks/results/claims_compare.json
                                                     # claims (a) and (b) alone (a re-measure)
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

from tune.demo_config import SCALES  # noqa: E402
from tune.demo_setup import fine_tuning_trainers, finetune_cpus  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "claims.json"
#: Claims (a) and (b) pre-train as the default demo does, so both report the same model budget.
DEMO = SCALES["small"]
#: ... and fine-tune as it does: its runs at once, sharing this machine's CPUs.
COMPARE_CPUS = finetune_cpus(
    os.cpu_count() or 1, DEMO.concurrent_folds, use_gpu=False, trainers=fine_tuning_trainers(DEMO)
)


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho of two sequences without ties; None below 3 points."""
    if len(xs) < 3:
        return None
    rx = np.argsort(np.argsort(xs)).astype(float)
    ry = np.argsort(np.argsort(ys)).astype(float)
    return float(np.corrcoef(rx, ry)[0, 1])


class Runner:
    """Runs ``facs`` commands (``python -m cluster.cli``), logs them, records their command lines."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.commands: list[str] = []

    def facs(self, *args: str) -> None:
        command = [sys.executable, "-m", "cluster.cli", *args]
        text = "facs " + " ".join(shlex.quote(a) for a in args)
        self.commands.append(text)
        print(f"[claims] {text}", flush=True)
        started = time.perf_counter()
        with open(self.log, "a") as handle:
            handle.write(f"\n$ {text}\n")
            handle.flush()
            done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        if done.returncode:
            raise SystemExit(f"[claims] failed ({done.returncode}): {text}; see {self.log}")
        print(f"[claims]   done in {time.perf_counter() - started:.0f} s", flush=True)


def fold_mean_f1(summary: dict, row: str) -> float:
    """F1 (%) over the paper's 8 AUs, per fold then averaged, from a finetune summary.json."""
    return 100.0 * summary[row]["fold_mean"]["f1_mean_paper8"]


#: The rows of a compare's Table III, by the names claims.json gives them.
ROWS = {
    "pretrained": "VGG13 pre-trained (this run)",
    "scratch": "VGG13 from scratch (this run)",
    "labeler": "OpenFace 2.0 (measured here)",
}


def per_au_f1(summary: dict) -> dict[str, dict[str, float | None]]:
    """Each row's F1 (%) per paper AU (fold-mean; None where n/a in every fold)."""
    from pipeline.vocabulary import PAPER_COMPARISON_AUS

    out = {}
    for name, row in ROWS.items():
        per_au = summary[row]["fold_mean"]["per_au"]
        out[name] = {
            au: None if per_au[au]["f1"] is None else round(100 * per_au[au]["f1"], 2)
            for au in PAPER_COMPARISON_AUS
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3",
                        help="world 0 was the pilot that chose the sizes (scaling_pilot.json)")  # fmt: skip
    parser.add_argument("--tiers", default="30x100,100x20,300x5",
                        help="the celeb world's people (6,500 photos: 'all' is >= 10x 600)")  # fmt: skip
    parser.add_argument("--wild-noise", type=float, default=0.0)
    parser.add_argument("--label-noise", type=float, default=1.0)
    parser.add_argument("--disfa-frames", type=int, default=108)
    parser.add_argument("--images", default="60,200,600",
                        help="the images axis (>= 10x; flat above 600 at this budget: the pilot)")  # fmt: skip
    parser.add_argument("--identities", default="20,80,300", help="the people axis")
    parser.add_argument("--identity-images", type=int, default=600, help="its fixed budget")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--pretrain-steps", type=int, default=1500, help="per scaling point")
    parser.add_argument("--min-steps-per-epoch", type=int, default=100,
                        help="scaling points: passes per epoch until this many steps (a 600-image "
                             "point otherwise validated and checkpointed every 8 steps)")  # fmt: skip
    parser.add_argument("--compare-pretrain-steps", type=int, default=DEMO.pretrain_steps,
                        help="steps of the (a)/(b) pre-training on the whole corpus (the demo's "
                             "budget); 0 = reuse the scaling 'all' point's weights")  # fmt: skip
    parser.add_argument(
        "--point-eval", choices=["probe", "finetune"], default="probe",
        help="per scaling point: the declared linear probe of the frozen features "
             "(training/linear_probe.py, seconds) or the full fine-tune (three trainers)",
    )  # fmt: skip
    parser.add_argument("--finetune-epochs", type=int, default=12)
    parser.add_argument("--finetune-patience", type=int, default=4)
    parser.add_argument("--concurrent", type=int, default=2, help="scaling points run at once")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the path only")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--resume", action="store_true",
        help="keep the seeds already in the results file (same settings), run only the others",
    )  # fmt: skip
    parser.add_argument("--only-compare", action="store_true",
                        help="claims (a) and (b) only: no scaling experiment")  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results file")
    args = parser.parse_args()
    if args.quick:
        args.tiers, args.disfa_frames = "6x40,10x8,16x4", 12
        args.images, args.identities, args.identity_images = "30,100,300", "4,8,16", 48
        args.pretrain_steps, args.finetune_epochs = 4, 1
        args.compare_pretrain_steps = min(args.compare_pretrain_steps, 4)

    if not args.compare_pretrain_steps and (args.only_compare or "all" not in args.images):
        parser.error(
            "--compare-pretrain-steps 0 reuses the scaling point 'all': it needs the scaling "
            "experiment and 'all' among --images"
        )
    seeds = [int(s) for s in args.seeds.split(",")]
    work_dir = tempfile.TemporaryDirectory(prefix="facs-claims-")
    work = Path(args.work or work_dir.name)
    work.mkdir(parents=True, exist_ok=True)
    runner = Runner(work / "claims.log")
    load_before = os.getloadavg()
    started = time.perf_counter()
    per_seed, history = resumed(args, seeds) if args.resume else ([], [])
    cpus_per_worker = "0.5" if args.concurrent > 1 else "1"
    shared_finetune = [
        "--finetune-model-width", str(args.width),
        "--finetune-cpus-per-worker", cpus_per_worker,
    ]  # fmt: skip
    for seed in seeds:
        if any(s["seed"] == seed for s in per_seed):
            print(f"[claims] seed {seed}: kept from {RESULTS}", flush=True)
            continue
        root = work / f"seed{seed}"
        celeb, disfa, corpus = root / "celeb", root / "disfa", root / "corpus"
        mlflow = f"sqlite:///{root / 'mlflow.db'}"
        seed_started = time.perf_counter()
        runner.facs("synth", "celeb", "--out", str(celeb), "--tiers", args.tiers,
                    "--seed", str(seed), "--noise", str(args.label_noise),
                    "--wild-noise", str(args.wild_noise), "--use-ray")  # fmt: skip
        runner.facs("synth", "disfa", "--out", str(disfa), "--seed", str(100 + seed),
                    "--frames", str(args.disfa_frames), "--noise", str(args.label_noise),
                    "--use-ray")  # fmt: skip
        runner.facs("corpus", "build", "--corpus", str(corpus),
                    "--tsv", str(celeb / "FaceImageCroppedWithAlignment.tsv"),
                    "--labels-openface-images", str(celeb / "openface"),
                    "--bios", str(celeb / "Bios"))  # fmt: skip
        disfa_args = ["--disfa", str(disfa), "--disfa-cache", str(root / "disfa-cache")]
        point_eval = ["--point-eval", args.point_eval,
                      "--finetune-max-epochs", str(args.finetune_epochs),
                      "--finetune-patience", str(args.finetune_patience)]  # fmt: skip
        if not args.only_compare:
            runner.facs("experiment", "scaling", "--corpus", str(corpus), *disfa_args,
                        "--images", args.images, "--identities", args.identities,
                        "--identity-images", str(args.identity_images),
                        "--pretrain-steps", str(args.pretrain_steps),
                        "--pretrain-min-steps-per-epoch", str(args.min_steps_per_epoch),
                        "--pretrain-model-width", str(args.width),
                        "--pretrain-seed", str(seed), "--finetune-seed", str(seed),
                        "--subset-seed", str(seed), "--concurrent", str(args.concurrent),
                        "--pretrain-cpus-per-worker", cpus_per_worker,
                        *shared_finetune, *point_eval,
                        "--output", str(root / "runs"), "--run-name", "scaling",
                        "--mlflow-uri", mlflow)  # fmt: skip
            scaling = json.loads(
                (root / "runs" / "scaling" / "report" / "scaling.json").read_text()
            )
            points = {p["key"]: p for p in scaling["points"]}
            weights = points["all"]["pretrain_checkpoint"] if "all" in points else ""
        else:
            scaling, weights = {"points": []}, ""
        if args.compare_pretrain_steps:
            runner.facs("pretrain", "--corpus", str(corpus),
                        "--workers", str(DEMO.pretrain_workers), "--cpus-per-worker", "0.5",
                        "--batch-size", str(DEMO.batch_size),
                        "--max-steps", str(args.compare_pretrain_steps), "--max-epochs", "10000",
                        "--patience", "0", "--model-width", str(args.width),
                        "--seed", str(seed), "--storage-path", str(root / "runs" / "pretrain"),
                        "--run-name", "compare-pretrain", "--mlflow-uri", mlflow,
                        "--register-as", "claims-compare")  # fmt: skip
            # 0.5 CPU per worker, as the demo: workers holding every CPU starve Ray Data's reads.
            weights = "models:/claims-compare/1"
        runner.facs("finetune", *disfa_args, "--pretrained", weights,
                    "--compare-init", "--labeler-openface", str(disfa / "OpenFace"),
                    "--model-width", str(args.width), "--seed", str(seed),
                    "--max-epochs", str(args.finetune_epochs),
                    "--patience", str(args.finetune_patience),
                    "--concurrent-folds", str(DEMO.concurrent_folds),
                    "--folds-per-trainer", str(DEMO.folds_per_trainer),
                    "--cpus-per-worker", str(COMPARE_CPUS),
                    "--storage-path", str(root / "runs" / "compare"), "--run-name", "compare",
                    "--mlflow-uri", mlflow, "--register-as", "")  # fmt: skip
        compare = json.loads((root / "runs/compare/compare/report/summary.json").read_text())
        axes = {}
        for axis in ("images", "identities"):
            chosen = sorted((p for p in scaling["points"] if axis in p["axes"]),
                            key=lambda p: p["images" if axis == "images" else "people"])  # fmt: skip
            axes[axis] = {
                "sizes": [p["images" if axis == "images" else "people"] for p in chosen],
                "images": [p["images"] for p in chosen],
                "people": [p["people"] for p in chosen],
                "f1": [round(100 * p["f1_mean_paper8"], 2) for p in chosen],
                "pr_auc": [round(100 * p["pr_auc_mean_paper8"], 2) for p in chosen],
                "roc_auc": [round(100 * p["roc_auc_mean_paper8"], 2) for p in chosen],
                "seconds": [p["seconds"] for p in chosen],
            }
        per_seed.append(
            {
                "seed": seed,
                **{name: round(fold_mean_f1(compare, row), 2) for name, row in ROWS.items()},
                "per_au_f1": per_au_f1(compare),
                "scaling": axes if not args.only_compare else {},
                "seconds": round(time.perf_counter() - seed_started, 1),
            }
        )
        print(f"[claims] seed {seed}: {json.dumps(per_seed[-1])}", flush=True)
        results = summarise(args, seeds, per_seed, runner, started, load_before, history)
        if not args.no_write:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(results, indent=2) + "\n")
            print(
                f"[claims] wrote {args.results} ({len(per_seed)} of {len(seeds)} seeds)", flush=True
            )
    results = summarise(args, seeds, per_seed, runner, started, load_before, history)
    print(json.dumps({k: results[k] for k in ("pretrained_vs_scratch", "pretrained_vs_labeler",
                                              "scaling", "wall_minutes")}, indent=2))  # fmt: skip


#: Settings that change where or whether results go, not what a seed measures.
RUN_ONLY = {"seeds", "work", "no_write", "resume", "results"}


def resumed(args: argparse.Namespace, seeds: list[int]) -> tuple[list[dict], list[dict]]:
    """The planned seeds already measured in the results file, and its earlier invocations.

    Refuses a file measured with other settings: seeds pooled across settings mean nothing.
    """
    if not args.results.exists():
        return [], []
    old = json.loads(args.results.read_text())
    mine = {k: v for k, v in vars(args).items() if k not in RUN_ONLY}
    # Options added later read as their defaults in older files.
    theirs = {"only_compare": False, **old["settings"]}
    theirs = {k: v for k, v in theirs.items() if k not in RUN_ONLY}
    if mine != theirs:
        changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        raise SystemExit(
            f"[claims] --resume: {args.results} was measured with other settings: {changed}"
        )
    kept = [s for s in old["per_seed"] if s["seed"] in seeds]
    earlier = [
        *old.get("earlier_invocations", []),
        {
            "command": old["command"],
            "seeds": [s["seed"] for s in old["per_seed"]],
            "wall_minutes": old["wall_minutes"],
            "machine": old["machine"],
        },
    ]
    return kept, earlier


def summarise(
    args: argparse.Namespace,
    seeds: list[int],
    per_seed: list[dict],
    runner: Runner,
    started: float,
    load_before: tuple[float, float, float],
    history: list[dict],
) -> dict:
    """The results file's content from the seeds done so far (written after every seed)."""

    def series(key: str) -> list[float]:
        return [s[key] for s in per_seed]

    scaling_out = {}
    for axis, name in (("images", "images"), ("identities", "people")):
        if not per_seed[0]["scaling"]:
            break
        sizes = per_seed[0]["scaling"][axis]["sizes"]
        f1 = [[s["scaling"][axis]["f1"][k] for s in per_seed] for k in range(len(sizes))]
        means = [float(np.mean(v)) for v in f1]
        pr_auc = [[s["scaling"][axis]["pr_auc"][k] for s in per_seed] for k in range(len(sizes))]
        scaling_out[name] = {
            "sizes": sizes,
            "f1": f1,
            "f1_mean": [round(m, 2) for m in means],
            "f1_spread": [[min(v), max(v)] for v in f1],
            "pr_auc": pr_auc,
            "pr_auc_mean": [round(float(np.mean(v)), 2) for v in pr_auc],
            "spearman_mean_vs_size": spearman(sizes, means),
            "spearman_per_seed": [
                spearman(sizes, [s["scaling"][axis]["f1"][k] for k in range(len(sizes))])
                for s in per_seed
            ],
            "rises_at_every_step_in_the_mean": bool(
                all(b > a for a, b in zip(means, means[1:], strict=False))
            ),
            "step_rises_in_the_mean": [bool(b > a) for a, b in zip(means, means[1:], strict=False)],
            "per_seed_images": [s["scaling"][axis]["images"] for s in per_seed],
            "per_seed_people": [s["scaling"][axis]["people"] for s in per_seed],
        }
    pre, scratch, labeler = series("pretrained"), series("scratch"), series("labeler")
    results = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "question": "the paper's claims on the synthetic worlds: (a) pre-training helps, (b) "
        "the student beats its noisy labeler, (c) F1 rises with pre-training images and people",
        "metric": "F1 (%) at 0.5 over the paper's 8 AUs, per fold then averaged over folds",
        "seeds": [s["seed"] for s in per_seed],
        "seeds_planned": seeds,
        "complete": len(per_seed) == len(seeds),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "pretrained_vs_scratch": {
            "pretrained": pre,
            "scratch": scratch,
            "margin_per_seed": [round(p - s, 2) for p, s in zip(pre, scratch, strict=True)],
            "pretrained_ahead_in_every_seed": all(p > s for p, s in zip(pre, scratch, strict=True)),
        },
        "pretrained_vs_labeler": {
            "pretrained": pre,
            "labeler": labeler,
            "margin_mean": round(float(np.mean(pre) - np.mean(labeler)), 2),
            "pretrained_ahead_in_the_mean": bool(np.mean(pre) > np.mean(labeler)),
        },
        "scaling": scaling_out,
        "per_seed": per_seed,
        "commands": runner.commands,
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
        "earlier_invocations": history,
        "seed_minutes": {str(s["seed"]): round(s["seconds"] / 60, 1) for s in per_seed},
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    return results


if __name__ == "__main__":
    main()
