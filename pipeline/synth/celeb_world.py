"""The synthetic MS-Celeb world: people x photos, written in MS-Celeb's and OpenFace's own formats.

Layout under ``out``::

    FaceImageCroppedWithAlignment.tsv   MID, ImageSearchRank, ImageURL, PageURL, FaceID,
                                        FaceRectangle (base64 of 4 LE float32: left, top, right,
                                        bottom in [0, 1]), FaceData (base64 JPEG); no header
    openface/<image stem>.csv           noisy labels, OpenFace FaceLandmarkImg style
    Bios/<MID without "m.">.json        Knowledge Graph biography (name, description, abstract)
    truth.csv                           image_name, identity, gender, region, face box, true AU
                                        presence (intensity >= 2) and intensity per AU

Every random draw is seeded by (seed, person index, image index), so the files are identical
whether people are generated in one process or in parallel shards.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass

import numpy as np

from pipeline.bios import write_biography_json
from pipeline.corpus.config import CorpusBuildConfig, LabelSourcesConfig
from pipeline.names import image_key, msceleb_image_name
from pipeline.storage import Location
from pipeline.synth.au_sampling import (
    IntensityScale,
    person_offsets,
    rate_table,
    sample_photo_latents,
)
from pipeline.synth.config import SynthCelebConfig
from pipeline.synth.identity import sample_identity
from pipeline.synth.noisy_labeler import NoisyLabeler, openface_image_csv
from pipeline.synth.parallel import run_tasks
from pipeline.synth.people import fake_mid, sample_person
from pipeline.synth.render import RENDER_AUS, encode_jpeg, render_face, sample_scene
from pipeline.synth.shards import clear_parts, csv_line, join_parts, write_part

TSV_NAME = "FaceImageCroppedWithAlignment.tsv"
TRUTH_NAME = "truth.csv"
OPENFACE_DIR = "openface"
BIOS_DIR = "Bios"

TRUTH_COLUMNS: tuple[str, ...] = (
    "image_name", "identity", "gender", "region", "face_x", "face_y", "face_w", "face_h",
    *RENDER_AUS, *(f"{au}_intensity" for au in RENDER_AUS),
)  # fmt: skip

# Stream names for the seeded generators (any distinct constants).
_PERSON, _SCENE, _LABELS = 1, 2, 3


@dataclass(frozen=True)
class CelebWorldSummary:
    out: str
    people: int
    images: int
    tsv: str
    openface_dir: str
    bios_dir: str
    truth_csv: str
    shards: int

    def corpus_config(self, corpus: str, **options) -> CorpusBuildConfig:
        """The `facs corpus build` of this world: its TSV, its OpenFace CSVs, its biographies."""
        return CorpusBuildConfig(
            corpus=corpus,
            tsv=[self.tsv],
            labels=LabelSourcesConfig(openface_images=self.openface_dir),
            bios=self.bios_dir,
            **options,
        )


def face_rectangle(box: tuple[int, int, int, int], width: int, height: int) -> str:
    """MS-Celeb FaceRectangle text: base64 of left, top, right, bottom as LE float32 in [0, 1]."""
    x, y, w, h = box
    raw = struct.pack("<4f", x / width, y / height, (x + w) / width, (y + h) / height)
    return base64.b64encode(raw).decode("ascii")


def _write_shard(
    out: str,
    seed: int,
    start: int,
    stop: int,
    images_per_person: tuple[int, ...],
    noise: float,
    rates: str,
    image_size: int,
    wild_noise: float = 1.0,
) -> int:
    """Generate people ``start..stop-1``; write their per-image files and this shard's rows."""
    root = Location.of(out)
    scale = IntensityScale.for_rates(rates)
    labeler = NoisyLabeler(noise=noise, seed=seed, wild_noise=wild_noise)
    tsv_lines: list[str] = []
    truth_lines: list[str] = []
    for index, images in zip(range(start, stop), images_per_person, strict=True):
        rng = np.random.default_rng([seed, _PERSON, index])
        person = sample_person(rng, fake_mid(seed, index))
        identity = sample_identity(rng, person.gender, person.region)
        offset = person_offsets(rng, 1)[0]
        levels = scale.levels(sample_photo_latents(rng, offset, images))
        ranks = np.sort(rng.choice(np.arange(1, 3 * images + 1), images, replace=False))
        labels = labeler.label(
            np.random.default_rng([seed, _LABELS, index]), person.mid, levels, in_the_wild=True
        )
        bio = write_biography_json(person.mid, person.name, person.description, person.article)
        root.join(BIOS_DIR, f"{person.mid[2:]}.json").write_bytes(bio.encode("utf-8"))
        for j in range(images):
            scene_rng = np.random.default_rng([seed, _SCENE, index, j])
            scene = sample_scene(scene_rng)
            quality = int(scene_rng.integers(75, 96))
            rendered = render_face(identity, levels[j], scene, (image_size, image_size))
            jpeg = base64.b64encode(encode_jpeg(rendered.image, quality)).decode("ascii")
            rank, face_id = int(ranks[j]), 0
            name = msceleb_image_name(person.mid, rank, face_id)
            tsv_lines.append(
                "\t".join(
                    [
                        person.mid,
                        str(rank),
                        f"http://images.synthetic.invalid/{person.mid}/{rank}.jpg",
                        f"http://pages.synthetic.invalid/{person.mid}/{rank}.html",
                        str(face_id),
                        face_rectangle(rendered.face_box, image_size, image_size),
                        jpeg,
                    ]
                )
            )
            csv_text = openface_image_csv(labels, j)
            root.join(OPENFACE_DIR, f"{image_key(name)}.csv").write_bytes(csv_text.encode())
            truth = [name, person.mid, person.gender, person.region]
            truth += [str(v) for v in rendered.face_box]
            truth += [str(int(v >= 2)) for v in levels[j]] + [str(int(v)) for v in levels[j]]
            truth_lines.append(csv_line(truth))
    write_part(root, f"{start:09d}.tsv", tsv_lines)
    write_part(root, f"{start:09d}.truth.csv", truth_lines)
    return len(tsv_lines)


def parse_tiers(text: str) -> list[tuple[int, int]]:
    """``"30x100,90x20"`` -> ``[(30, 100), (90, 20)]``: groups of people x images per person."""
    tiers = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            people, images = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise ValueError(
                f"tiers: expected PEOPLExIMAGES groups like 30x100, got {part!r}"
            ) from None
        if people < 1 or images < 1:
            raise ValueError(f"tiers: {part!r} needs at least 1 person and 1 image")
        tiers.append((people, images))
    if not tiers:
        raise ValueError(f"tiers: expected PEOPLExIMAGES groups like 30x100,90x20, got {text!r}")
    return tiers


def images_per_person_of(people: int, images_per_person: int, tiers: str = "") -> list[int]:
    """Each person's number of images: ``tiers`` (a long tail, as in MS-Celeb) or all alike."""
    if not tiers:
        return [images_per_person] * people
    return [images for count, images in parse_tiers(tiers) for _ in range(count)]


def shard_bounds(counts: list[int], people_per_shard: int) -> list[tuple[int, int]]:
    """``(start, stop)`` person ranges: ``ceil(people / people_per_shard)`` shards of about equal
    image counts. Cut by people alone, a long-tailed world's first shard held its many-photo
    people (measured: 5,200 of 6,200 images in one of two shards, one core idle for 2 minutes).
    Each person's photos come from their own seed: the bounds never change the bytes."""
    shards = min(len(counts), math.ceil(len(counts) / max(1, people_per_shard)))
    target = sum(counts) / shards
    bounds: list[tuple[int, int]] = []
    start, done = 0, 0
    for index, images in enumerate(counts):
        done += images
        last_person = index + 1 == len(counts)
        if not last_person and len(bounds) < shards - 1 and done >= target * (len(bounds) + 1):
            bounds.append((start, index + 1))
            start = index + 1
    bounds.append((start, len(counts)))
    return bounds


def generate_celeb(
    out: str,
    *,
    people: int,
    images_per_person: int | list[int],
    seed: int,
    noise: float = 1.0,
    wild_noise: float = 1.0,
    use_ray: bool = False,
    rates: str = "celeb",
    image_size: int = 256,
    people_per_shard: int = 200,
    workers: int = 0,
) -> CelebWorldSummary:
    """Write a celeb world under ``out`` (module docstring for the layout); same seed, same bytes.

    ``images_per_person``: one count for everybody, or one per person (``people`` of them).
    """
    counts = (
        [images_per_person] * people
        if isinstance(images_per_person, int)
        else [int(n) for n in images_per_person]
    )
    if people < 1 or len(counts) != people or min(counts) < 1:
        raise ValueError(
            f"people ({people}) and images_per_person ({images_per_person}) must be >= 1, "
            "with one count per person when counts are given"
        )
    if image_size < 160:
        raise ValueError(f"image_size {image_size} too small; faces must be >= 128 px (use >= 160)")
    rate_table(rates)  # fail early on an unknown table
    if noise < 0 or wild_noise < 0:
        raise ValueError(f"noise and wild_noise must be >= 0, got {noise} and {wild_noise}")
    root = Location.of(out)
    clear_parts(root)
    tasks = [
        (
            root.uri,
            seed,
            start,
            stop,
            tuple(counts[start:stop]),
            noise,
            rates,
            image_size,
            wild_noise,
        )  # fmt: skip
        for start, stop in shard_bounds(counts, people_per_shard)
    ]
    images = sum(run_tasks(_write_shard, tasks, use_ray=use_ray, workers=workers))
    join_parts(root, ".tsv", root.join(TSV_NAME))
    join_parts(root, ".truth.csv", root.join(TRUTH_NAME), ",".join(TRUTH_COLUMNS))
    clear_parts(root)
    return CelebWorldSummary(
        out=root.uri,
        people=people,
        images=images,
        tsv=root.join(TSV_NAME).uri,
        openface_dir=root.join(OPENFACE_DIR).uri,
        bios_dir=root.join(BIOS_DIR).uri,
        truth_csv=root.join(TRUTH_NAME).uri,
        shards=len(tasks),
    )


def generate_celeb_from_config(config: SynthCelebConfig) -> CelebWorldSummary:
    """:func:`generate_celeb` with the options of a :class:`SynthCelebConfig`."""
    if not config.out:
        raise ValueError("SynthCelebConfig.out is empty; give an output folder")
    counts = images_per_person_of(config.people, config.images_per_person, config.tiers)
    return generate_celeb(
        config.out,
        people=len(counts),
        images_per_person=counts,
        seed=config.seed,
        noise=config.noise,
        wild_noise=config.wild_noise,
        use_ray=config.use_ray,
        rates=config.rates,
        image_size=config.image_size,
        people_per_shard=config.people_per_shard,
        workers=config.workers,
    )
