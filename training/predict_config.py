"""What `facs predict` reads and writes, as configuration: no torch here, so the CLI loads fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.faces import FaceConfig
from pipeline.options import at_least_each, raise_failed
from pipeline.run_options import mlflow_uri_field


@dataclass
class PredictConfig:
    """What `facs predict` reads, which model scores it, and where the rows go."""

    inputs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "images, folders (searched recursively), videos, or corpus roots; local "
            "paths or s3:// URIs"
        },
    )
    model: str = field(
        default="",
        metadata={"help": "models:/facs-vgg13-disfa/1, runs:/<id>/model or a checkpoint folder"},
    )
    out: str | None = field(
        default=None,
        metadata={
            "help": "output file: .csv or .parquet (or s3://); none = ./predictions.csv, or "
            "$FACS_STORAGE_ROOT/predict/predictions-<UTC time>.csv (refused in a Ray job "
            "without it)"
        },
    )
    face: FaceConfig = field(default_factory=FaceConfig)
    image_faces: Literal["all", "largest"] = field(
        default="all",
        metadata={
            "help": "rows per image: every face found, or the largest only (videos: largest)"
        },
    )
    threshold: float = field(default=0.5, metadata={"help": "probability at which AUxx_c is 1"})
    batch_size: int = field(default=256, metadata={"help": "faces per model batch"})
    workers: int = field(default=1, metadata={"help": "model actors (the actor pool's size)"})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "GPUs per model actor (0 = CPU)"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs per model actor"})
    frames_per_task: int = field(
        default=300, metadata={"help": "video frames decoded and searched by one Ray task"}
    )
    seek: Literal["seek", "grab"] = field(
        default="seek",
        metadata={
            "help": "how a task reaches its first frame: seek (checked, falls back to grab) or "
            "grab (decode from frame 0: exact for any codec)"
        },
    )
    corpus_version: int | None = field(
        default=None, metadata={"help": "version of corpus inputs; none = the latest"}
    )
    mlflow_uri: str | None = mlflow_uri_field(" for models:/ and runs:/ sources")

    def __post_init__(self) -> None:
        checks = [
            (0 < self.threshold < 1, f"threshold in (0, 1), got {self.threshold}"),
            *at_least_each(self, batch_size=1, workers=1, frames_per_task=1),
            *at_least_each(self, gpus_per_worker=0, cpus_per_worker=0),
        ]
        raise_failed(checks, "PredictConfig")
