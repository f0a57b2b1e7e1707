"""What `facs predict` reads and writes, as configuration: no torch here, so the CLI loads fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.faces import FaceConfig
from pipeline.options import at_least_each, option, raise_failed
from pipeline.run_options import RayWorkers, mlflow_uri_field


@dataclass
class PredictConfig(RayWorkers):
    """What `facs predict` reads, which model scores it, and where the rows go (the model's
    actors: ``RayWorkers``)."""

    inputs: list[str] = option(
        factory=list,
        help="images, folders (searched recursively), videos, or corpus roots; local "
        "paths or s3:// URIs",
    )
    model: str = option("", "models:/facs-vgg13-disfa/1, runs:/<id>/model or a checkpoint folder")
    out: str | None = option(
        None,
        "output file: .csv or .parquet (or s3://); none = ./predictions.csv, or "
        "$FACS_STORAGE_ROOT/predict/predictions-<UTC time>.csv (refused in a Ray job "
        "without it)",
    )
    face: FaceConfig = field(default_factory=FaceConfig)
    image_faces: Literal["all", "largest"] = option(
        "all", "rows per image: every face found, or the largest only (videos: largest)"
    )
    threshold: float = option(0.5, "probability at which AUxx_c is 1")
    batch_size: int = option(256, "faces per model batch")
    frames_per_task: int = option(300, "video frames decoded and searched by one Ray task")
    seek: Literal["seek", "grab"] = option(
        "seek",
        "how a task reaches its first frame: seek (checked, falls back to grab) or "
        "grab (decode from frame 0: exact for any codec)",
    )
    corpus_version: int | None = option(None, "version of corpus inputs; none = the latest")
    mlflow_uri: str | None = mlflow_uri_field(" for models:/ and runs:/ sources")

    def __post_init__(self) -> None:
        checks = [
            (0 < self.threshold < 1, f"threshold in (0, 1), got {self.threshold}"),
            *at_least_each(self, batch_size=1, frames_per_task=1),
            *self.worker_checks(),
        ]
        raise_failed(checks, "PredictConfig")
