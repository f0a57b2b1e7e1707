"""DISFA ground truth: per-AU intensity files of the release, the released binary fold CSVs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.disfa.layout import DisfaLayoutError, label_file
from pipeline.labels import read_disfa_fold_csv
from pipeline.storage import Location
from pipeline.vocabulary import DISFA_AUS

#: DISFA codes intensity on a 0 (absent) .. 5 (maximum) scale.
MAX_INTENSITY = 5
#: Marks a frame an AU file does not cover, in the int8 intensity matrices.
NO_INTENSITY = -1


def read_au_label_file(location: Location) -> tuple[np.ndarray, np.ndarray]:
    """A ``frame,intensity`` file -> (1-based frame numbers, intensities), in file order.

    Blank lines are skipped; any other line that is not two integers (frame >= 1, intensity 0-5),
    or that repeats a frame, raises :class:`DisfaLayoutError` naming the file and line.
    """
    if not location.exists():
        raise DisfaLayoutError(f"{location.uri}: label file not found")
    frames: list[int] = []
    values: list[int] = []
    seen: dict[int, int] = {}
    for line_no, line in enumerate(location.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(",")
        try:
            if len(fields) != 2:
                raise ValueError
            frame, value = int(fields[0]), _integer(fields[1])
        except ValueError:
            raise DisfaLayoutError(
                f"{location.uri}:{line_no}: expected 'frame,intensity' (two integers), "
                f"found {line.strip()!r}"
            ) from None
        if frame < 1 or not 0 <= value <= MAX_INTENSITY:
            raise DisfaLayoutError(
                f"{location.uri}:{line_no}: expected frame >= 1 and intensity 0-{MAX_INTENSITY}, "
                f"found {line.strip()!r}"
            )
        if frame in seen:
            raise DisfaLayoutError(
                f"{location.uri}:{line_no}: frame {frame} already labelled on line {seen[frame]}"
            )
        seen[frame] = line_no
        frames.append(frame)
        values.append(value)
    return np.asarray(frames, dtype=np.int64), np.asarray(values, dtype=np.int8)


def _integer(text: str) -> int:
    """``"3"`` or ``"3.0"`` -> 3; anything else raises ValueError."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise
        return int(number)


@dataclass(frozen=True)
class SubjectLabels:
    """One subject's 12 AU intensity tracks; row ``i`` is video frame index ``i`` (0-based), i.e.
    label-file frame ``i + 1``. ``NO_INTENSITY`` where an AU file does not cover the frame."""

    subject: str
    intensities: np.ndarray  # (frames, len(DISFA_AUS)) int8

    @property
    def frames(self) -> int:
        return len(self.intensities)

    def rows(self, start: int, stop: int | None) -> np.ndarray:
        """Intensities of frames ``start`` .. ``stop`` (exclusive; None = through the last label)."""
        return self.intensities[start:stop]


def read_subject_labels(root: str, subject: str) -> SubjectLabels:
    """Read ``ActionUnit_Labels/<subject>/<subject>_au<N>.txt`` for the 12 DISFA AUs."""
    tracks = []
    for au in DISFA_AUS:
        location = label_file(root, subject, au)
        if not location.exists():
            raise DisfaLayoutError(
                f"{location.uri}: label file not found (subject {subject} has a video, so each of "
                f"the {len(DISFA_AUS)} DISFA AUs needs its intensity file)"
            )
        tracks.append(read_au_label_file(location))
    frames = max((int(f.max()) for f, _ in tracks if len(f)), default=0)
    intensities = np.full((frames, len(DISFA_AUS)), NO_INTENSITY, dtype=np.int8)
    for k, (numbers, values) in enumerate(tracks):
        intensities[numbers - 1, k] = values
    return SubjectLabels(subject, intensities)


def presence(intensities: np.ndarray, threshold: int) -> np.ndarray:
    """Intensity >= ``threshold`` -> 1, else 0; ``NO_INTENSITY`` stays ``NO_INTENSITY``."""
    present = (intensities >= threshold).astype(np.int8)
    return np.where(intensities == NO_INTENSITY, np.int8(NO_INTENSITY), present).astype(np.int8)


def read_fold_csvs(uris: Sequence[str]) -> pa.Table:
    """The released fold CSVs, concatenated (``DISFA_FOLD_SCHEMA``); an image in two files raises."""
    tables = [read_disfa_fold_csv(uri) for uri in uris]
    if not tables:
        raise DisfaLayoutError("no fold CSV given")
    table = pa.concat_tables(tables)
    counts = pc.value_counts(table["image_name"])
    repeated = pc.filter(counts, pc.greater(pc.struct_field(counts, "counts"), 1))
    if len(repeated):
        name = repeated[0]["values"].as_py()
        where = [
            uri for uri, t in zip(uris, tables, strict=True) if name in t["image_name"].to_pylist()
        ]
        raise DisfaLayoutError(f"{name} is labelled more than once, in {where}")
    return table


def fold_subjects(table: pa.Table) -> list[str]:
    """The subjects of a fold table, sorted."""
    return sorted(pc.unique(table["subject"]).to_pylist())


def positive_counts(table: pa.Table) -> dict[str, int]:
    """Frames with each DISFA AU present (nulls ignored)."""
    return {au: int(pc.sum(table[au]).as_py() or 0) for au in DISFA_AUS}
