"""DISFA frames as Ray Data records: video frame ranges decoded in parallel, or released frame images.

A video is split into ranges of ``frames_per_task`` frames, each decoded by its own read task,
which goes to its first frame with ``CAP_PROP_POS_FRAMES`` (checked by reading the position back;
DISFA's MJPG AVIs hold only key frames and an index, so the seek is exact) or, in ``grab`` mode
or when the backend cannot seek exactly, by calling ``grab()`` ``start`` times from frame 0 (exact
for any codec, slower). The last range of a video reads to its end whatever the planned length, so
a video longer than its labels yields its extra frames, and a shorter one just ends. Frames without
a label in all 12 AU files are rejected as ``no label`` (``RejectReason.NO_LABEL``, the closest
existing reason); labelled frames the video lacks are not rows, but are counted per subject in the
cache manifest (``labels_without_frames``).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np
import pyarrow as pa
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from pipeline.disfa.labels import NO_INTENSITY, SubjectLabels, presence
from pipeline.disfa.layout import FRAME_IMAGE_PATTERN, VIDEO_PREFIXES, DisfaLayoutError, DisfaVideo
from pipeline.disfa.schema import FRAME_RECORD_SCHEMA, intensity_column
from pipeline.names import frame_name
from pipeline.rejects import RejectReason
from pipeline.sources.records import IO_TASK_CPUS, io_concurrency
from pipeline.storage import Location, is_s3
from pipeline.vocabulary import DISFA_AUS

CAMERA_OF_PREFIX: dict[str, str] = {prefix: camera for camera, prefix in VIDEO_PREFIXES.items()}
UNKNOWN = "unknown"
_COPY_CHUNK = 8 * 1024 * 1024


@contextmanager
def local_video(location: Location) -> Iterator[str]:
    """A local path OpenCV can open: the file itself, or an S3 object copied to a temporary file.

    ``location`` carries its filesystem (with the driver's S3 endpoint and keys) into Ray tasks.
    """
    if not is_s3(location.uri):
        yield location.path
        return
    suffix = posixpath.splitext(location.path)[1]
    handle, path = tempfile.mkstemp(prefix="facs-disfa-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as out, location.fs.open_input_stream(location.path) as src:
            shutil.copyfileobj(src, out, _COPY_CHUNK)
        yield path
    finally:
        os.remove(path)


def _open(path: str, uri: str) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise DisfaLayoutError(f"{uri}: OpenCV cannot open this video")
    return capture


def video_frame_count(location: Location) -> int:
    """The frame count the container declares (0 when unknown); opens the video, so checks it."""
    with local_video(location) as path:
        capture = _open(path, location.uri)
        try:
            return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        finally:
            capture.release()


def _go_to(capture: cv2.VideoCapture, path: str, uri: str, start: int, seek: str):
    """A capture whose next read() is frame ``start``, or None when the video ends before it."""
    if start == 0:
        return capture
    if seek == "seek":
        capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        if int(capture.get(cv2.CAP_PROP_POS_FRAMES)) == start:
            return capture
        capture.release()  # not where asked (or past the end): count frames from the start
        capture = _open(path, uri)
    for _ in range(start):
        if not capture.grab():
            capture.release()
            return None
    return capture


def read_frame_range(
    path: str, start: int, stop: int | None, *, seek: str = "seek", uri: str | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(0-based index, 2-D uint8 gray frame) for frames ``start`` .. ``stop`` (exclusive; None = to
    the end) of a local video; fewer when the video ends first."""
    capture = _go_to(_open(path, uri or path), path, uri or path, start, seek)
    if capture is None:
        return
    try:
        index = start
        while stop is None or index < stop:
            ok, frame = capture.read()
            if not ok:
                break
            gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            yield index, np.ascontiguousarray(gray)
            index += 1
    finally:
        capture.release()


@dataclass(frozen=True)
class FrameRange:
    """Frames ``start`` .. ``stop`` of one video (``stop`` None: to its end), with their labels."""

    video: DisfaVideo
    location: Location  # the video file, with its filesystem
    start: int
    stop: int | None
    intensities: np.ndarray  # label rows from ``start``; shorter than the range where labels end


def plan_ranges(
    video: DisfaVideo, labels: SubjectLabels, planned_frames: int, frames_per_task: int
) -> list[FrameRange]:
    """Split a video of about ``planned_frames`` frames into ranges; the last one is open-ended."""
    location = Location.of(video.uri)
    starts = list(range(0, max(planned_frames, 1), frames_per_task))
    ranges = []
    for k, start in enumerate(starts):
        stop = starts[k + 1] if k + 1 < len(starts) else None
        ranges.append(FrameRange(video, location, start, stop, labels.rows(start, stop)))
    return ranges


def label_columns(intensities: np.ndarray, threshold: int) -> dict[str, pa.Array]:
    """Presence and intensity columns (null where ``NO_INTENSITY``) for a (rows, 12) matrix."""
    present = presence(intensities, threshold)
    columns: dict[str, pa.Array] = {}
    for k, au in enumerate(DISFA_AUS):
        missing = intensities[:, k] == NO_INTENSITY
        columns[au] = pa.array(present[:, k], pa.int8(), mask=missing)
    for k, au in enumerate(DISFA_AUS):
        missing = intensities[:, k] == NO_INTENSITY
        columns[intensity_column(au)] = pa.array(intensities[:, k], pa.int8(), mask=missing)
    return columns


def _range_block(
    frame_range: FrameRange, frames: list[tuple[int, np.ndarray]], threshold: int
) -> pa.Table:
    video = frame_range.video
    n = len(frames)
    intensities = np.full((n, len(DISFA_AUS)), NO_INTENSITY, dtype=np.int8)
    for row, (index, _) in enumerate(frames):
        offset = index - frame_range.start
        if offset < len(frame_range.intensities):
            intensities[row] = frame_range.intensities[offset]
    unlabelled = (intensities == NO_INTENSITY).any(axis=1)
    columns = {
        "subject": [video.subject] * n,
        "frame": pa.array([index for index, _ in frames], pa.int32()),
        "image_name": [frame_name(video.frame_stem, index) for index, _ in frames],
        "camera": [video.camera] * n,
        "data": [gray.tobytes() for _, gray in frames],
        "height": pa.array([gray.shape[0] for _, gray in frames], pa.int32()),
        "width": pa.array([gray.shape[1] for _, gray in frames], pa.int32()),
        **label_columns(intensities, threshold),
        "source": [video.uri] * n,
        "reject_reason": [RejectReason.NO_LABEL.value if u else None for u in unlabelled],
    }
    return pa.Table.from_pydict(columns, schema=FRAME_RECORD_SCHEMA)


def _read_range(
    frame_range: FrameRange, threshold: int, seek: str, frames_per_block: int
) -> Iterator[pa.Table]:
    uri = frame_range.video.uri
    with local_video(frame_range.location) as path:
        block: list[tuple[int, np.ndarray]] = []
        for item in read_frame_range(path, frame_range.start, frame_range.stop, seek=seek, uri=uri):
            block.append(item)
            if len(block) == frames_per_block:
                yield _range_block(frame_range, block, threshold)
                block = []
        if block:
            yield _range_block(frame_range, block, threshold)


class VideoFrameDatasource(Datasource):
    """One read task per frame range (planned by the caller; Ray's ``parallelism`` is not used)."""

    def __init__(
        self, ranges: list[FrameRange], *, threshold: int, seek: str, frames_per_block: int
    ) -> None:
        self.ranges = ranges
        self.threshold = threshold
        self.seek = seek
        self.frames_per_block = frames_per_block

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        tasks = []
        for frame_range in self.ranges:
            rows = None if frame_range.stop is None else frame_range.stop - frame_range.start
            metadata = BlockMetadata(
                num_rows=rows,
                size_bytes=None,
                exec_stats=None,
                input_files=(frame_range.video.uri,),
            )
            read = partial(
                _read_range, frame_range, self.threshold, self.seek, self.frames_per_block
            )
            tasks.append(
                ReadTask(read, metadata, FRAME_RECORD_SCHEMA, per_task_row_limit=per_task_row_limit)
            )
        return tasks


def read_video_frames(
    ranges: list[FrameRange], *, threshold: int, seek: str, frames_per_block: int, concurrency: int
) -> ray.data.Dataset:
    """The frames of every range as ``FRAME_RECORD_SCHEMA`` rows, ``concurrency`` ranges at once.

    Read tasks reserve no CPU (``IO_TASK_CPUS``) so the face actors can hold every core; the
    concurrency bound stops Ray from starting a worker process per range at once instead.
    """
    source = VideoFrameDatasource(
        ranges, threshold=threshold, seek=seek, frames_per_block=frames_per_block
    )
    # One read task per range, its blocks unsplit: Ray would otherwise cut them into 1-row blocks.
    return ray.data.read_datasource(
        source,
        num_cpus=IO_TASK_CPUS,
        concurrency=concurrency,
        override_num_blocks=max(1, len(ranges)),
    )


class _ImageFrameRecords:
    """``read_binary_files`` rows -> ``FRAME_RECORD_SCHEMA``, labelled from the fold-CSV table."""

    def __init__(self, labels: pa.Table, uri_prefix: str) -> None:
        self.index = {name: i for i, name in enumerate(labels["image_name"].to_pylist())}
        self.presence = np.stack(
            [labels[au].to_numpy(zero_copy_only=False) for au in DISFA_AUS], axis=1
        ).astype(np.int8)
        self.uri_prefix = uri_prefix

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = batch["path"].to_pylist()
        n = len(paths)
        names = [posixpath.basename(p) for p in paths]
        matches = [FRAME_IMAGE_PATTERN.match(name) for name in names]
        rows = [self.index.get(name, -1) for name in names]
        present = np.full((n, len(DISFA_AUS)), NO_INTENSITY, dtype=np.int8)
        for i, row in enumerate(rows):
            if row >= 0:
                present[i] = self.presence[row]
        missing = present == NO_INTENSITY
        columns = {
            "subject": [m["subject"] if m else UNKNOWN for m in matches],
            "frame": pa.array([int(m["frame"]) if m else -1 for m in matches], pa.int32()),
            "image_name": names,
            "camera": [CAMERA_OF_PREFIX[m["prefix"]] if m else UNKNOWN for m in matches],
            "data": batch["bytes"],
            "height": pa.array(np.zeros(n, dtype=np.int32)),
            "width": pa.array(np.zeros(n, dtype=np.int32)),
            **{
                au: pa.array(present[:, k], pa.int8(), mask=missing[:, k])
                for k, au in enumerate(DISFA_AUS)
            },
            **{intensity_column(au): pa.nulls(n, pa.int8()) for au in DISFA_AUS},
            "source": [self.uri_prefix + p for p in paths],
            "reject_reason": [None if row >= 0 else RejectReason.NO_LABEL.value for row in rows],
        }
        return pa.Table.from_pydict(columns, schema=FRAME_RECORD_SCHEMA)


def read_image_frames(image_uris: list[str], labels: pa.Table) -> ray.data.Dataset:
    """Released frame images as ``FRAME_RECORD_SCHEMA`` rows (encoded bytes, ``height`` 0).

    Presence comes from the fold CSVs (already binary: no intensities); an image the CSVs do not
    list is rejected as ``no label``.
    """
    first = Location.of(image_uris[0])
    s3 = is_s3(first.uri)
    paths = [uri[len("s3://") :] for uri in image_uris] if s3 else image_uris
    dataset = ray.data.read_binary_files(
        paths,
        include_paths=True,
        filesystem=first.fs,
        num_cpus=IO_TASK_CPUS,
        concurrency=io_concurrency(),
    )
    return dataset.map_batches(
        _ImageFrameRecords,
        fn_constructor_args=(labels, "s3://" if s3 else ""),
        batch_format="pyarrow",
        batch_size=256,
        num_cpus=IO_TASK_CPUS,
        compute=ray.data.ActorPoolStrategy(size=1),
    )
