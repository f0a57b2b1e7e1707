"""`facs demo`: the paper in miniature on synthetic data, one command, on this machine or a cluster.

Stages (each printed with its elapsed time):

1. a synthetic MS-Celeb world (TSV + noisy OpenFace CSVs + biographies) and
2. a synthetic DISFA world (videos + AU intensity files), both as Ray tasks;
3. ``build_version``: the pre-training corpus (Haar faces, noisy labels, gender/region);
4. ``run_pretraining``: the VGG13 with Ray Train DDP, registered as ``facs-vgg13-pretrained``;
5. ``run_cross_validation(compare_init=True)``: 3 subject-independent folds, pre-trained vs.
   scratch, Table III, the final model registered as ``facs-vgg13-disfa``;
6. Table III printed and logged, and how to open the MLflow UI on the runs.

Where things go: everything under ``--workdir`` (a local folder, or ``s3://`` on a multi-node
cluster, since Ray tasks on other nodes write the worlds and checkpoints). Only a SQLite MLflow
store is necessarily local: ``<workdir>/mlflow.db`` for a local workdir, ``--local-dir`` for an
S3 one; ``--mlflow-uri`` / ``MLFLOW_TRACKING_URI`` names a server instead. Ray is the cluster of
``--ray-address`` / ``RAY_ADDRESS`` (a Ray job sets it), else a local one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import pyarrow.fs as pafs

from cluster.demo_config import SCALES, DemoConfig, DemoScale
from pipeline.console import move_console_log
from pipeline.storage import Location, is_s3

#: The marker that makes a work dir the demo's own (only then are its data folders replaced).
MARKER = "facs-demo.json"
#: Folders of a work dir that each demo replaces; the MLflow store beside them is kept.
DATA_FOLDERS = ("celeb", "disfa", "corpus", "runs", "disfa-cache")
SUMMARY = "demo-summary.json"
TABLE3 = "table3.md"
STAGES = 6


# ---------------------------------------------------------------------------------------------
# Where things go


@dataclass(frozen=True)
class DemoPaths:
    """The URIs of everything the demo writes (local paths or ``s3://``)."""

    workdir: str
    celeb: str
    disfa: str
    corpus: str
    pretrain_runs: str
    finetune_runs: str
    disfa_cache: str

    @classmethod
    def under(cls, workdir: str) -> DemoPaths:
        root = Location.of(workdir)
        return cls(
            workdir=root.uri,
            celeb=root.join("celeb").uri,
            disfa=root.join("disfa").uri,
            corpus=root.join("corpus").uri,
            pretrain_runs=root.join("runs", "pretrain").uri,
            finetune_runs=root.join("runs", "finetune").uri,
            disfa_cache=root.join("disfa-cache").uri,
        )


def tracking_uri_for(config: DemoConfig) -> str:
    """``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store in a local folder."""
    from training.tracking import resolve_tracking_uri

    folder = config.local_dir or ("./facs-demo-mlflow" if is_s3(config.workdir) else config.workdir)
    return resolve_tracking_uri(config.mlflow_uri, default_dir=folder)


def _entries(root: Location) -> list[str]:
    selector = pafs.FileSelector(root.path, recursive=False, allow_not_found=True)
    return sorted(info.base_name for info in root.fs.get_file_info(selector))


def prepare_workdir(config: DemoConfig) -> Location:
    """Claim the work dir: new or empty, or an earlier demo's (whose data folders are replaced).

    A non-empty folder without the demo's marker is refused rather than written into.
    """
    root = Location.of(config.workdir)
    entries = _entries(root)
    if entries and MARKER not in entries:
        raise ValueError(
            f"--workdir {root.uri} is not empty and was not made by `facs demo` (no {MARKER}); "
            "expected a new or empty folder, or an earlier demo's"
        )
    for name in DATA_FOLDERS:
        root.join(name).delete_dir()
    root.join(MARKER).write_text_atomic(
        json.dumps(
            {
                "made_by": "facs demo",
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "scale": config.scale,
            },
            indent=2,
        )
    )
    return root


def validation_people(seed: int, people: int) -> int:
    """How many of the celeb world's people fall in the corpus's validation split (5% by hash).

    Pre-training needs at least one; known before any image is drawn, since identities are
    the world's seeded MIDs.
    """
    from pipeline.corpus.split import split_of
    from pipeline.synth.people import fake_mid

    return sum(split_of(fake_mid(seed, index)) == "val" for index in range(people))


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """``[demo 3/6 +1:02] corpus build ...`` lines: the stage, and the time since the start."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.start = time.perf_counter()
        self.index = 0
        self.seconds: dict[str, float] = {}

    def elapsed(self) -> str:
        minutes, seconds = divmod(int(time.perf_counter() - self.start), 60)
        return f"{minutes}:{seconds:02d}"

    def say(self, text: str) -> None:
        print(f"[demo {self.index}/{STAGES} +{self.elapsed()}] {text}", file=self.out, flush=True)

    @contextmanager
    def stage(self, key: str, title: str) -> Iterator[dict[str, str]]:
        """Time one stage; the caller may put a one-line ``result`` into the yielded dict."""
        self.index += 1
        self.say(f"{title} ...")
        note: dict[str, str] = {}
        started = time.perf_counter()
        try:
            yield note
        except BaseException:
            self.say(f"{title}: FAILED after {time.perf_counter() - started:.1f} s")
            raise
        self.seconds[key] = round(time.perf_counter() - started, 1)
        done = f"{title}: done in {self.seconds[key]:.1f} s"
        self.say(done + (f" ({note['result']})" if note.get("result") else ""))


# ---------------------------------------------------------------------------------------------
# Ray


def connect_ray(address: str | None, verbose: bool = False) -> dict[str, float]:
    """Join ``address`` / ``RAY_ADDRESS`` or start a local Ray; returns the cluster's resources."""
    import ray

    from pipeline.ray_runtime import ensure_ray

    ensure_ray(address, progress_bars=True)
    # One line per stage is the demo's output; per-operator bars would bury it.
    ray.data.DataContext.get_current().enable_progress_bars = verbose
    return dict(ray.cluster_resources())


def cpus_per_worker(resources: dict[str, float], workers: int, use_gpu: bool) -> float:
    """A whole CPU per training worker when the cluster has room for it and Ray Data; else half."""
    if use_gpu:
        return 1.0
    return 1.0 if resources.get("CPU", 0) >= 2 * workers else 0.5


def finetune_cpus(cpus: int, concurrent_folds: int, use_gpu: bool, trainers: int = 6) -> float:
    """CPUs per fold trainer: the cluster's CPUs shared by the trainers that run at once.

    On few cores the demo starts all six (3 folds x 2 arms) at once: each trainer's start (a
    controller and a worker process importing torch, Ray Train, MLflow: about 10 CPU-seconds)
    then overlaps the others' training instead of adding up round after round.
    """
    if use_gpu:
        return 1.0
    at_once = trainers if concurrent_folds == 0 else min(concurrent_folds, trainers)
    # Rounded down: three trainers of round(2 / 3, 2) = 0.67 CPUs need 2.01 of 2, and Ray then
    # queues the third (measured: three "at once" ran two at a time).
    return max(0.25, min(1.0, math.floor(100 * cpus / at_once) / 100))


def warn_if_local_workdir_on_many_nodes(workdir: str, out: TextIO) -> None:
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if not is_s3(workdir) and len(nodes) > 1:
        print(
            f"[demo] warning: --workdir {workdir} is a local folder but the Ray cluster has "
            f"{len(nodes)} nodes; tasks on other nodes write to their own disks. Give "
            "--workdir s3://bucket/prefix unless the folder is shared storage.",
            file=out,
            flush=True,
        )


# ---------------------------------------------------------------------------------------------
# The demo


def read_recipe(path: str) -> dict[str, dict]:
    """The ``pretrain:`` / ``finetune:`` sections of a recipe YAML (``{}`` for none)."""
    if not path:
        return {}
    from cluster.options import ConfigError, read_yaml_mapping

    data = read_yaml_mapping(path)
    unknown = sorted(set(data) - {"pretrain", "finetune"})
    if unknown:
        raise ConfigError(f"{path}: a recipe holds pretrain: and finetune: sections, not {unknown}")
    return data


def recipe_config(cls: type, recipe: dict | None, **demo: Any):
    """The product's defaults, then the recipe's settings, then the demo's own (its sizes win)."""
    from cluster.options import from_dict, merge_dicts

    values = dict(demo)
    nested = {k: values.pop(k) for k in list(values) if isinstance(values[k], dict)}
    data = merge_dicts(recipe or {}, nested)
    config = from_dict(cls, data, where=cls.__name__)
    return dataclasses.replace(config, **values)


def headline_f1(cv: Any) -> dict[str, float]:
    """F1 (%) over the paper's 8 AUs, per fold then averaged, of each arm and the labeler."""
    from pipeline.vocabulary import PAPER_COMPARISON_AUS

    out = {arm: round(100 * result.mean_f1_paper8, 2) for arm, result in cv.arms.items()}
    if cv.labeler is not None:
        out["labeler"] = round(100 * cv.labeler.mean("f1", PAPER_COMPARISON_AUS), 2)
    return out


def claim_lines(f1: dict[str, float]) -> list[str]:
    """The paper's claims as measured here: each margin, or that the claim does not hold."""

    def line(claim: str, ours: float, other: float, name: str) -> str:
        margin = ours - other
        verdict = "beats" if margin > 0 else "does NOT beat"
        return (
            f"claim: {claim}: pre-trained {verdict} {name} by {margin:+.1f} F1 "
            f"({ours:.1f} vs {other:.1f}; 8 AUs, per fold then averaged)"
        )

    lines = []
    if "pretrained" in f1 and "scratch" in f1:
        lines.append(line("pre-training helps", f1["pretrained"], f1["scratch"], "scratch"))
    if "pretrained" in f1 and "labeler" in f1:
        lines.append(
            line(
                "the student outgrows its noisy teacher",
                f1["pretrained"],
                f1["labeler"],
                "its own labeler (OpenFace stand-in, same test frames)",
            )
        )
    return lines


@dataclass
class DemoResult:
    """What the demo produced, and how to look at it."""

    paths: DemoPaths
    scale: DemoScale
    tracking_uri: str
    experiment_id: str
    pretrain_run_id: str
    compare_run_id: str
    arm_run_ids: dict[str, str]
    registered: dict[str, str]  # model name -> version
    table3: str
    #: F1 (%) over the paper's 8 AUs, per fold then averaged: pretrained, scratch, labeler.
    f1_8au_fold_mean: dict[str, float]
    #: One line per claim of the paper, with its measured margin.
    claims: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(
    config: DemoConfig,
    *,
    ray_address: str | None = None,
    out: TextIO | None = None,
    verbose: bool = False,
) -> DemoResult:
    """Run every stage of the demo (module docstring) and return where the results are."""
    from pipeline.corpus.build import build_version
    from pipeline.disfa import DisfaConfig
    from pipeline.synth.celeb_world import generate_celeb
    from pipeline.synth.disfa_world import generate_disfa
    from training.finetune import run_cross_validation
    from training.finetune_config import FinetuneConfig
    from training.pretrain import run_pretraining
    from training.pretrain_config import PretrainConfig

    out = out or sys.stdout
    scale = config.resolved()
    if validation_people(config.seed, scale.people) == 0:
        raise ValueError(
            f"DemoConfig: none of the {scale.people} synthetic people (seed {config.seed}) falls "
            "in the corpus's 5% validation split, which pre-training needs; expected more "
            "--people or another --seed"
        )
    progress = Progress(out)
    minutes = SCALES[config.scale].minutes_on_2_cores
    overridden = scale != SCALES[config.scale]
    print(
        f"[demo] facs demo, scale {config.scale}{' (with overrides)' if overridden else ''}: "
        f"{scale.people} people x {scale.images_per_person} photos, {scale.disfa_subjects} DISFA "
        f"subjects x {scale.disfa_frames} frames, VGG13 width {scale.width}, "
        f"{scale.pretrain_workers} pre-training workers x {scale.pretrain_steps} steps, "
        f"3 folds x (pre-trained, scratch) x up to {scale.finetune_epochs} epochs"
        f"{', recipe ' + config.recipe if config.recipe else ''}.\n"
        f"[demo] The {config.scale} preset takes about {minutes:g} minutes on a 2-core CPU "
        f"machine{' (your overrides change that)' if overridden else ''}; "
        "a cluster or more cores take less.",
        file=out,
        flush=True,
    )
    root = prepare_workdir(config)
    if not is_s3(root.uri):
        move_console_log(Path(root.path) / "logs" / f"console-{time.strftime('%Y%m%d-%H%M%S')}.log")
    tracking_uri = tracking_uri_for(config)
    paths = DemoPaths.under(root.uri)
    resources = connect_ray(ray_address, verbose)
    warn_if_local_workdir_on_many_nodes(paths.workdir, out)
    use_gpu = config.gpus_per_worker > 0
    cpus = max(1, int(resources.get("CPU", 1)))
    print(
        f"[demo] work dir {paths.workdir}; MLflow {tracking_uri}; Ray with "
        f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs",
        file=out,
        flush=True,
    )
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")

    with progress.stage("celeb_world", "synthetic MS-Celeb world") as note:
        celeb = generate_celeb(
            paths.celeb,
            people=scale.people,
            images_per_person=scale.images_per_person,
            seed=config.seed,
            noise=config.label_noise,
            wild_noise=config.wild_noise,
            use_ray=True,
            people_per_shard=max(1, math.ceil(scale.people / (2 * cpus))),
        )
        note["result"] = f"{celeb.images} photos of {celeb.people} people in {celeb.shards} shards"

    with progress.stage("disfa_world", "synthetic DISFA world") as note:
        disfa = generate_disfa(
            paths.disfa,
            subjects=scale.disfa_subjects,
            frames=scale.disfa_frames,
            stride=scale.disfa_stride,
            seed=config.seed + 1,
            noise=config.label_noise,
            use_ray=True,
        )
        note["result"] = (
            f"{disfa.videos} videos x {disfa.frames_per_video} frames (every "
            f"{disfa.stride}th of a session) and the labeler's OpenFace CSVs"
        )

    with progress.stage("corpus_build", "corpus build (faces, noisy labels, biographies)") as note:
        entry = build_version(
            celeb.corpus_config(paths.corpus, note=f"facs demo {stamp}"), append=False
        )
        note["result"] = (
            f"{entry.rows_read} rows = {entry.accepted} accepted + {entry.rejected} rejected"
        )

    shuffle = min(1024, scale.people * scale.images_per_person)
    recipe = read_recipe(config.recipe)
    with progress.stage("pretrain", f"pre-training ({scale.pretrain_workers} workers)") as note:
        pretrained = run_pretraining(
            recipe_config(
                PretrainConfig,
                recipe.get("pretrain"),
                corpus=paths.corpus,
                workers=scale.pretrain_workers,
                gpus_per_worker=config.gpus_per_worker,
                cpus_per_worker=cpus_per_worker(resources, scale.pretrain_workers, use_gpu),
                batch_size=scale.batch_size,
                max_steps=scale.pretrain_steps,
                max_epochs=10_000,
                patience=0,
                cache_data=True,
                shuffle_buffer=shuffle,
                prefetch_batches=2,
                storage_path=paths.pretrain_runs,
                run_name=f"demo-{stamp}-pretrain",
                mlflow_uri=tracking_uri,
                experiment=config.experiment,
                seed=config.seed,
                model={"width": scale.width},
            )
        )
        note["result"] = (
            f"{pretrained.epochs} epochs, best val loss {pretrained.best_val_loss:.4f}; "
            f"{pretrained.registered_model} v{pretrained.registered_version}"
        )
    source = (
        f"models:/{pretrained.registered_model}/{pretrained.registered_version}"
        if pretrained.registered_version
        else pretrained.best_checkpoint
    )

    with progress.stage(
        "finetune", "fine-tuning on 3 DISFA folds, pre-trained vs. scratch"
    ) as note:
        cv = run_cross_validation(
            recipe_config(
                FinetuneConfig,
                recipe.get("finetune"),
                disfa=DisfaConfig(root=disfa.out, cache=paths.disfa_cache),
                labeler_openface=disfa.openface_dir or "",
                pretrained=source,
                compare_init=True,
                folds=3,
                model={"width": scale.width},
                workers=1,
                gpus_per_worker=config.gpus_per_worker,
                cpus_per_worker=finetune_cpus(cpus, scale.concurrent_folds, use_gpu),
                concurrent_folds=scale.concurrent_folds,
                batch_size=scale.batch_size,
                max_epochs=scale.finetune_epochs,
                patience=scale.finetune_patience,
                batches_per_epoch=scale.finetune_batches_per_epoch,
                val_batches=scale.finetune_batches_per_epoch,
                shuffle_buffer=shuffle,
                prefetch_batches=2,
                storage_path=paths.finetune_runs,
                run_name=f"demo-{stamp}",
                mlflow_uri=tracking_uri,
                experiment=config.experiment,
                seed=config.seed,
                plots=scale.plots,
            )
        )
        note["result"] = (
            ", ".join(
                f"{arm} F1 {100 * result.mean_f1_paper8:.1f}" for arm, result in cv.arms.items()
            )
            + " (8 AUs, fold-mean)"
        )

    with progress.stage("report", "Table III and the MLflow runs"):
        result = DemoResult(
            paths=paths,
            scale=scale,
            tracking_uri=tracking_uri,
            experiment_id=_experiment_id(tracking_uri, config.experiment),
            pretrain_run_id=pretrained.mlflow_run_id,
            compare_run_id=cv.compare_run_id or "",
            arm_run_ids={arm: r.mlflow_run_id for arm, r in cv.arms.items()},
            registered={
                name: version
                for name, version in (
                    (pretrained.registered_model, pretrained.registered_version),
                    (cv.registered_model, cv.registered_version),
                )
                if name and version
            },
            table3=cv.table3,
            f1_8au_fold_mean=headline_f1(cv),
            seconds=progress.seconds,
        )
        result.claims = claim_lines(result.f1_8au_fold_mean)
        print("\n" + cv.table3, file=out, flush=True)
        for line in result.claims:
            print(f"[demo] {line}", file=out, flush=True)
        _record(result, root, config)
    result.seconds["total"] = round(time.perf_counter() - progress.start, 1)
    print(mlflow_ui_hint(result), file=out, flush=True)
    print(
        f"[demo] finished in {progress.elapsed()} (min:s); timings {result.seconds}",
        file=out,
        flush=True,
    )
    return result


def _experiment_id(tracking_uri: str, name: str) -> str:
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri).get_experiment_by_name(name)
    if experiment is None:
        raise RuntimeError(f"MLflow experiment {name!r} missing at {tracking_uri} after the demo")
    return experiment.experiment_id


def _record(result: DemoResult, root: Location, config: DemoConfig) -> None:
    """Table III and the summary into the work dir, and onto the comparison's MLflow run."""
    from training.tracking import RunHandle, log_metrics, set_tags

    summary = json.dumps(
        {"config": asdict(config), **asdict(result), "paths": asdict(result.paths)}, indent=2
    )
    root.join(TABLE3).write_bytes(result.table3.encode("utf-8"))
    root.join(SUMMARY).write_text_atomic(summary)
    if not result.compare_run_id:
        return
    run = RunHandle(result.tracking_uri, result.experiment_id, result.compare_run_id)
    log_metrics(run, {f"demo_seconds_{k}": v for k, v in result.seconds.items()}, step=0)
    set_tags(run, {"facs.demo.scale": config.scale, "facs.demo.workdir": result.paths.workdir})
    client = run.client()
    client.log_text(run.run_id, summary, "demo/demo-summary.json")
    client.log_text(run.run_id, result.table3, "demo/table3.md")


def mlflow_ui_hint(result: DemoResult) -> str:
    """How to look at the runs: the UI command (local store) or the server's pages."""
    from training.tracking import experiment_url

    experiment, compare = result.experiment_id, result.compare_run_id
    if result.tracking_uri.startswith(("http://", "https://")):
        base = result.tracking_uri.rstrip("/")
        how = f"Open the MLflow server: {experiment_url(base, experiment)}"
    else:
        base = "http://127.0.0.1:5000"
        how = (
            "Open the MLflow UI on the runs:\n"
            f"    mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 --port 5000\n"
            f"then browse {experiment_url(base, experiment)}"
        )
    lines = [
        "",
        how,
        f"    experiment {experiment}; pre-training run {result.pretrain_run_id}",
        f"    comparison run {compare}: {experiment_url(base, experiment, compare)}",
        *(f"    {arm} cross-validation run {run_id}" for arm, run_id in result.arm_run_ids.items()),
        "    registered models: "
        + ", ".join(f"{name} v{version}" for name, version in result.registered.items()),
        f"    Table III and a summary: {Location.of(result.paths.workdir).join(TABLE3).uri}, "
        f"{Location.of(result.paths.workdir).join(SUMMARY).uri}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command


def _run(args: argparse.Namespace) -> int:
    from cluster.options import load_config, overrides_from_args

    config = load_config(DemoConfig, args.config, overrides_from_args(args))
    run_demo(config, ray_address=args.ray_address, verbose=getattr(args, "verbose", False))
    return 0


def register(stages: Any) -> argparse.ArgumentParser:
    """Add ``facs demo`` to the ``facs`` subcommands."""
    from cluster.options import config_parser

    return config_parser(
        stages,
        "demo",
        DemoConfig,
        "The whole pipeline on synthetic data: worlds -> corpus -> pre-training (2 workers) -> "
        "3-fold fine-tuning, pre-trained vs. scratch -> Table III and the MLflow runs. "
        f"About {SCALES['small'].minutes_on_2_cores:g} minutes on 2 CPU cores at the default "
        "scale; --scale and the per-field options grow it.",
        _run,
    )
