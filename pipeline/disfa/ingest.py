"""`prepare_disfa`: DISFA videos (or released frames) -> faces and labels, cached as Parquet.

One Ray Data pass: read tasks decode frame ranges of the videos (or read the frame images) and
attach labels, a pool of face actors (one CPU each) detects, crops, pads and resizes the faces,
and every row is written once, under ``status=accepted`` or ``status=rejected``. A ledger actor
counts the rows entering the face stage, which must equal accepted + rejected before the cache
entry gets its manifest. A second call with the same inputs and options opens that entry.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow.parquet as pq
import ray

from pipeline.disfa.cache import (
    MANIFEST_NAME,
    STATUSES,
    CacheManifest,
    DisfaCacheError,
    DisfaFrames,
    cache_key,
    cache_root,
    write_manifest,
)
from pipeline.disfa.config import DisfaConfig
from pipeline.disfa.face_stage import DisfaFaceStage, FrameLedger
from pipeline.disfa.frames import (
    plan_ranges,
    read_image_frames,
    read_video_frames,
    video_frame_count,
)
from pipeline.disfa.labels import NO_INTENSITY, read_fold_csvs, read_subject_labels
from pipeline.disfa.layout import (
    FRAME_IMAGE_PATTERN,
    VIDEO_PREFIXES,
    DisfaLayoutError,
    FileStamp,
    file_stamp,
    find_fold_csvs,
    find_frame_images,
    find_videos,
    label_stamps,
)
from pipeline.disfa.schema import DISFA_FRAME_SCHEMA
from pipeline.progress import RowProgress
from pipeline.ray_runtime import ensure_ray
from pipeline.rejects import RejectReason
from pipeline.status_write import status_folder, write_by_status
from pipeline.storage import Location, is_s3

log = logging.getLogger(__name__)


@dataclass
class _Inputs:
    """The files an ingestion reads (their stamps key the cache) and what was passed over."""

    stamps: list[FileStamp]
    videos: list = field(default_factory=list)
    images: list[FileStamp] = field(default_factory=list)
    fold_csvs: list[str] = field(default_factory=list)
    skipped_files: int = 0


def _find_inputs(config: DisfaConfig) -> _Inputs:
    if not config.root:
        raise DisfaLayoutError("no DISFA root given: set DisfaConfig.root (folder or s3:// prefix)")
    if config.layout == "videos":
        videos = find_videos(config.root, config.camera, config.subjects or None)
        stamps = [v.file for v in videos] + label_stamps(config.root, [v.subject for v in videos])
        return _Inputs(stamps, videos=videos)
    images, skipped = find_frame_images(config.root, config.camera)
    if config.subjects:
        wanted = set(config.subjects)
        kept = [s for s in images if _subject_of(s.uri) in wanted]
        skipped += len(images) - len(kept)
        images = kept
        if not images:
            raise DisfaLayoutError(f"{config.root}: no frame image of subjects {config.subjects}")
    csvs = (
        [file_stamp(Location.of(uri)) for uri in config.fold_csvs]
        if config.fold_csvs
        else find_fold_csvs(config.root)
    )
    return _Inputs(
        images + csvs, images=images, fold_csvs=[s.uri for s in csvs], skipped_files=skipped
    )


def _subject_of(image_uri: str) -> str:
    match = FRAME_IMAGE_PATTERN.match(image_uri.rsplit("/", 1)[-1])
    return match["subject"] if match else ""


def _video_records(
    config: DisfaConfig, inputs: _Inputs, workers: int
) -> tuple[ray.data.Dataset, Counter]:
    """Frame-range read tasks over the videos, and the fully labelled frames per subject."""
    ranges, labelled = [], Counter()
    for video in inputs.videos:
        labels = read_subject_labels(config.root, video.subject)
        labelled[video.subject] = int((labels.intensities != NO_INTENSITY).all(axis=1).sum())
        # The container's count splits the work (checked by opening the video); an S3 video is
        # only downloaded inside its tasks, so there the label count stands in for it.
        planned = 0 if is_s3(video.uri) else video_frame_count(Location.of(video.uri))
        ranges += plan_ranges(video, labels, planned or labels.frames, config.frames_per_task)
    records = read_video_frames(
        ranges,
        threshold=config.threshold,
        seek=config.seek,
        frames_per_block=config.frames_per_block,
        concurrency=workers,
    )
    return records, labelled


def _image_records(config: DisfaConfig, inputs: _Inputs) -> tuple[ray.data.Dataset, Counter]:
    """The frame images labelled from the fold CSVs, and the CSV rows per subject."""
    labels = read_fold_csvs(inputs.fold_csvs)
    prefix = VIDEO_PREFIXES[config.camera]
    names = labels["image_name"].to_pylist()
    subjects = labels["subject"].to_pylist()
    wanted = set(config.subjects) if config.subjects else None
    labelled = Counter(
        s
        for name, s in zip(names, subjects, strict=True)
        if name.startswith(prefix) and (wanted is None or s in wanted)
    )
    return read_image_frames([s.uri for s in inputs.images], labels), labelled


def _written(
    location: Location,
) -> tuple[dict[str, dict[str, list[str]]], Counter, Counter, Counter]:
    """Files per status with their subjects; accepted rows and found labelled frames per subject;
    reject reasons."""
    files: dict[str, dict[str, list[str]]] = {}
    accepted, found, reasons = Counter(), Counter(), Counter()
    prefix = location.path.rstrip("/") + "/"
    for status in STATUSES:
        held: dict[str, list[str]] = {}
        for path in status_folder(location, status).list_files():
            if not path.endswith(".parquet"):
                continue
            table = pq.read_table(
                path, columns=["subject", "reject_reason"], filesystem=location.fs
            )
            subjects = table["subject"].to_numpy(zero_copy_only=False)
            reason = np.asarray(table["reject_reason"].to_pylist(), dtype=object)
            held[path[len(prefix) :]] = sorted(set(subjects.tolist()))
            if status == "accepted":
                accepted.update(subjects.tolist())
            reasons.update(r for r in reason.tolist() if r is not None)
            found.update(subjects[reason != RejectReason.NO_LABEL.value].tolist())
        files[status] = held
    return files, accepted, found, reasons


def _ingest(config: DisfaConfig, inputs: _Inputs, key: str, location: Location) -> CacheManifest:
    ensure_ray()
    started = time.perf_counter()
    workers = config.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    if config.layout == "videos":
        records, labelled = _video_records(config, inputs, workers)
    else:
        records, labelled = _image_records(config, inputs)
    ledger = FrameLedger.remote()
    # The labelled frames stand in for the total: the frames read differ by the unlabelled ones.
    with RowProgress(
        "DISFA ingest",
        lambda: ray.get(ledger.rows.remote()),
        sum(labelled.values()),
        estimated=True,
    ):
        write_by_status(
            records,
            DisfaFaceStage,
            (config.face, ledger),
            location,
            schema=DISFA_FRAME_SCHEMA,
            workers=workers,
            batch_size=config.batch_size,
            batch_format="pyarrow",
            rows_per_file=config.rows_per_file,
        )
    seconds = time.perf_counter() - started
    files, accepted, found, reasons = _written(location)
    rows_in = ray.get(ledger.rows.remote())
    written = sum(accepted.values()) + sum(reasons.values())
    if rows_in != written:
        raise DisfaCacheError(
            f"{location.uri}: row accounting failed: {rows_in} frames entered the face stage but "
            f"{written} rows were written; cache entry not committed"
        )
    missing = {s: n - found[s] for s, n in sorted(labelled.items()) if n > found[s]}
    if missing:
        log.warning("labelled frames without a frame in the input: %s", missing)
    written_subjects = {s for held in files.values() for part in held.values() for s in part}
    subjects = sorted(set(labelled) | written_subjects)
    return CacheManifest(
        key=key,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=asdict(config),
        rows_read=rows_in,
        accepted=sum(accepted.values()),
        rejected=sum(reasons.values()),
        reject_counts=dict(sorted(reasons.items())),
        accepted_per_subject={s: accepted[s] for s in subjects},
        labels_without_frames=missing,
        skipped_files=inputs.skipped_files,
        seconds=round(seconds, 3),
        frames_per_second=round(rows_in / seconds, 2) if seconds > 0 else 0.0,
        files=files,
    )


def prepare_disfa(config: DisfaConfig, *, force: bool = False) -> DisfaFrames:
    """Ingest DISFA as ``config`` says, or open the cache entry of an earlier identical call.

    ``force`` rebuilds the entry even when it is complete.
    """
    inputs = _find_inputs(config)
    key = cache_key(config, inputs.stamps)
    location = cache_root(config).join(f"disfa-{key}")
    if not force and location.join(MANIFEST_NAME).exists():
        log.info("DISFA cache hit: %s", location.uri)
        return DisfaFrames.open(location.uri)
    location.delete_dir()  # an interrupted or forced run: start clean
    manifest = _ingest(config, inputs, key, location)
    write_manifest(location, manifest)
    log.info(
        "DISFA ingested into %s: %d frames read, %d accepted, %d rejected (%.1f frames/s)",
        location.uri,
        manifest.rows_read,
        manifest.accepted,
        manifest.rejected,
        manifest.frames_per_second,
    )
    return DisfaFrames(location, manifest)
