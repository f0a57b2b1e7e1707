"""The corpus manifest: which versions exist, where their shards are, what went in, and subsets.

The manifest is the commit point. A version's shards are written first, under its own folder;
only then is the manifest rewritten (atomically) to list it. A crash mid-build therefore leaves at
most an unlisted folder, which the next build of that version deletes and writes again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from pipeline.storage import Location

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class CorpusError(RuntimeError):
    """A corpus location or version that cannot be used as asked."""


@dataclass
class VersionEntry:
    version: int
    created: str
    data_dir: str  # relative to the corpus root
    rejects_dir: str
    data_files: list[str]  # relative to the corpus root, sorted
    rows_read: int
    accepted: int
    rejected: int
    reject_counts: dict[str, int]
    inputs: dict[str, object]  # the build's sources and options, for provenance
    note: str = ""


@dataclass
class SubsetEntry:
    name: str
    version: int
    file: str  # relative path of a Parquet file of content_hash + split
    images: int
    identities: int
    spec: dict[str, object]


@dataclass
class Manifest:
    format: int = FORMAT_VERSION
    versions: list[VersionEntry] = field(default_factory=list)
    subsets: dict[str, SubsetEntry] = field(default_factory=dict)

    @property
    def latest(self) -> int:
        return self.versions[-1].version if self.versions else 0

    def entries_up_to(self, version: int | None) -> list[VersionEntry]:
        """Versions 1..version (a corpus version includes every batch added before it)."""
        if not self.versions:
            raise CorpusError("the corpus has no versions yet: run `facs corpus build` first")
        version = self.latest if version is None else version
        if version < 1 or version > self.latest:
            raise CorpusError(f"version {version} does not exist (versions 1..{self.latest})")
        return [v for v in self.versions if v.version <= version]

    def data_files(self, version: int | None = None) -> list[str]:
        return [f for entry in self.entries_up_to(version) for f in entry.data_files]

    def content_hash(self, version: int | None = None) -> str:
        """A short hash of the version's shard list and row counts: names the exact training data."""
        entries = self.entries_up_to(version)
        payload = json.dumps([(e.version, e.data_files, e.accepted) for e in entries])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        if raw.get("format") != FORMAT_VERSION:
            raise CorpusError(f"unsupported corpus manifest format {raw.get('format')!r}")
        return cls(
            format=raw["format"],
            versions=[VersionEntry(**v) for v in raw.get("versions", [])],
            subsets={k: SubsetEntry(**v) for k, v in raw.get("subsets", {}).items()},
        )


def manifest_location(corpus_uri: str) -> Location:
    return Location.of(corpus_uri).join(MANIFEST_NAME)


def load_manifest(corpus_uri: str, *, must_exist: bool = True) -> Manifest:
    location = manifest_location(corpus_uri)
    if not location.exists():
        if must_exist:
            raise CorpusError(f"no corpus at {corpus_uri} (missing {MANIFEST_NAME})")
        return Manifest()
    return Manifest.from_json(location.read_text())


def save_manifest(corpus_uri: str, manifest: Manifest) -> None:
    manifest_location(corpus_uri).write_text_atomic(manifest.to_json())


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
