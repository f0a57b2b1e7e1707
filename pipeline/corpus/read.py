"""Open a corpus version (optionally a named subset and split) as Parquet files or a Ray Dataset."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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


def iter_metadata_tables(
    corpus: str,
    version: int | None = None,
    columns: list[str] | None = None,
    dictionary: bool = False,
) -> Iterator[pa.Table]:
    """The version's accepted rows without the ``face`` column (unless asked for), one shard at
    a time: what a scan of a corpus of millions of rows holds at once is one shard's columns.
    ``dictionary``: string columns dictionary-encoded (codes a row, each value once a shard)."""
    root, files = version_files(corpus, version)
    if not files:
        raise CorpusError(f"version {version or 'latest'} of {corpus} has no accepted rows")
    columns = columns or METADATA_COLUMNS
    for path in files:
        yield pq.read_table(
            path,
            columns=columns,
            filesystem=root.fs,
            read_dictionary=columns if dictionary else None,
        )
        # The shard's read buffers, freed, go back to the system before the next shard is read
        # (the system allocator's release is glibc's malloc_trim): a scan of 1,100,000 rows
        # otherwise held +40 MB more at its end.
        pa.default_memory_pool().release_unused()


def read_metadata_table(
    corpus: str,
    version: int | None = None,
    columns: list[str] | None = None,
    dictionary: bool = False,
) -> pa.Table:
    """The version's accepted rows without the ``face`` column (unless asked for), in one table."""
    return pa.concat_tables(iter_metadata_tables(corpus, version, columns, dictionary))


def take_rows(corpus: str, version: int | None, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """``columns`` of the version's accepted rows numbered ``rows`` (0-based, in the order of
    :func:`read_metadata_table`), read shard by shard: only the chosen rows are held."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    parts, start = [], 0
    for table in iter_metadata_tables(corpus, version, columns):
        stop = start + table.num_rows
        lo, hi = np.searchsorted(rows, [start, stop])
        if hi > lo:
            parts.append(table.take(pa.array(rows[lo:hi] - start)))
        start = stop
    if len(rows) and (rows[-1] >= start or rows[0] < 0):
        raise CorpusError(f"rows {rows[0]}..{rows[-1]} are outside the version's {start} rows")
    return pa.concat_tables(parts) if parts else pa.table({c: pa.array([]) for c in columns})


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
        table = table.filter(
            pc.is_in(table["content_hash"], value_set=hashes["content_hash"].combine_chunks())
        )
    labelled = pc.not_equal(table["label_source"], UNLABELLED)
    counts = {}
    for split in ("train", "val"):
        in_split = pc.equal(table["split"], split)
        counts[split] = {
            "rows": int(pc.sum(in_split).as_py() or 0),
            "labelled": int(pc.sum(pc.and_(in_split, labelled)).as_py() or 0),
        }
    return counts


def subset_hashes(corpus: str, manifest: Manifest, name: str) -> pa.Table:
    if name not in manifest.subsets:
        known = ", ".join(sorted(manifest.subsets)) or "none"
        raise CorpusError(f"no subset named {name!r} in {corpus} (known: {known})")
    root = Location.of(corpus)
    return pq.read_table(root.join(manifest.subsets[name].file).path, filesystem=root.fs)


class _KeepRows:
    """Keeps a batch's rows in a subset (by content hash) and/or a split, vectorised in Arrow."""

    def __init__(self, hashes: pa.Array | None, split: str | None):
        self.hashes = hashes
        self.split = split

    def __call__(self, batch: pa.Table) -> pa.Table:
        keep = pa.array(np.ones(batch.num_rows, dtype=bool))
        if self.hashes is not None:
            keep = pc.and_(keep, pc.is_in(batch["content_hash"], value_set=self.hashes))
        if self.split is not None:
            keep = pc.and_(keep, pc.equal(batch["split"], self.split))
        return batch.filter(keep)


#: The corpus's read tasks run in workers whose glibc gives freed heap back at once. With glibc's
#: defaults each worker that read Parquet for a streamed epoch kept what it freed, 2-2.8 GB, and
#: more each epoch (pre-training over 1,100,000 rows peaked at 7.1-8.8 GB; 5.8 GB with this). Only
#: the read: in a training process the same setting made a CPU step 1.49x slower (every large
#: tensor mapped and unmapped anew; benchmarks/malloc_step.py), so Ray starts separate workers
#: for this environment (and for the footer readers the read starts: see pipeline/__init__).
#: Every step that should run inside the read's tasks names it too: Ray Data fuses only operators
#: with the same remote arguments, and an unfused step copies each block through the store.
READ_TASK_ENV = {"env_vars": {"MALLOC_TRIM_THRESHOLD_": "0"}}


def read_corpus(
    corpus: str,
    version: int | None = None,
    *,
    subset: str | None = None,
    split: str | None = None,
    labelled_only: bool = True,
    file_order_seed: int | None = None,
) -> ray.data.Dataset:
    """A Ray Dataset of corpus rows (streaming, sharded by file) for training or inspection.

    With ``file_order_seed`` every execution (every epoch) reads the files in a new order drawn
    from it (reproducible, different per epoch): over a corpus of millions of rows a bounded epoch
    then sees other files each time, and the local shuffle buffer mixes more than one file's run.
    """
    manifest = load_manifest(corpus)
    if subset is not None:
        version = manifest.subsets[subset].version if subset in manifest.subsets else version
    root, files = version_files(corpus, version)
    shuffle = None if file_order_seed is None else ray.data.FileShuffleConfig(seed=file_order_seed)
    dataset = ray.data.read_parquet(
        files, filesystem=root.fs, shuffle=shuffle, runtime_env=READ_TASK_ENV
    )
    hashes = (
        subset_hashes(corpus, manifest, subset)["content_hash"].combine_chunks() if subset else None
    )
    if hashes is not None or split is not None:
        dataset = dataset.map_batches(
            _KeepRows(hashes, split), batch_format="pyarrow", runtime_env=READ_TASK_ENV
        )
    if labelled_only:
        dataset = dataset.filter(expr=col("label_source") != UNLABELLED, runtime_env=READ_TASK_ENV)
    return dataset
