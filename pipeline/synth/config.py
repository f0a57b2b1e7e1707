"""Options of `facs synth celeb|disfa`: dataclasses whose field metadata the CLI turns into flags."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SynthCelebConfig:
    """An MS-Celeb-like world: people x images, TSV + OpenFace CSVs + biographies + truth."""

    out: str = field(default="", metadata={"help": "output folder (local path or s3:// prefix)"})
    people: int = field(default=1000, metadata={"help": "number of synthetic people (identities)"})
    images_per_person: int = field(default=10, metadata={"help": "images per person"})
    seed: int = field(default=0, metadata={"help": "random seed; same seed -> identical files"})
    noise: float = field(
        default=1.0,
        metadata={"help": "OpenFace-like label noise strength (0 = labels are the truth)"},
    )
    rates: str = field(
        default="celeb",
        metadata={
            "help": "true AU rate table: celeb (photo rates), disfa, or balanced (30 percent each, blinks 5 percent)"
        },
    )
    image_size: int = field(default=256, metadata={"help": "side of the square images, pixels"})
    people_per_shard: int = field(
        default=200, metadata={"help": "people generated per task (one TSV shard each)"}
    )
    use_ray: bool = field(
        default=False, metadata={"help": "generate shards in parallel as Ray tasks"}
    )
    workers: int = field(
        default=0,
        metadata={"help": "CPUs for a local Ray started here (0 = all); ignored if Ray is running"},
    )


@dataclass
class SynthDisfaConfig:
    """A DISFA-like world: subjects' stereo videos with smooth AU intensity tracks."""

    out: str = field(default="", metadata={"help": "output folder (local path or s3:// prefix)"})
    subjects: int = field(
        default=27, metadata={"help": "number of subjects (1-27, DISFA's subject ids)"}
    )
    frames: int = field(default=300, metadata={"help": "frames per video"})
    seed: int = field(default=0, metadata={"help": "random seed; same seed -> identical files"})
    fps: float = field(default=20.0, metadata={"help": "video frame rate (DISFA: 20)"})
    frame_width: int = field(default=360, metadata={"help": "video frame width, pixels"})
    frame_height: int = field(default=288, metadata={"help": "video frame height, pixels"})
    openface: bool = field(
        default=False,
        metadata={"help": "also write noisy OpenFace FeatureExtraction CSVs for the right camera"},
    )
    noise: float = field(
        default=1.0, metadata={"help": "label noise strength of those OpenFace CSVs"}
    )
    use_ray: bool = field(
        default=False, metadata={"help": "render subjects in parallel as Ray tasks"}
    )
    workers: int = field(
        default=0,
        metadata={"help": "CPUs for a local Ray started here (0 = all); ignored if Ray is running"},
    )
