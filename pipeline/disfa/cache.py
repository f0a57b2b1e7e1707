"""The processed-frame cache: one Parquet dataset per (inputs, options) key, opened as DisfaFrames.

Layout of one entry: ``<cache>/disfa-<key>/status=accepted/*.parquet``, ``status=rejected/...``
and ``manifest.json``, written last: an entry without a manifest is an interrupted run and is
rebuilt. The key hashes what decides the rows (input files with their sizes and modification times,
layout, camera, subjects, threshold, face options) and nothing that only decides speed (workers,
frames per task, batch sizes), so folds and sweeps reuse one decode of the videos.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipeline.disfa.config import DisfaConfig
from pipeline.disfa.layout import FileStamp
from pipeline.disfa.schema import DISFA_FRAME_SCHEMA
from pipeline.sources.records import IO_TASK_CPUS, io_concurrency
from pipeline.status_write import ACCEPTED, REJECTED
from pipeline.storage import Location

#: Bump when the cached rows change meaning, so older entries are not reused.
CACHE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
DEFAULT_CACHE = "~/.cache/facs/disfa"
STATUSES: tuple[str, ...] = (ACCEPTED, REJECTED)
#: Face options that change speed only.
_SPEED_ONLY_FACE_OPTIONS = ("opencv_threads",)


class DisfaCacheError(RuntimeError):
    """A cache entry is missing, incomplete or inconsistent."""


def cache_root(config: DisfaConfig) -> Location:
    return Location.of(config.cache or os.path.expanduser(DEFAULT_CACHE))


def cache_key(config: DisfaConfig, inputs: Sequence[FileStamp]) -> str:
    """16 hex digits of a hash over the inputs and the options that decide the cached rows."""
    face = {k: v for k, v in asdict(config.face).items() if k not in _SPEED_ONLY_FACE_OPTIONS}
    described = {
        "format": CACHE_FORMAT,
        "layout": config.layout,
        "camera": config.camera,
        "subjects": sorted(config.subjects),
        "threshold": config.threshold if config.layout == "videos" else None,
        "face": face,
        "inputs": [stamp.key() for stamp in sorted(inputs, key=lambda s: s.uri)],
    }
    text = json.dumps(described, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class CacheManifest:
    """What one cache entry holds and how it was made."""

    key: str
    created: str
    config: dict
    rows_read: int
    accepted: int
    rejected: int
    reject_counts: dict[str, int]
    accepted_per_subject: dict[str, int]
    #: Labelled frames with no frame in the input (a video shorter than its labels, or a fold-CSV
    #: row without an image), per subject: not rows, so not in rows_read.
    labels_without_frames: dict[str, int]
    #: Image files passed over (another camera's, or not named like a DISFA frame).
    skipped_files: int
    seconds: float
    frames_per_second: float
    #: Parquet files relative to the entry, by status, with the subjects each holds.
    files: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CacheManifest:
        return cls(**json.loads(text))


def _keep_subjects(batch: pa.Table, subjects: list[str]) -> pa.Table:
    return batch.filter(pc.is_in(batch["subject"], value_set=pa.array(subjects, pa.string())))


@dataclass
class DisfaFrames:
    """An ingested DISFA: its cache entry, read per subject as a Ray Dataset or an Arrow table.

    Rows follow ``DISFA_FRAME_SCHEMA``; their order is not the frame order (frames are decoded in
    parallel): sort by ``subject`` and ``frame`` when it matters.
    """

    location: Location
    manifest: CacheManifest

    @classmethod
    def open(cls, uri: str) -> DisfaFrames:
        """Open a complete cache entry (``<cache>/disfa-<key>``)."""
        location = Location.of(uri)
        manifest_file = location.join(MANIFEST_NAME)
        if not manifest_file.exists():
            raise DisfaCacheError(
                f"{manifest_file.uri}: not found; {location.uri} is not a complete DISFA cache entry"
            )
        return cls(location, CacheManifest.from_json(manifest_file.read_text()))

    @property
    def uri(self) -> str:
        return self.location.uri

    def subjects(self) -> list[str]:
        """Subjects with at least one accepted frame, sorted."""
        return sorted(s for s, n in self.manifest.accepted_per_subject.items() if n > 0)

    def files(self, subjects: Sequence[str] | None = None, status: str = "accepted") -> list[str]:
        """Filesystem paths of the entry's Parquet files holding any of ``subjects`` (None: all)."""
        if status not in STATUSES:
            raise ValueError(f"status: expected one of {STATUSES}, got {status!r}")
        wanted = None if subjects is None else set(subjects)
        return [
            self.location.join(path).path
            for path, held in sorted(self.manifest.files.get(status, {}).items())
            if wanted is None or wanted & set(held)
        ]

    def _check_subjects(self, subjects: Sequence[str] | None) -> list[str] | None:
        if subjects is None:
            return None
        subjects = list(subjects)
        known = set(self.manifest.accepted_per_subject)
        unknown = sorted(set(subjects) - known)
        if unknown:
            raise DisfaCacheError(
                f"{self.uri}: no frames of subjects {unknown} (known: {sorted(known)})"
            )
        return subjects

    def dataset(
        self, subjects: Sequence[str] | None = None, *, status: str = "accepted"
    ) -> ray.data.Dataset:
        """The frames of ``subjects`` (None: all) with the given status, as a Ray Dataset."""
        subjects = self._check_subjects(subjects)
        files = self.files(subjects, status)
        if not files:
            return ray.data.from_arrow(DISFA_FRAME_SCHEMA.empty_table())
        dataset = ray.data.read_parquet(
            files,
            filesystem=self.location.fs,
            partitioning=None,
            num_cpus=IO_TASK_CPUS,
            concurrency=io_concurrency(),
        )
        if subjects is None:
            return dataset
        return dataset.map_batches(
            _keep_subjects,
            fn_kwargs={"subjects": subjects},
            batch_format="pyarrow",
            num_cpus=IO_TASK_CPUS,
            compute=ray.data.TaskPoolStrategy(size=io_concurrency()),
        )

    def table(
        self,
        subjects: Sequence[str] | None = None,
        *,
        columns: Sequence[str] | None = None,
        status: str = "accepted",
    ) -> pa.Table:
        """The same rows read into one Arrow table in this process (for evaluation and tests)."""
        subjects = self._check_subjects(subjects)
        names = list(columns) if columns is not None else DISFA_FRAME_SCHEMA.names
        read = [*names, "subject"] if "subject" not in names else names
        tables = [
            pq.read_table(path, columns=read, filesystem=self.location.fs)
            for path in self.files(subjects, status)
        ]
        schema = pa.schema([DISFA_FRAME_SCHEMA.field(name) for name in read])
        table = (
            pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
        )
        if subjects is not None:
            table = table.filter(pc.is_in(table["subject"], value_set=pa.array(subjects)))
        return table.select(names)


def write_manifest(location: Location, manifest: CacheManifest) -> None:
    location.join(MANIFEST_NAME).write_text_atomic(manifest.to_json())
