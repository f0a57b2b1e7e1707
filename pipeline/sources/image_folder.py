"""Source 1: a folder or S3 prefix of images; identity from the sub-folder name or an image,identity CSV."""

from __future__ import annotations

import csv
import io
import math
import posixpath
from collections.abc import Iterator

import pyarrow as pa
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from pipeline.names import IMAGE_EXTENSIONS
from pipeline.rejects import RejectReason
from pipeline.sources.records import (
    RECORD_SCHEMA,
    UNKNOWN_IDENTITY,
    ExpectedRows,
    read_records,
)
from pipeline.storage import Location, is_s3

#: Rows per record block: about one face-stage batch.
BLOCK_ROWS = 64
#: Files per read task. Long enough that a task's worker is rarely idle (idle workers beyond one
#: per CPU are stopped, and restarting one costs a second or two of CPU); short enough that Ray
#: Data's backpressure, which acts when it submits tasks, still bounds how far reads run ahead of
#: the face stage (one task for a whole folder would read it all into the object store).
FILES_PER_TASK = 1024


class IdentityFileError(ValueError):
    """The image,identity CSV is malformed."""


def read_identity_csv(uri: str) -> dict[str, str]:
    """``image,identity`` CSV (header row optional) -> {image file name: identity}."""
    text = Location.of(uri).read_text()
    mapping: dict[str, str] = {}
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (
            line_no == 1 and [c.strip().lower() for c in row[:2]] == ["image", "identity"]
        ):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise IdentityFileError(f"{uri}:{line_no}: expected 'image,identity', got {row!r}")
        mapping[posixpath.basename(row[0].strip())] = row[1].strip()
    return mapping


def identity_from_path(path: str, root: str, identities: dict[str, str] | None) -> str:
    """The CSV wins; else the first sub-folder below the root; else ``unknown``."""
    name = posixpath.basename(path)
    if identities is not None and name in identities:
        return identities[name]
    relative = posixpath.relpath(path, root)
    parts = relative.split("/")
    return parts[0] if len(parts) > 1 else UNKNOWN_IDENTITY


def read_file_records(
    fs, paths: list[str], root: str, identities: dict[str, str] | None, uri_prefix: str
) -> Iterator[pa.Table]:
    """Record blocks of ``BLOCK_ROWS`` files; a file that cannot be read becomes a rejected row."""
    rows: dict[str, list] = {name: [] for name in RECORD_SCHEMA.names}
    for path in paths:
        reason = None
        try:
            with fs.open_input_stream(path) as handle:
                data = handle.read()
        except OSError:
            data, reason = b"", RejectReason.READ_ERROR.value
        rows["image_name"].append(posixpath.basename(path))
        rows["identity"].append(identity_from_path(path, root, identities))
        rows["data"].append(data)
        rows["source"].append(uri_prefix + path)
        rows["reject_reason"].append(reason)
        if len(rows["source"]) >= BLOCK_ROWS:
            yield pa.Table.from_pydict(rows, schema=RECORD_SCHEMA)
            rows = {name: [] for name in RECORD_SCHEMA.names}
    if rows["source"]:
        yield pa.Table.from_pydict(rows, schema=RECORD_SCHEMA)


class ImageFolderDatasource(Datasource):
    """The image files below a folder or S3 prefix, as input records: ``FILES_PER_TASK`` files a
    read task, each yielding blocks of ``BLOCK_ROWS`` records (no separate identity stage)."""

    def __init__(self, uri: str, identities: dict[str, str] | None) -> None:
        location = Location.of(uri)
        self.fs = location.fs
        self.root = location.path
        self.identities = identities
        self.uri_prefix = "s3://" if is_s3(location.uri) else ""
        self.paths = [p for p in location.list_files() if p.lower().endswith(IMAGE_EXTENSIONS)]

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def expected_rows(self) -> ExpectedRows:
        """One row per image file (files that cannot be read become rejected rows)."""
        return ExpectedRows(len(self.paths), exact=True)

    def task_count(self) -> int:
        n = len(self.paths)
        return math.ceil(n / FILES_PER_TASK) if n else 0

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit=None, data_context=None
    ) -> list[ReadTask]:
        n, count = len(self.paths), self.task_count()
        tasks = []
        for k in range(count):
            part = self.paths[k * n // count : (k + 1) * n // count]
            if not part:
                continue

            # Bound as defaults: a closure over ``self`` would ship every path with every task.
            def read(
                part=part,
                fs=self.fs,
                root=self.root,
                identities=self.identities,
                prefix=self.uri_prefix,
            ) -> Iterator[pa.Table]:
                yield from read_file_records(fs, part, root, identities, prefix)

            metadata = BlockMetadata(
                num_rows=len(part),
                size_bytes=None,
                exec_stats=None,
                input_files=tuple(self.uri_prefix + p for p in part),
            )
            tasks.append(ReadTask(read, metadata, schema=RECORD_SCHEMA))
        return tasks


def image_folder_source(uri: str, identities_csv: str | None = None) -> ImageFolderDatasource:
    """The image files below ``uri``, listed once (see :func:`read_image_folder`)."""
    location = Location.of(uri)
    if not location.exists():
        raise FileNotFoundError(f"image folder not found: {uri}")
    identities = read_identity_csv(identities_csv) if identities_csv else None
    return ImageFolderDatasource(uri, identities)


def read_image_folder(uri: str, identities_csv: str | None = None) -> ray.data.Dataset:
    """All jpg/png/bmp files below ``uri`` (recursively), as input records.

    Other files are not inputs and are skipped; zero-byte and corrupt images are kept and rejected
    later by the face stage with their reason; a file that cannot be read is rejected here.
    """
    return read_records(image_folder_source(uri, identities_csv))
