"""A small synthetic corpus on disk (Parquet shards + manifest) whose AU labels are learnable.

Built without the corpus pipeline, so training tests do not depend on face detection. Each image
belongs to one of a few "expressions": an expression fixes the image's grey level and a prototype
set of AUs, and each AU label then flips with probability ``label_noise`` (noisy labels, like
OpenFace's). Every AU that is present also draws a brighter horizontal band at a row of its own.
Grey levels and full-width bands survive flips, small warps and mean subtraction, so even a thin
net learns the expressions within a few dozen steps: "loss decreases" is a real check. A model
that learned nothing cannot beat the log loss of a fair coin, ln 2 = 0.693, on average.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.corpus.manifest import Manifest, VersionEntry, now_iso, save_manifest
from pipeline.schema import CORPUS_SCHEMA, UNLABELLED
from pipeline.vocabulary import FACE_SIZE, OPENFACE_AUS

#: First row of AU k's band is ``BAND_TOP + BAND_PITCH * k``; each band is ``BAND_HEIGHT`` rows.
BAND_TOP, BAND_PITCH, BAND_HEIGHT = 4, 3, 2
#: Grey level of each expression's background, and how much brighter a band is.
EXPRESSION_LEVELS = (50, 95, 140, 185)
BAND_CONTRAST, NOISE = 40, 12


@dataclass(frozen=True)
class CorpusFixture:
    """Where the fixture corpus is and what is in it."""

    uri: str
    version: int
    train_rows: int
    val_rows: int
    #: Mean pixel value of the train split on the [0, 1] scale, computed here independently.
    train_pixel_mean: float


def band_rows(au_index: int) -> slice:
    top = BAND_TOP + BAND_PITCH * au_index
    return slice(top, top + BAND_HEIGHT)


def draw_faces(expressions: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Expression indices ``(N,)`` and 0/1 labels ``(N, 17)`` -> ``(N, 64, 64)`` uint8 images."""
    levels = np.asarray(EXPRESSION_LEVELS, dtype=np.float64)[expressions]
    faces = rng.normal(levels[:, None, None], NOISE, size=(len(levels), FACE_SIZE, FACE_SIZE))
    for k in range(labels.shape[1]):
        present = labels[:, k].astype(bool)
        faces[present, band_rows(k), :] += BAND_CONTRAST
    return np.clip(faces, 0, 255).astype(np.uint8)


def make_corpus(
    root: str | Path,
    *,
    images: int = 320,
    identities: int = 40,
    files: int = 2,
    val_every: int = 5,
    label_noise: float = 0.1,
    seed: int = 0,
    labelled: bool = True,
) -> CorpusFixture:
    """Write version 1 of a corpus of ``images`` labelled faces to ``root`` and return its facts.

    Identity ``i`` is in the validation split when ``i % val_every == 0`` (20% by default: more
    than the real corpus's 5%, so that a few hundred images still give a usable validation set).
    ``labelled=False`` stores every row as a build without label sources does: no AU labels,
    ``label_source`` "none".
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    prototypes = rng.random((len(EXPRESSION_LEVELS), len(OPENFACE_AUS))) < 0.5
    expressions = rng.integers(0, len(EXPRESSION_LEVELS), images)
    flips = rng.random((images, len(OPENFACE_AUS))) < label_noise
    labels = (prototypes[expressions] ^ flips).astype(np.int8)
    faces = draw_faces(expressions, labels, rng)
    identity_index = np.arange(images) % identities
    splits = np.where(identity_index % val_every == 0, "val", "train")
    genders = np.where(identity_index % 2 == 0, "female", "male")

    data_dir = "v1/data"
    (root / data_dir).mkdir(parents=True, exist_ok=True)
    data_files = []
    for part, rows in enumerate(np.array_split(np.arange(images), files)):
        columns = {
            "content_hash": [f"{i:032x}" for i in rows],
            "image_name": [f"m.person{identity_index[i]:03d}_{i}-FaceId-0.jpg" for i in rows],
            "identity": [f"m.person{identity_index[i]:03d}" for i in rows],
            "gender": [str(genders[i]) for i in rows],
            "region": ["unknown"] * len(rows),
            "split": [str(splits[i]) for i in rows],
            "face": [faces[i].tobytes() for i in rows],
            "face_box": [[0, 0, FACE_SIZE, FACE_SIZE]] * len(rows),
            **{
                au: labels[rows, k] if labelled else pa.nulls(len(rows), pa.int8())
                for k, au in enumerate(OPENFACE_AUS)
            },
            "label_source": [("release_csv" if labelled else UNLABELLED)] * len(rows),
            "source": [f"fixture:{i}" for i in rows],
            "reject_reason": [None] * len(rows),
        }
        name = f"{data_dir}/part-{part:05d}.parquet"
        pq.write_table(pa.table(columns, schema=CORPUS_SCHEMA), root / name)
        data_files.append(name)

    entry = VersionEntry(
        version=1,
        created=now_iso(),
        data_dir=data_dir,
        rejects_dir="v1/rejects",
        data_files=sorted(data_files),
        rows_read=images,
        accepted=images,
        rejected=0,
        reject_counts={},
        inputs={"fixture": "tests/corpus_fixture.py", "seed": seed},
        note="synthetic bands corpus for tests",
    )
    save_manifest(str(root), Manifest(versions=[entry]))
    train = splits == "train"
    return CorpusFixture(
        uri=str(root),
        version=1,
        train_rows=int(train.sum()),
        val_rows=int((~train).sum()),
        train_pixel_mean=float(faces[train].mean() / 255.0),
    )
