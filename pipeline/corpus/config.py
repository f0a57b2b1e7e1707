"""Typed configuration of `facs corpus build` / `facs corpus add` (YAML + CLI flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.faces import FaceConfig
from pipeline.options import at_least_each, raise_failed


@dataclass
class LabelSourcesConfig:
    release_csv: list[str] = field(
        default_factory=list,
        metadata={"help": "the paper's released header-less label CSV(s) (comma-separated URIs)"},
    )
    release_header: str | None = field(
        default=None,
        metadata={
            "help": "labels.txt giving the release CSVs' header (built-in header when omitted)"
        },
    )
    openface_images: str | None = field(
        default=None,
        metadata={
            "help": "folder/prefix of OpenFace FaceLandmarkImg per-image CSVs (stem = image name)"
        },
    )
    openface_sequence: str | None = field(
        default=None,
        metadata={
            "help": "OpenFace FeatureExtraction CSV over the image folder (row frame N = Nth image, sorted)"
        },
    )
    min_confidence: float = field(
        default=0.75, metadata={"help": "OpenFace rows below this confidence are rejected"}
    )


@dataclass
class CorpusBuildConfig:
    corpus: str = field(
        default="", metadata={"help": "corpus root: local folder or s3://bucket/prefix"}
    )
    images: str | None = field(
        default=None,
        metadata={"help": "folder/prefix of jpg/png/bmp images (identity = sub-folder)"},
    )
    identities_csv: str | None = field(
        default=None, metadata={"help": "image,identity CSV overriding sub-folder identities"}
    )
    tsv: list[str] = field(
        default_factory=list,
        metadata={"help": "MS-Celeb-1M TSV file(s) (FaceImageCroppedWithAlignment.tsv style)"},
    )
    bios: str | None = field(
        default=None, metadata={"help": "Bios.zip or folder of Knowledge-Graph JSON biographies"}
    )
    labels: LabelSourcesConfig = field(default_factory=LabelSourcesConfig)
    label_model: str | None = field(
        default=None,
        metadata={
            "help": "label the faces with a trained model instead of label files (self-training): "
            "models:/facs-vgg13-pretrained/1, runs:/<id>/model or a checkpoint folder"
        },
    )
    label_threshold: float = field(
        default=0.5, metadata={"help": "with --label-model: probability at which an AU is present"}
    )
    mlflow_uri: str | None = field(
        default=None,
        metadata={
            "help": "MLflow tracking URI for models:/ and runs:/ label models; none = "
            "$MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db"
        },
    )
    face: FaceConfig = field(default_factory=FaceConfig)
    workers: int = field(
        default=0,
        metadata={"help": "parallel face-stage workers (0 = one per CPU in the Ray cluster)"},
    )
    batch_size: int = field(default=64, metadata={"help": "images per face-stage batch"})
    rows_per_file: int = field(default=20000, metadata={"help": "target rows per Parquet shard"})
    tsv_range_mb: int = field(
        default=16,
        metadata={"help": "MS-Celeb TSV files are read in parallel byte ranges of this size"},
    )
    note: str = field(default="", metadata={"help": "free-text note stored with the version"})

    def __post_init__(self) -> None:
        checks = [
            (
                0 < self.label_threshold < 1,
                f"label_threshold in (0, 1), got {self.label_threshold}",
            ),
            (
                0 <= self.labels.min_confidence <= 1,
                f"labels.min_confidence in [0, 1], got {self.labels.min_confidence}",
            ),
            *at_least_each(self, workers=0, batch_size=1, rows_per_file=1, tsv_range_mb=1),
        ]
        raise_failed(checks, "CorpusBuildConfig")
