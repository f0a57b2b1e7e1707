"""Typed configuration of the DISFA ingestion (videos or released frames -> cached face frames)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from pipeline.faces import FaceConfig
from pipeline.options import option

CAMERAS: tuple[str, ...] = ("right", "left")
LAYOUTS: tuple[str, ...] = ("videos", "frames")
SEEK_MODES: tuple[str, ...] = ("seek", "grab")


@dataclass
class DisfaConfig:
    root: str = option(
        "",
        "DISFA root (local folder or s3:// prefix): with layout=videos it holds "
        "Videos_RightCamera/, Videos_LeftCamera/ and ActionUnit_Labels/; with layout=frames, "
        "extracted frame images named like RightVideoSN005_00003268.jpg (any sub-folders)",
    )
    layout: str = option(
        "videos",
        "videos: the DISFA release (AVI videos + per-AU intensity txt files); "
        "frames: extracted frame images with the paper's header-less fold CSVs as labels",
    )
    camera: str = option("right", "which camera's frames are read: right or left")
    fold_csvs: list[str] = option(
        factory=list,
        help="layout=frames: label CSVs like fold1_test.csv (URIs); default: every "
        "fold*_test.csv directly under root",
    )
    subjects: list[str] = option(
        factory=list, help="read only these subjects (e.g. SN001); empty = every subject found"
    )
    threshold: int = option(
        2,
        "an AU is present when its DISFA intensity (0-5) is >= this (the paper: 2); "
        "layout=frames labels are already binary and ignore it",
    )
    cache: str = option(
        "",
        "folder or s3:// prefix for the processed-frame cache (Parquet); default "
        "~/.cache/facs/disfa (single machine only: on a cluster give a shared path or s3://)",
    )
    workers: int = option(0, "face-stage actors (0 = one per CPU in the Ray cluster)")
    frames_per_task: int = option(
        1000, "video frames decoded by one Ray read task (a video spans several)"
    )
    frames_per_block: int = option(
        32, "frames per block a read task emits (bounds memory: a 1024x768 gray frame is 0.8 MB)"
    )
    batch_size: int = option(32, "frames per face-stage batch")
    seek: str = option(
        "seek",
        "how a read task reaches its first frame: seek (CAP_PROP_POS_FRAMES, checked, "
        "exact for DISFA's MJPG AVIs) or grab (decode-free grab() from frame 0: exact for any codec)",
    )
    rows_per_file: int = option(20000, "target rows per cached Parquet file")
    face: FaceConfig = field(default_factory=FaceConfig)

    def __post_init__(self) -> None:
        choices = {"layout": LAYOUTS, "camera": CAMERAS, "seek": SEEK_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"DisfaConfig.{name}: expected one of {allowed}, got {getattr(self, name)!r}"
                )
        checks = {
            "threshold": 0 <= self.threshold <= 5,
            "workers": self.workers >= 0,
            "frames_per_task": self.frames_per_task >= 1,
            "frames_per_block": self.frames_per_block >= 1,
            "batch_size": self.batch_size >= 1,
            "rows_per_file": self.rows_per_file >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            helps = {f.name: f.metadata["help"] for f in fields(self)}
            raise ValueError(
                "; ".join(
                    f"DisfaConfig.{name}={getattr(self, name)!r} invalid ({helps[name]})"
                    for name in bad
                )
            )
