"""`facs demo` (the workflow; ``cluster.demo_cli`` parses its flags): the paper in miniature on synthetic data, one command, on this machine or a cluster.

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

import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from pipeline.console import move_console_log
from pipeline.storage import is_s3
from tune.demo_config import SCALES, DemoConfig, DemoScale
from tune.demo_report import (
    DemoResult,
    claim_lines,
    experiment_id,
    headline_f1,
    mlflow_ui_hint,
    record_demo,
)
from tune.demo_setup import (
    DemoPaths,
    Progress,
    connect_ray,
    cpus_per_worker,
    fine_tuning_trainers,
    finetune_cpus,
    prepare_workdir,
    read_recipe,
    recipe_config,
    tracking_uri_for,
    validation_people,
    warn_if_local_workdir_on_many_nodes,
)


@dataclass
class DemoContext:
    """What every stage of one demo run reads."""

    config: DemoConfig
    scale: DemoScale
    paths: DemoPaths
    tracking_uri: str
    resources: dict[str, float]
    stamp: str
    recipe: dict[str, dict]
    progress: Progress

    @property
    def use_gpu(self) -> bool:
        return self.config.gpus_per_worker > 0

    @property
    def cpus(self) -> int:
        return max(1, int(self.resources.get("CPU", 1)))

    def job_settings(self) -> dict[str, Any]:
        """What the demo sets alike for pre-training and fine-tuning (its sizes win a recipe's)."""
        return {
            "gpus_per_worker": self.config.gpus_per_worker,
            "batch_size": self.scale.batch_size,
            "shuffle_buffer": min(1024, self.scale.people * self.scale.images_per_person),
            "prefetch_batches": 2,
            "mlflow_uri": self.tracking_uri,
            "experiment": self.config.experiment,
            "seed": self.config.seed,
            "model": {"width": self.scale.width},
        }


def run_demo(
    config: DemoConfig,
    *,
    ray_address: str | None = None,
    out: TextIO | None = None,
    verbose: bool = False,
) -> DemoResult:
    """Run every stage of the demo (module docstring) and return where the results are."""
    out = out or sys.stdout
    scale = config.resolved()
    if validation_people(config.seed, scale.people) == 0:
        raise ValueError(
            f"DemoConfig: none of the {scale.people} synthetic people (seed {config.seed}) falls "
            "in the corpus's 5% validation split, which pre-training needs; expected more "
            "--people or another --seed"
        )
    progress = Progress(out)
    print(announcement(config, scale), file=out, flush=True)
    root = prepare_workdir(config)
    if not is_s3(root.uri):
        move_console_log(Path(root.path) / "logs" / f"console-{time.strftime('%Y%m%d-%H%M%S')}.log")
    paths = DemoPaths.under(root.uri)
    demo = DemoContext(
        config=config,
        scale=scale,
        paths=paths,
        tracking_uri=tracking_uri_for(config),
        resources=connect_ray(ray_address, verbose),
        stamp=datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"),
        recipe=read_recipe(config.recipe),
        progress=progress,
    )
    warn_if_local_workdir_on_many_nodes(paths.workdir, out)
    print(
        f"[demo] work dir {paths.workdir}; MLflow {demo.tracking_uri}; Ray with "
        f"{demo.resources.get('CPU', 0):g} CPUs, {demo.resources.get('GPU', 0):g} GPUs",
        file=out,
        flush=True,
    )
    celeb, disfa = make_worlds(demo)
    build_corpus(demo, celeb)
    pretrained = pretrain(demo)
    cv = finetune(demo, disfa, pretrained)
    with progress.stage("report", "Table III and the MLflow runs"):
        result = DemoResult(
            paths=paths,
            scale=scale,
            tracking_uri=demo.tracking_uri,
            experiment_id=experiment_id(demo.tracking_uri, config.experiment),
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
        record_demo(result, root, config)
    result.seconds["total"] = round(time.perf_counter() - progress.start, 1)
    print(mlflow_ui_hint(result), file=out, flush=True)
    print(
        f"[demo] finished in {progress.elapsed()} (min:s); timings {result.seconds}",
        file=out,
        flush=True,
    )
    return result


def announcement(config: DemoConfig, scale: DemoScale) -> str:
    """The demo's first lines: its sizes and how long the preset takes."""
    minutes = SCALES[config.scale].minutes_on_2_cores
    overridden = scale != SCALES[config.scale]
    return (
        f"[demo] facs demo, scale {config.scale}{' (with overrides)' if overridden else ''}: "
        f"{scale.people} people x {scale.images_per_person} photos, {scale.disfa_subjects} DISFA "
        f"subjects x {scale.disfa_frames} frames, VGG13 width {scale.width}, "
        f"{scale.pretrain_workers} pre-training workers x {scale.pretrain_steps} steps, "
        f"3 folds x (pre-trained, scratch) x up to {scale.finetune_epochs} epochs"
        f"{', recipe ' + config.recipe if config.recipe else ''}.\n"
        f"[demo] The {config.scale} preset takes about {minutes:g} minutes on a 2-core CPU "
        f"machine{' (your overrides change that)' if overridden else ''}; "
        "a cluster or more cores take less."
    )


def make_worlds(demo: DemoContext) -> tuple[Any, Any]:
    """Stages 1 and 2: the synthetic MS-Celeb and DISFA worlds, as Ray tasks."""
    from pipeline.synth.celeb_world import generate_celeb
    from pipeline.synth.disfa_world import generate_disfa

    config, scale, paths = demo.config, demo.scale, demo.paths
    with demo.progress.stage("celeb_world", "synthetic MS-Celeb world") as note:
        celeb = generate_celeb(
            paths.celeb,
            people=scale.people,
            images_per_person=scale.images_per_person,
            seed=config.seed,
            noise=config.label_noise,
            wild_noise=config.wild_noise,
            use_ray=True,
            people_per_shard=max(1, math.ceil(scale.people / (2 * demo.cpus))),
        )
        note["result"] = f"{celeb.images} photos of {celeb.people} people in {celeb.shards} shards"
    with demo.progress.stage("disfa_world", "synthetic DISFA world") as note:
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
    return celeb, disfa


def build_corpus(demo: DemoContext, celeb: Any) -> None:
    """Stage 3: the pre-training corpus (faces, noisy labels, gender and region)."""
    from pipeline.corpus.build import build_version

    with demo.progress.stage(
        "corpus_build", "corpus build (faces, noisy labels, biographies)"
    ) as note:
        entry = build_version(
            celeb.corpus_config(demo.paths.corpus, note=f"facs demo {demo.stamp}"), append=False
        )
        note["result"] = (
            f"{entry.rows_read} rows = {entry.accepted} accepted + {entry.rejected} rejected"
        )


def pretrain(demo: DemoContext) -> Any:
    """Stage 4: pre-training under a step budget, registered in MLflow."""
    from training.pretrain import run_pretraining
    from training.pretrain_config import PretrainConfig

    scale = demo.scale
    with demo.progress.stage(
        "pretrain", f"pre-training ({scale.pretrain_workers} workers)"
    ) as note:
        pretrained = run_pretraining(
            recipe_config(
                PretrainConfig,
                demo.recipe.get("pretrain"),
                **demo.job_settings(),
                corpus=demo.paths.corpus,
                workers=scale.pretrain_workers,
                cpus_per_worker=cpus_per_worker(
                    demo.resources, scale.pretrain_workers, demo.use_gpu
                ),
                max_steps=scale.pretrain_steps,
                max_epochs=10_000,
                patience=0,
                cache_data=True,
                storage_path=demo.paths.pretrain_runs,
                run_name=f"demo-{demo.stamp}-pretrain",
            )
        )
        note["result"] = (
            f"{pretrained.epochs} epochs, best val loss {pretrained.best_val_loss:.4f}; "
            f"{pretrained.registered_model} v{pretrained.registered_version}"
        )
    return pretrained


def finetune(demo: DemoContext, disfa: Any, pretrained: Any) -> Any:
    """Stage 5: 3-fold cross-validation on the DISFA world, pre-trained vs. scratch."""
    from pipeline.disfa import DisfaConfig
    from training.finetune import run_cross_validation
    from training.finetune_config import FinetuneConfig

    scale = demo.scale
    source = (
        f"models:/{pretrained.registered_model}/{pretrained.registered_version}"
        if pretrained.registered_version
        else pretrained.best_checkpoint
    )
    title = "fine-tuning on 3 DISFA folds, pre-trained vs. scratch"
    with demo.progress.stage("finetune", title) as note:
        cv = run_cross_validation(
            recipe_config(
                FinetuneConfig,
                demo.recipe.get("finetune"),
                **demo.job_settings(),
                disfa=DisfaConfig(root=disfa.out, cache=demo.paths.disfa_cache),
                labeler_openface=disfa.openface_dir or "",
                pretrained=source,
                compare_init=True,
                folds=3,
                workers=1,
                cpus_per_worker=finetune_cpus(
                    demo.cpus, scale.concurrent_folds, demo.use_gpu, fine_tuning_trainers(scale)
                ),
                concurrent_folds=scale.concurrent_folds,
                folds_per_trainer=scale.folds_per_trainer,
                max_epochs=scale.finetune_epochs,
                patience=scale.finetune_patience,
                batches_per_epoch=scale.finetune_batches_per_epoch,
                val_batches=scale.finetune_batches_per_epoch,
                storage_path=demo.paths.finetune_runs,
                run_name=f"demo-{demo.stamp}",
                plots=scale.plots,
            )
        )
        note["result"] = (
            ", ".join(
                f"{arm} F1 {100 * result.mean_f1_paper8:.1f}" for arm, result in cv.arms.items()
            )
            + " (8 AUs, fold-mean)"
        )
    return cv
