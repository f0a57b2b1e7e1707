"""The `facs` command: one subcommand per stage, each configured by a typed dataclass + YAML + flags."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from pipeline.console import quiet_console
from pipeline.corpus.config import CorpusBuildConfig
from pipeline.corpus.manifest import CorpusError
from pipeline.corpus.subset import SubsetConfig
from pipeline.options import ConfigError, config_parser, load_config, overrides_from_args
from pipeline.ray_runtime import ensure_ray
from pipeline.synth.config import SynthCelebConfig, SynthDisfaConfig
from training.finetune_config import FinetuneConfig
from training.predict_config import PredictConfig
from training.pretrain_config import PretrainConfig


def _load(args: argparse.Namespace):
    return load_config(
        args.config_class, args.config, overrides_from_args(args), section=args.config_section
    )


def _corpus_build(args: argparse.Namespace, append: bool) -> int:
    config = _load(args)  # before the heavy imports: a bad option is reported at once
    from pipeline.corpus.build import build_version, check_build

    check_build(config, append=append)
    labeler = None
    if config.label_model:  # loaded before Ray starts: a model that cannot be read is refused first
        from training.model_labeler import ModelLabeler

        labeler = ModelLabeler.from_source(
            config.label_model, config.mlflow_uri, threshold=config.label_threshold
        )
        print(f"labelling with {labeler.name} (AUs: {', '.join(labeler.weights.au_names)})")
    ensure_ray(args.ray_address, progress_bars=True)
    entry = build_version(config, append=append, labeler=labeler)
    print(
        f"corpus {config.corpus} version {entry.version}: {entry.rows_read} rows read = "
        f"{entry.accepted} accepted + {entry.rejected} rejected {entry.reject_counts} "
        f"in {entry.inputs['seconds']} s"
    )
    return 0


def _corpus_stats(args: argparse.Namespace) -> int:
    from pipeline.corpus.stats import corpus_stats, format_stats

    stats = corpus_stats(args.corpus, args.version)
    print(json.dumps(stats, indent=2, allow_nan=False) if args.json else format_stats(stats))
    return 0


def _corpus_subset(args: argparse.Namespace) -> int:
    config = _load(args)
    from pipeline.corpus.subset import make_subset

    entry = make_subset(config)
    print(
        f"subset {entry.name}: {entry.images} images of {entry.identities} people (version {entry.version})"
    )
    return 0


def _synth(args: argparse.Namespace, world: str) -> int:
    from pipeline.synth.celeb_world import generate_celeb_from_config
    from pipeline.synth.disfa_world import generate_disfa_from_config

    config = _load(args)
    if config.use_ray:
        ensure_ray(args.ray_address, progress_bars=True)
    summary = (generate_celeb_from_config if world == "celeb" else generate_disfa_from_config)(
        config
    )
    print(summary)
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    config = _load(args)
    from training.pretrain import check_pretraining, run_pretraining

    check_pretraining(config)
    ensure_ray(args.ray_address, progress_bars=True)
    result = run_pretraining(config)
    print(result)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    config = _load(args)
    from training.finetune import check_cross_validation, run_cross_validation

    check_cross_validation(config)
    ensure_ray(args.ray_address, progress_bars=True)
    result = run_cross_validation(config)
    print(result.table3)
    for arm in result.arms.values():
        print(
            f"{arm.label}: F1 {100 * arm.mean_f1_paper8:.1f} (paper's 8 AUs), "
            f"{100 * arm.mean_f1:.1f} (12 AUs), per fold then averaged; MLflow run "
            f"{arm.mlflow_run_id}"
        )
    print(f"report: {result.report_uri}")
    if result.registered_model:
        name = result.registered_model
        print(
            f"model: models:/{name}/{result.registered_version} "
            f"(the best so far on the same evaluation: models:/{name}@champion)"
        )
    print(f"MLflow: {result.tracking_uri}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    if args.input_paths:
        args.cfg__inputs = [*getattr(args, "cfg__inputs", []), *args.input_paths]
    config = _load(args)
    from training.predict import check_predict, run_predict

    check_predict(config)
    ensure_ray(args.ray_address, progress_bars=True)
    summary = run_predict(config)
    rejects = ", ".join(f"{k}: {v}" for k, v in summary.rejects.items()) or "none"
    print(
        f"{summary.rows} rows ({summary.faces} faces scored; rejects {rejects}) from "
        f"{summary.images} images, {summary.videos} videos ({summary.video_frames} frames), "
        f"{summary.corpus_faces} corpus faces -> {summary.out} in {summary.seconds} s"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facs", description="Facial action unit detectors pre-trained on noisy labels, on Ray."
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print everything here: Ray's own worker/driver output and debug logs (by default "
        "they go to a log file whose path is printed)",
    )
    stages = parser.add_subparsers(dest="stage", required=True)

    corpus = stages.add_parser(
        "corpus", help="build, grow, subset and describe the pre-training corpus"
    )
    corpus_cmds = corpus.add_subparsers(dest="command", required=True)
    config_parser(
        corpus_cmds,
        "build",
        CorpusBuildConfig,
        "Build version 1 of a corpus from face images and their labels.",
        lambda a: _corpus_build(a, append=False),
    )
    config_parser(
        corpus_cmds,
        "add",
        CorpusBuildConfig,
        "Add a batch of images as the next corpus version (images already present are skipped).",
        lambda a: _corpus_build(a, append=True),
    )
    stats = corpus_cmds.add_parser(
        "stats", help="Table II (people/images by gender and region), AU rates"
    )
    stats.add_argument("--corpus", required=True)
    stats.add_argument("--version", type=int, default=None)
    stats.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    stats.set_defaults(run=_corpus_stats)
    config_parser(
        corpus_cmds,
        "subset",
        SubsetConfig,
        "Make a gender-balanced subset by number of images or of people.",
        _corpus_subset,
    )

    synth = stages.add_parser("synth", help="write a synthetic face world in the real data formats")
    synth_cmds = synth.add_subparsers(dest="command", required=True)
    config_parser(
        synth_cmds,
        "celeb",
        SynthCelebConfig,
        "An MS-Celeb-like world: TSV, OpenFace CSVs, biographies and ground truth.",
        lambda a: _synth(a, "celeb"),
    )
    config_parser(
        synth_cmds,
        "disfa",
        SynthDisfaConfig,
        "A DISFA-like world: videos and AU intensity label files in DISFA's layout.",
        lambda a: _synth(a, "disfa"),
    )
    config_parser(
        stages,
        "pretrain",
        PretrainConfig,
        "Pre-train the VGG13 on a corpus version with Ray Train (DDP), tracked in MLflow.",
        _pretrain,
    )
    finetune = config_parser(
        stages,
        "finetune",
        FinetuneConfig,
        "Fine-tune on DISFA with subject-independent cross-validation; Table III; MLflow.",
        _finetune,
    )
    finetune.add_argument(
        "--disfa",
        dest="cfg__disfa__root",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="the DISFA root (same as --disfa-root)",
    )
    predict = config_parser(
        stages,
        "predict",
        PredictConfig,
        "Score AUs on images, folders, videos or a corpus with a trained model (CSV/Parquet).",
        _predict,
    )
    predict.add_argument(
        "input_paths",
        nargs="*",
        metavar="INPUT",
        help="images, folders, videos or corpus roots (added to --inputs)",
    )
    from cluster.cluster_cli import register as register_cluster_commands
    from cluster.demo_cli import register as register_demo
    from cluster.experiment_cli import register as register_experiment_commands
    from cluster.tune_cli import register as register_tune_command

    register_demo(stages)
    register_tune_command(stages)
    register_experiment_commands(stages)
    register_cluster_commands(stages)
    return parser


def default_console_log(argv: list[str]) -> Path:
    """Where a quiet console sends Ray's output until the command names its run directory."""
    words = []  # the sub-command's words: those before the first flag, never a flag's value
    for word in argv[:2]:
        if word.startswith("-"):
            break
        words.append(re.sub(r"[^A-Za-z0-9_.]+", "_", word))
    words = words or ["facs"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (
        Path(tempfile.gettempdir()) / "facs-logs" / f"{'-'.join(words)}-{stamp}-{os.getpid()}.log"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        quiet_console(default_console_log(argv if argv is not None else sys.argv[1:]))
    try:
        return args.run(args)
    except (ConfigError, CorpusError, FileNotFoundError, ValueError) as error:
        print(f"facs: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
