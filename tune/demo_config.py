"""Options of `facs demo`: a named scale preset, per-field overrides, and where things are kept."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.options import at_least_each, option, raise_failed
from pipeline.run_options import mlflow_uri_field


@dataclass(frozen=True)
class DemoScale:
    """How big each stage of the demo is; a preset from :data:`SCALES`, fields overridable."""

    people: int
    images_per_person: int
    disfa_subjects: int
    disfa_frames: int
    disfa_stride: int
    width: float
    pretrain_workers: int
    #: Optimizer steps of pre-training in all (a fixed budget; each worker takes this many).
    pretrain_steps: int
    finetune_epochs: int
    finetune_patience: int
    finetune_batches_per_epoch: int | None
    batch_size: int
    concurrent_folds: int
    #: Folds one fine-tuning trainer steps in lock-step (0 = an arm's every fold).
    folds_per_trainer: int
    plots: bool
    #: Measured minutes on a 2-core CPU machine (what the demo announces up front).
    minutes_on_2_cores: float


#: ``tiny``: tests and the cluster integration test; ``small``: the default, the method shown
#: in about 9 minutes on 2 CPU cores (measured: benchmarks/results/demo.json); ``medium``: about
#: 1.5 hours there, minutes on a cluster; ``paper``: the paper's DISFA sessions and full-width
#: VGG13, for a GPU cluster.
SCALES: dict[str, DemoScale] = {
    "tiny": DemoScale(
        people=24, images_per_person=4, disfa_subjects=6, disfa_frames=12, disfa_stride=45,
        width=0.125, pretrain_workers=2, pretrain_steps=2,
        finetune_epochs=1, finetune_patience=1, finetune_batches_per_epoch=2,
        batch_size=16, concurrent_folds=0, folds_per_trainer=0, plots=False,
        minutes_on_2_cores=3.0,
    ),
    "small": DemoScale(
        people=300, images_per_person=10, disfa_subjects=27, disfa_frames=108, disfa_stride=45,
        width=0.125, pretrain_workers=2, pretrain_steps=2000,
        finetune_epochs=12, finetune_patience=6, finetune_batches_per_epoch=None,
        batch_size=32, concurrent_folds=2, folds_per_trainer=0, plots=True,
        minutes_on_2_cores=9.5,
    ),
    "medium": DemoScale(
        people=1000, images_per_person=12, disfa_subjects=27, disfa_frames=108, disfa_stride=45,
        width=0.25, pretrain_workers=2, pretrain_steps=8000,
        finetune_epochs=20, finetune_patience=5, finetune_batches_per_epoch=None,
        batch_size=32, concurrent_folds=2, folds_per_trainer=0, plots=True,
        minutes_on_2_cores=90.0,
    ),
    "paper": DemoScale(
        people=2000, images_per_person=80, disfa_subjects=27, disfa_frames=4845, disfa_stride=1,
        width=1.0, pretrain_workers=4, pretrain_steps=100_000,
        finetune_epochs=100, finetune_patience=10, finetune_batches_per_epoch=None,
        batch_size=32, concurrent_folds=0, folds_per_trainer=1, plots=True,
        minutes_on_2_cores=60000.0,
    ),
}  # fmt: skip

ScaleName = Literal["tiny", "small", "medium", "paper"]


def preset_override(help_text: str) -> Any:
    """An option that overrides one value of the ``--scale`` preset; none keeps the preset's."""
    return option(None, help_text + "; none = the --scale preset's")


@dataclass
class DemoConfig:
    """`facs demo`: synthetic worlds -> corpus -> pre-training -> 3-fold fine-tuning -> Table III."""

    scale: ScaleName = option(
        "small",
        "preset size: tiny (tests, about 3 min), small (the method shown, about 9 "
        "min on 2 CPU cores), medium (about 1.5 hours on 2 cores), paper (DISFA's full "
        "sessions, width 1.0: a GPU cluster)",
    )
    workdir: str = option(
        "./facs-demo",
        "where everything goes (worlds, corpus, checkpoints, DISFA cache, report): a "
        "local folder, or s3://bucket/prefix on a multi-node cluster",
    )
    local_dir: str = option(
        "",
        "local folder for the default MLflow store when --workdir is on S3 and no "
        "--mlflow-uri is given; empty = ./facs-demo-mlflow",
    )
    mlflow_uri: str | None = mlflow_uri_field(
        " (e.g. http://head:5000)", "MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db"
    )
    experiment: str = option("facs-demo", "MLflow experiment holding every run of the demo")
    seed: int = option(0, "seed of both worlds and of training")
    label_noise: float = option(
        1.0,
        "the noisy labeler's noise, for both worlds (1.0: its 8-AU F1 on the DISFA "
        "world is OpenFace 2.0's 53.6 +- 5)",
    )
    wild_noise: float = option(
        0.0,
        "the labeler's extra false alarms on celebrity photos (0 = its DISFA error "
        "rates; 1.0 = OpenFace's MS-Celeb label rates, which at demo scale leave pre-training "
        "nothing to learn; see README: departures)",
    )
    recipe: str = option(
        "",
        "a recipe YAML with pretrain: and finetune: sections (configs/paper.yaml = "
        "the paper's recipe) applied over the demo's own; '' = the product's defaults",
    )
    gpus_per_worker: float = option(0.0, "GPUs per training worker (0 = train on CPU)")
    people: int | None = preset_override("synthetic celebrities")
    images_per_person: int | None = preset_override("photos per person")
    disfa_subjects: int | None = preset_override("synthetic DISFA subjects (3-27)")
    disfa_frames: int | None = preset_override("frames per DISFA video")
    disfa_stride: int | None = preset_override("session frames between two rendered DISFA frames")
    width: float | None = preset_override("VGG13 width multiplier")
    pretrain_workers: int | None = preset_override("pre-training DDP workers")
    pretrain_steps: int | None = preset_override("pre-training optimizer steps (the budget)")
    finetune_epochs: int | None = preset_override("fine-tuning epochs per fold (upper bound)")
    finetune_patience: int | None = preset_override("fine-tuning early-stopping patience")
    finetune_batches_per_epoch: int | None = preset_override("cap on fine-tuning steps per epoch")
    batch_size: int | None = preset_override("samples per step per worker")
    concurrent_folds: int | None = preset_override("fine-tuning trainers running at once (0 = all)")
    folds_per_trainer: int | None = preset_override(
        "folds one fine-tuning trainer steps in lock-step (0 = all of an arm)"
    )

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(
                f"DemoConfig.scale: expected one of {sorted(SCALES)}, got {self.scale!r}"
            )
        if not self.workdir:
            raise ValueError("DemoConfig.workdir: expected a folder or s3:// prefix, got ''")
        scale = self.resolved()
        checks = [
            *at_least_each(scale, people=1, images_per_person=2),
            (
                3 <= scale.disfa_subjects <= 27,
                f"disfa_subjects in 3..27, got {scale.disfa_subjects}",
            ),
            *at_least_each(scale, disfa_frames=4, disfa_stride=1),
            *at_least_each(self, label_noise=0, wild_noise=0),
            (scale.width > 0, f"width > 0, got {scale.width}"),
            *at_least_each(scale, pretrain_workers=1, pretrain_steps=1, finetune_epochs=1),
            *at_least_each(scale, batch_size=1, concurrent_folds=0, folds_per_trainer=0),
        ]
        raise_failed(checks, "DemoConfig")

    def resolved(self) -> DemoScale:
        """The preset of ``scale`` with every field given here (not None) put in its place."""
        preset = SCALES[self.scale]
        given = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(DemoScale)
            if hasattr(self, f.name) and getattr(self, f.name) is not None
        }
        return dataclasses.replace(preset, **given)
