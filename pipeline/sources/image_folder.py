"""Source 1: a folder or S3 prefix of images; identity from the sub-folder name or an image,identity CSV."""

from __future__ import annotations

import csv
import io
import posixpath

import numpy as np
import ray

from pipeline.names import IMAGE_EXTENSIONS
from pipeline.sources.records import IO_TASK_CPUS, UNKNOWN_IDENTITY, io_concurrency
from pipeline.storage import Location


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


class _AttachIdentity:
    def __init__(self, root: str, identities: dict[str, str] | None, uri_prefix: str):
        self.root = root
        self.identities = identities
        self.uri_prefix = uri_prefix

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        return {
            "image_name": np.array([posixpath.basename(p) for p in paths], dtype=object),
            "identity": np.array(
                [identity_from_path(p, self.root, self.identities) for p in paths], dtype=object
            ),
            "data": batch["bytes"],
            "source": np.array([self.uri_prefix + p for p in paths], dtype=object),
            "reject_reason": np.array([None] * len(paths), dtype=object),
        }


def read_image_folder(uri: str, identities_csv: str | None = None) -> ray.data.Dataset:
    """All jpg/png/bmp files below ``uri`` (recursively), as input records.

    Other files are not inputs and are skipped; zero-byte and corrupt images are kept and rejected
    later by the face stage with their reason.
    """
    location = Location.of(uri)
    if not location.exists():
        raise FileNotFoundError(f"image folder not found: {uri}")
    identities = read_identity_csv(identities_csv) if identities_csv else None
    extensions = [e.lstrip(".") for e in IMAGE_EXTENSIONS]
    extensions += [e.upper() for e in extensions]
    dataset = ray.data.read_binary_files(
        location.path,
        include_paths=True,
        filesystem=location.fs,
        file_extensions=extensions,
        num_cpus=IO_TASK_CPUS,
        concurrency=io_concurrency(),
    )
    prefix = "s3://" if location.uri.startswith("s3://") else ""
    return dataset.map_batches(
        _AttachIdentity(location.path, identities, prefix),
        batch_format="numpy",
        batch_size=256,
        num_cpus=IO_TASK_CPUS,
        concurrency=io_concurrency(),
    )
