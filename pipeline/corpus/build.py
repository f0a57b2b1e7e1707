"""`facs corpus build` / `facs corpus add`: sources -> faces -> labels -> a new corpus version.

One Ray Data pass: sources stream input records, a pool of workers decodes, detects and crops
faces and attaches labels and people, and every row is written once, to the version's accepted
(``data``) or rejected (``rejects``) Parquet shards. A ledger actor counts the rows that enter the
workers and de-duplicates by content hash across workers and against earlier versions.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipeline.bios import read_biographies
from pipeline.corpus.config import CorpusBuildConfig
from pipeline.corpus.ledger import HASH_DTYPE, BuildLedger, packed_hashes
from pipeline.corpus.manifest import (
    CorpusError,
    Manifest,
    VersionEntry,
    load_manifest,
    now_iso,
    save_manifest,
)
from pipeline.corpus.split import split_of
from pipeline.faces import FaceProcessor
from pipeline.labels import (
    Labeler,
    TableLabeler,
    read_openface_image_csvs,
    read_openface_sequence_csv,
    read_release_labels,
)
from pipeline.names import IMAGE_EXTENSIONS
from pipeline.progress import RowProgress
from pipeline.rejects import RejectReason
from pipeline.run_storage import check_kept
from pipeline.schema import CORPUS_SCHEMA, UNLABELLED
from pipeline.sources.image_folder import ImageFolderDatasource, image_folder_source
from pipeline.sources.msceleb_tsv import MsCelebTsvDatasource
from pipeline.sources.records import ExpectedRows, read_records
from pipeline.status_write import ACCEPTED, REJECTED, STATUS_COLUMN, status_folder, write_by_status
from pipeline.storage import Location
from pipeline.vocabulary import OPENFACE_AUS

log = logging.getLogger(__name__)


class CorpusRowMaker:
    """The per-worker stage: face crop, content hash, labels, person attributes, split, dedup."""

    def __init__(
        self,
        config: CorpusBuildConfig,
        labeler: Labeler | ray.ObjectRef | None,
        people: dict,
        ledger,
    ):
        self.faces = FaceProcessor(config.face)
        self.face_size = config.face.size
        # A label table arrives through the object store: its arrays are shared, not copied.
        self.labeler = ray.get(labeler) if isinstance(labeler, ray.ObjectRef) else labeler
        self.people = people
        self.ledger = ledger

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["image_name"])
        # An all-null string column arrives as a float NaN array in numpy batches.
        reasons: list[str | None] = [
            r if isinstance(r, str) else None for r in batch["reject_reason"]
        ]
        datas = list(batch["data"])
        hashes = [hashlib.sha256(d).hexdigest()[:32] if d else None for d in datas]

        # Faces for the rows the reader could parse.
        todo = [i for i in range(n) if reasons[i] is None]
        faces: list[bytes] = [b""] * n
        boxes: list[list[int] | None] = [None] * n
        for i, result in zip(todo, self.faces.process_batch([datas[i] for i in todo]), strict=True):
            if result.reject_reason:
                reasons[i] = result.reject_reason
            else:
                faces[i] = result.face
                boxes[i] = list(result.box) if result.box else None

        # Labels.
        au = np.full((n, len(OPENFACE_AUS)), -1, dtype=np.int8)
        label_source = [UNLABELLED] * n
        label_gender: list[str | None] = [None] * n
        if self.labeler is not None:
            size = self.face_size
            face_array = np.zeros((n, size, size), dtype=np.uint8)
            for i in range(n):
                if faces[i]:
                    face_array[i] = np.frombuffer(faces[i], dtype=np.uint8).reshape(size, size)
            labels = self.labeler.label_batch([str(x) for x in batch["image_name"]], face_array)
            au = labels.au
            label_source = list(labels.label_source)
            label_gender = list(labels.gender)
            for i in range(n):
                if reasons[i] is None and labels.label_reject[i]:
                    reasons[i] = labels.label_reject[i]

        # De-duplication last, so that a rejected copy never hides a good one.
        claim = [hashes[i] if reasons[i] is None else None for i in range(n)]
        first = ray.get(self.ledger.claim.remote(claim))
        for i in range(n):
            if not first[i]:
                reasons[i] = RejectReason.DUPLICATE.value

        identities = [str(x) for x in batch["identity"]]
        genders, regions = [], []
        for i, identity in enumerate(identities):
            bio_gender, region = self.people.get(identity, ("unknown", "unknown"))
            genders.append(
                bio_gender if bio_gender != "unknown" else (label_gender[i] or "unknown")
            )
            regions.append(region)
        accepted = [r is None for r in reasons]
        columns: dict[str, Any] = {
            "content_hash": [h or "" for h in hashes],
            "image_name": [str(x) for x in batch["image_name"]],
            "identity": identities,
            "gender": genders,
            "region": regions,
            "split": [split_of(identity) for identity in identities],
            "face": [faces[i] if accepted[i] else b"" for i in range(n)],
            "face_box": [boxes[i] if accepted[i] else None for i in range(n)],
        }
        for k, name in enumerate(OPENFACE_AUS):
            column = au[:, k]
            columns[name] = pa.array(
                column, type=pa.int8(), mask=(column < 0) | ~np.array(accepted, dtype=bool)
            )
        columns["label_source"] = label_source
        columns["source"] = [str(x) for x in batch["source"]]
        columns["reject_reason"] = reasons
        table = pa.Table.from_pydict(columns, schema=CORPUS_SCHEMA)
        status = pa.array(["accepted" if a else "rejected" for a in accepted], type=pa.string())
        return table.append_column(STATUS_COLUMN, status)


def _label_tables(config: CorpusBuildConfig) -> list[pa.Table]:
    labels = config.labels
    tables = [read_release_labels(uri, labels.release_header) for uri in labels.release_csv]
    if labels.openface_images:
        tables.append(read_openface_image_csvs(labels.openface_images, labels.min_confidence))
    if labels.openface_sequence:
        if not config.images:
            raise CorpusError(
                "--labels-openface-sequence needs --images (its frames are the images)"
            )
        names = [
            path.rsplit("/", 1)[-1]
            for path in Location.of(config.images).list_files()
            if path.lower().endswith(IMAGE_EXTENSIONS)
        ]
        tables.append(
            read_openface_sequence_csv(
                labels.openface_sequence, image_names=names, min_confidence=labels.min_confidence
            )
        )
    return tables


def _people(config: CorpusBuildConfig) -> dict[str, tuple[str, str]]:
    if not config.bios:
        return {}
    return {
        identity: (bio.gender, bio.region)
        for identity, bio in read_biographies(config.bios).items()
    }


def _records(config: CorpusBuildConfig) -> tuple[ray.data.Dataset, ExpectedRows]:
    """The input records of every source given, and how many rows they will yield."""
    sources: list[ImageFolderDatasource | MsCelebTsvDatasource] = []
    if config.images:
        sources.append(image_folder_source(config.images, config.identities_csv))
    if config.tsv:
        sources.append(MsCelebTsvDatasource(config.tsv, config.tsv_range_mb * 1024 * 1024))
    # check_build has refused a config without --images or --tsv.
    parts = [read_records(source) for source in sources]
    expected = sum((source.expected_rows() for source in sources), ExpectedRows(0, exact=True))
    return (parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])), expected


def _known_hashes(corpus: str, manifest: Manifest) -> np.ndarray:
    """The content hashes of every image the corpus holds, packed (16 bytes each)."""
    parts = [np.zeros(0, HASH_DTYPE)]
    if not manifest.versions:
        return parts[0]
    root = Location.of(corpus)
    for path in manifest.data_files():
        table = pq.read_table(root.join(path).path, columns=["content_hash"], filesystem=root.fs)
        parts.append(packed_hashes(table.column("content_hash").to_pylist()))
    return np.unique(np.concatenate(parts))


def _count_written(location: Location) -> tuple[list[str], int]:
    files = [f for f in location.list_files() if f.endswith(".parquet")]
    rows = sum(pq.read_metadata(f, filesystem=location.fs).num_rows for f in files)
    return files, rows


def _reject_counts(location: Location) -> Counter:
    counts: Counter = Counter()
    for path in location.list_files():
        if path.endswith(".parquet"):
            column = pq.read_table(path, columns=["reject_reason"], filesystem=location.fs)
            counts.update(column.column("reject_reason").to_pylist())
    return counts


def check_build(config: CorpusBuildConfig, *, append: bool) -> Manifest:
    """Everything a build can be refused for before Ray starts (the CLI calls it first): where
    the corpus goes, what it already holds, the inputs and the label sources; its manifest."""
    if not config.corpus:
        raise CorpusError("no corpus location given: pass --corpus PATH_OR_S3_URI")
    check_kept(config.corpus, "--corpus")
    root = Location.of(config.corpus)
    if root.exists() and not root.is_dir():
        raise CorpusError(
            f"--corpus {config.corpus} is a file; expected a folder (new or empty for `build`, "
            "an existing corpus for `add`) or an s3:// prefix"
        )
    manifest = load_manifest(config.corpus, must_exist=append)
    if not append and manifest.versions:
        raise CorpusError(
            f"{config.corpus} already holds versions 1..{manifest.latest}: "
            "use `facs corpus add` to add a batch as a new version"
        )
    if not config.images and not config.tsv:
        raise CorpusError(
            "no input given: pass --images DIR (a folder of face photos) and/or --tsv FILE "
            "(an MS-Celeb-1M TSV); see `facs corpus build --help`"
        )
    labels = config.labels
    label_files = labels.release_csv or labels.openface_images or labels.openface_sequence
    if config.label_model and label_files:
        raise CorpusError(
            "give either label files (--labels-*) or a label model, not both: each row gets one "
            "label source"
        )
    if labels.openface_sequence and not config.images:
        raise CorpusError("--labels-openface-sequence needs --images (its frames are the images)")
    return manifest


def build_version(
    config: CorpusBuildConfig, *, append: bool, labeler: Labeler | None = None
) -> VersionEntry:
    """Build version 1 (``append=False``) or the next version (``append=True``) of the corpus.

    ``labeler`` labels the faces from their pixels (e.g. a trained model); without it, labels come
    from the label files in ``config.labels``; with neither, rows are kept unlabelled.
    """
    manifest = check_build(config, append=append)
    version = manifest.latest + 1
    root = Location.of(config.corpus)
    staging = root.join("versions", f"v{version:04d}")
    staging.delete_dir()  # leftovers of a crashed build of this version: never listed, so redo

    if config.label_model and labeler is None:
        raise CorpusError(
            f"label_model={config.label_model!r} needs the model-backed labeler: build_version "
            "does not load models itself (pass labeler=training.model_labeler.ModelLabeler."
            "from_source(...), as `facs corpus add --label-model` does)"
        )
    tables = _label_tables(config)
    if labeler is not None and tables:
        raise CorpusError(
            "give either label files (--labels-*) or a label model, not both: each row gets one "
            "label source"
        )
    if labeler is None and tables:
        labeler = TableLabeler.from_tables(tables)
    del tables
    # The label files' parse buffers are free now: hand their pages back to the system (an
    # allocator keeps freed memory for reuse; with mimalloc, 0.3 GB at 1,000,000 label rows).
    pa.default_memory_pool().release_unused()
    if labeler is None:
        log.warning(
            "no label source given: rows are stored unlabelled (label_source=%s)", UNLABELLED
        )
    people = _people(config)
    ledger = BuildLedger.remote(_known_hashes(config.corpus, manifest))

    started = time.perf_counter()
    workers = config.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    records, expected = _records(config)
    what = f"{'add' if append else 'build'} v{version}"
    with RowProgress(
        what, lambda: ray.get(ledger.rows.remote()), expected.rows, estimated=not expected.exact
    ):
        write_by_status(
            records,
            CorpusRowMaker,
            (config, ray.put(labeler) if labeler is not None else None, people, ledger),
            staging,
            schema=CORPUS_SCHEMA,
            workers=workers,
            batch_size=config.batch_size,
            batch_format="numpy",
            rows_per_file=config.rows_per_file,
        )
    elapsed = time.perf_counter() - started

    data_dir = status_folder(staging, ACCEPTED)
    rejects_dir = status_folder(staging, REJECTED)
    data_files, accepted = _count_written(data_dir)
    _, rejected = _count_written(rejects_dir)
    rows_in = ray.get(ledger.rows.remote())
    if rows_in != accepted + rejected:
        raise CorpusError(
            f"row accounting failed: {rows_in} rows entered the workers but "
            f"{accepted} accepted + {rejected} rejected were written; version {version} not committed"
        )
    prefix = root.path.rstrip("/") + "/"
    entry = VersionEntry(
        version=version,
        created=now_iso(),
        data_dir=data_dir.path[len(prefix) :],
        rejects_dir=rejects_dir.path[len(prefix) :],
        data_files=[f[len(prefix) :] for f in data_files],
        rows_read=rows_in,
        accepted=accepted,
        rejected=rejected,
        reject_counts=dict(sorted(_reject_counts(rejects_dir).items())),
        inputs={
            **{k: v for k, v in asdict(config).items() if k not in ("corpus", "note")},
            "labeler": getattr(labeler, "name", None),
            "seconds": round(elapsed, 2),
        },
        note=config.note,
    )
    manifest.versions.append(entry)
    save_manifest(config.corpus, manifest)
    return entry
