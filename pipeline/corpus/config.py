"""Typed configuration of `facs corpus build` / `facs corpus add` (YAML + CLI flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.faces import FaceConfig
from pipeline.options import at_least_each, option, raise_failed


@dataclass
class LabelSourcesConfig:
    release_csv: list[str] = option(
        factory=list, help="the paper's released header-less label CSV(s) (comma-separated URIs)"
    )
    release_header: str | None = option(
        None, "labels.txt giving the release CSVs' header (built-in header when omitted)"
    )
    openface_images: str | None = option(
        None, "folder/prefix of OpenFace FaceLandmarkImg per-image CSVs (stem = image name)"
    )
    openface_sequence: str | None = option(
        None,
        "OpenFace FeatureExtraction CSV over the image folder (row frame N = Nth image, sorted)",
    )
    min_confidence: float = option(0.75, "OpenFace rows below this confidence are rejected")


@dataclass
class CorpusBuildConfig:
    corpus: str = option("", "corpus root: local folder or s3://bucket/prefix")
    images: str | None = option(None, "folder/prefix of jpg/png/bmp images (identity = sub-folder)")
    identities_csv: str | None = option(None, "image,identity CSV overriding sub-folder identities")
    tsv: list[str] = option(
        factory=list, help="MS-Celeb-1M TSV file(s) (FaceImageCroppedWithAlignment.tsv style)"
    )
    bios: str | None = option(None, "Bios.zip or folder of Knowledge-Graph JSON biographies")
    labels: LabelSourcesConfig = field(default_factory=LabelSourcesConfig)
    label_model: str | None = option(
        None,
        "label the faces with a trained model instead of label files (self-training): "
        "models:/facs-vgg13-pretrained/1, runs:/<id>/model or a checkpoint folder",
    )
    label_threshold: float = option(
        0.5, "with --label-model: probability at which an AU is present"
    )
    mlflow_uri: str | None = option(
        None,
        "MLflow tracking URI for models:/ and runs:/ label models; none = "
        "$MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db",
    )
    face: FaceConfig = field(default_factory=FaceConfig)
    workers: int = option(0, "parallel face-stage workers (0 = one per CPU in the Ray cluster)")
    batch_size: int = option(64, "images per face-stage batch")
    rows_per_file: int = option(20000, "target rows per Parquet shard")
    tsv_range_mb: int = option(
        16, "MS-Celeb TSV files are read in parallel byte ranges of this size"
    )
    note: str = option("", "free-text note stored with the version")

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
