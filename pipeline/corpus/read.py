"""Open a corpus version (optionally a named subset and split) as Parquet files or a Ray Dataset."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.expressions import col

from pipeline.corpus.manifest import CorpusError, Manifest, load_manifest
from pipeline.schema import UNLABELLED
from pipeline.storage import Location

#: Columns that describe a row without its pixels: cheap to read for stats and subsets.
METADATA_COLUMNS = ["content_hash", "image_name", "identity", "gender", "region", "split"]


def version_files(corpus: str, version: int | None = None) -> tuple[Location, list[str]]:
    """The corpus root and the filesystem paths of the version's accepted shards."""
    manifest = load_manifest(corpus)
    root = Location.of(corpus)
    return root, [root.join(f).path for f in manifest.data_files(version)]


def read_metadata_table(
    corpus: str, version: int | None = None, columns: list[str] | None = None
) -> pa.Table:
    """The version's accepted rows without the ``face`` column (unless asked for)."""
    root, files = version_files(corpus, version)
    columns = columns or METADATA_COLUMNS
    tables = [pq.read_table(f, columns=columns, filesystem=root.fs) for f in files]
    if not tables:
        raise CorpusError(f"version {version or 'latest'} of {corpus} has no accepted rows")
    return pa.concat_tables(tables)


def labelled_counts(
    corpus: str, version: int | None = None, subset: str | None = None
) -> dict[str, dict[str, int]]:
    """``{split: {"rows": n, "labelled": k}}`` of a version (or named subset), from the metadata
    columns alone (no pixels, no Ray): what a training run can be refused for up front."""
    manifest = load_manifest(corpus)
    if subset is not None:
        hashes = subset_hashes(corpus, manifest, subset)
        version = manifest.subsets[subset].version
    table = read_metadata_table(corpus, version, ["content_hash", "split", "label_source"])
    if subset is not None:
        chosen = set(hashes.column("content_hash").to_pylist())
        keep = [value in chosen for value in table.column("content_hash").to_pylist()]
        table = table.filter(pa.array(keep, type=pa.bool_()))
    splits = np.asarray(table.column("split").to_pylist(), dtype=object)
    labelled = np.asarray(table.column("label_source").to_pylist(), dtype=object) != UNLABELLED
    return {
        split: {
            "rows": int((splits == split).sum()),
            "labelled": int((labelled & (splits == split)).sum()),
        }
        for split in ("train", "val")
    }


def subset_hashes(corpus: str, manifest: Manifest, name: str) -> pa.Table:
    if name not in manifest.subsets:
        known = ", ".join(sorted(manifest.subsets)) or "none"
        raise CorpusError(f"no subset named {name!r} in {corpus} (known: {known})")
    root = Location.of(corpus)
    return pq.read_table(root.join(manifest.subsets[name].file).path, filesystem=root.fs)


class _KeepRows:
    def __init__(self, hashes: set[str] | None, split: str | None):
        self.hashes = hashes
        self.split = split

    def __call__(self, batch: pa.Table) -> pa.Table:
        keep = np.ones(batch.num_rows, dtype=bool)
        if self.hashes is not None:
            keep &= np.fromiter(
                (h in self.hashes for h in batch.column("content_hash").to_pylist()),
                bool,
                batch.num_rows,
            )
        if self.split is not None:
            keep &= np.asarray(batch.column("split").to_pylist(), dtype=object) == self.split
        return batch.filter(pa.array(keep))


def read_corpus(
    corpus: str,
    version: int | None = None,
    *,
    subset: str | None = None,
    split: str | None = None,
    labelled_only: bool = True,
) -> ray.data.Dataset:
    """A Ray Dataset of corpus rows (streaming, sharded by file) for training or inspection."""
    manifest = load_manifest(corpus)
    if subset is not None:
        version = manifest.subsets[subset].version if subset in manifest.subsets else version
    root, files = version_files(corpus, version)
    dataset = ray.data.read_parquet(files, filesystem=root.fs)
    hashes = (
        set(subset_hashes(corpus, manifest, subset).column("content_hash").to_pylist())
        if subset
        else None
    )
    if hashes is not None or split is not None:
        dataset = dataset.map_batches(_KeepRows(hashes, split), batch_format="pyarrow")
    if labelled_only:
        dataset = dataset.filter(expr=col("label_source") != UNLABELLED)
    return dataset
