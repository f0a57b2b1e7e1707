"""A labeler's outputs on the DISFA videos: OpenFace 2.0 FeatureExtraction CSVs, one per video.

OpenFace names its output after the video (``RightVideoSN001_comp.avi`` ->
``RightVideoSN001_comp.csv``); both header styles (``frame, timestamp, ...`` and
``frame,face_id,...``) are read by :func:`pipeline.labels.read_openface_sequence_csv`. Row
``frame`` N is the video's frame index N - 1, the index DISFA's frame names and our cache use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.disfa.layout import VIDEO_PREFIXES, DisfaLayoutError
from pipeline.labels.openface import read_openface_sequence_csv
from pipeline.storage import Location
from pipeline.vocabulary import DISFA_AUS

#: Columns of :func:`read_labeler_outputs`: the frame's name, a 0/1 per DISFA AU (0 where the
#: labeler failed), and whether the labeler scored the frame at all.
SCORED_COLUMN = "labeler_scored"


def labeler_csv_candidates(folder: str, subject: str, camera: str) -> list[Location]:
    """Where the CSV of one subject's video may be: ``<video stem>.csv`` or ``<frame stem>.csv``."""
    stem = f"{VIDEO_PREFIXES[camera]}{subject}"
    root = Location.of(folder)
    return [root.join(f"{stem}_comp.csv"), root.join(f"{stem}.csv")]


def read_labeler_outputs(
    folder: str, subjects: Sequence[str], camera: str = "right", min_confidence: float = 0.0
) -> pa.Table:
    """Per-frame presence of the 12 DISFA AUs from the labeler's CSVs of ``subjects``' videos.

    Returns ``image_name`` (the release's frame name, e.g. ``RightVideoSN001_00000000.jpg``), one
    uint8 column per DISFA AU and ``labeler_scored``: False where OpenFace reported a tracking
    failure (``success`` 0), a confidence below ``min_confidence``, or an invalid value; those
    frames read as absent for every AU. A subject without a CSV is an error naming where it was
    looked for.
    """
    if not Location.of(folder).exists():
        raise DisfaLayoutError(f"{Location.of(folder).uri}: no such folder of labeler CSVs")
    tables = []
    for subject in sorted(set(subjects)):
        candidates = labeler_csv_candidates(folder, subject, camera)
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise DisfaLayoutError(
                f"no labeler CSV for subject {subject}: expected one of "
                f"{[c.uri for c in candidates]} (OpenFace FeatureExtraction run on its video)"
            )
        table = read_openface_sequence_csv(
            found.uri,
            video_stem=f"{VIDEO_PREFIXES[camera]}{subject}",
            min_confidence=min_confidence,
        )
        scored = pc.is_null(table["label_reject"])
        columns = {"image_name": table["image_name"]}
        for au in DISFA_AUS:
            values = table[au].to_numpy(zero_copy_only=False)
            present = np.where(np.asarray(scored), np.nan_to_num(values.astype(float)), 0.0)
            columns[au] = pa.array(present.astype(np.uint8))
        columns[SCORED_COLUMN] = scored
        tables.append(pa.table(columns))
    if not tables:
        raise ValueError("read_labeler_outputs: expected at least one subject")
    return pa.concat_tables(tables)
