"""Options of `facs synth celeb|disfa`: dataclasses whose field metadata the CLI turns into flags."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.options import option

#: ``cameras`` of a synthetic DISFA world: the right camera (what is read by default) or both.
DISFA_CAMERA_CHOICES: tuple[str, ...] = ("right", "both")


@dataclass
class SynthCelebConfig:
    """An MS-Celeb-like world: people x images, TSV + OpenFace CSVs + biographies + truth."""

    out: str = option("", "output folder (local path or s3:// prefix)")
    people: int = option(1000, "number of synthetic people (identities)")
    images_per_person: int = option(10, "images per person")
    tiers: str = option(
        "",
        "groups of PEOPLExIMAGES, e.g. 30x100,90x20,280x5: a few people with many "
        "photos and many with few, as in MS-Celeb (replaces --people/--images-per-person)",
    )
    seed: int = option(0, "random seed; same seed -> identical files")
    noise: float = option(1.0, "OpenFace-like label noise strength (0 = labels are the truth)")
    wild_noise: float = option(
        1.0,
        "multiplier on the labeler's extra false alarms in photos in the wild (1 = "
        "OpenFace's MS-Celeb label rates, mostly noise; lab video is not affected)",
    )
    rates: str = option(
        "celeb",
        "true AU rate table: celeb (photo rates), disfa, or balanced (30 percent each, blinks 5 percent)",
    )
    image_size: int = option(256, "side of the square images, pixels")
    people_per_shard: int = option(
        200, "people / this = the number of tasks (TSV shards), balanced by image count"
    )
    use_ray: bool = option(False, "generate shards in parallel as Ray tasks")
    workers: int = option(
        0, "CPUs for a local Ray started here (0 = all); ignored if Ray is running"
    )


@dataclass
class SynthDisfaConfig:
    """A DISFA-like world: subjects' stereo videos with smooth AU intensity tracks."""

    out: str = option("", "output folder (local path or s3:// prefix)")
    subjects: int = option(27, "number of subjects (1-27, DISFA's subject ids)")
    frames: int = option(
        108,
        "frames per video: every --stride-th frame of a frames x stride session "
        "(108 x 45 = DISFA's 4,845-frame sessions)",
    )
    stride: int = option(
        45,
        "session frames between two rendered frames (45 = 2.25 s at 20 fps: nearly "
        "independent expressions; 1 = consecutive frames)",
    )
    seed: int = option(0, "random seed; same seed -> identical files")
    fps: float = option(20.0, "video frame rate (DISFA: 20)")
    frame_width: int = option(360, "video frame width, pixels")
    frame_height: int = option(288, "video frame height, pixels")
    cameras: str = option(
        "right", "right (what fine-tuning reads by default) or both (adds the left camera)"
    )
    openface: bool = option(
        True,
        "write the noisy labeler's OpenFace FeatureExtraction CSVs (OpenFace/), "
        "which `facs finetune --labeler-openface` scores",
    )
    noise: float = option(
        1.0, "label noise of those CSVs; the celeb world's --noise, for one labeler"
    )
    use_ray: bool = option(False, "render subjects in parallel as Ray tasks")
    workers: int = option(
        0, "CPUs for a local Ray started here (0 = all); ignored if Ray is running"
    )

    def __post_init__(self) -> None:
        if self.cameras not in DISFA_CAMERA_CHOICES:
            raise ValueError(
                f"SynthDisfaConfig.cameras: expected one of {DISFA_CAMERA_CHOICES}, "
                f"got {self.cameras!r}"
            )
        for name in ("frames", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"SynthDisfaConfig.{name}: expected >= 1, got {getattr(self, name)}"
                )
