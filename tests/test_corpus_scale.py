"""What keeps a growing corpus cheap to train on: file order per epoch, bounded caching, counts."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
import ray
from corpus_fixture import make_corpus
from ray.data import DataContext

from pipeline.corpus.manifest import load_manifest
from pipeline.corpus.read import READ_TASK_ENV, labelled_counts, read_corpus
from pipeline.status_write import bound_object_store
from training.data import CACHED_ROW_BYTES, cache_fits, cached_if_fits, corpus_splits


def _file_sequence(dataset, first_rows: dict[str, int]) -> list[int]:
    """The order in which one execution reaches each file, by each file's first content hash."""
    order = []
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        for value in batch["content_hash"].to_pylist():
            if value in first_rows:
                order.append(first_rows[value])
    return order


@pytest.fixture
def ordered():
    context = DataContext.get_current()
    before = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # task order = the file order read in
    yield
    context.execution_options.preserve_order = before


def test_each_epoch_reads_the_files_in_a_new_reproducible_order(ray_local, tmp_path, ordered):
    corpus = make_corpus(tmp_path / "c", images=480, identities=48, files=8)
    root = tmp_path / "c"
    first_rows = {}
    for index, path in enumerate(load_manifest(corpus.uri).data_files()):
        first_rows[pq.read_table(root / path, columns=["content_hash"])[0][0].as_py()] = index
    dataset = read_corpus(corpus.uri, file_order_seed=3)
    epochs = [_file_sequence(dataset, first_rows) for _ in range(3)]
    assert all(sorted(e) == list(range(len(first_rows))) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3, epochs  # a new order every epoch
    again = read_corpus(corpus.uri, file_order_seed=3)
    assert _file_sequence(again, first_rows) == epochs[0]  # the same seed, the same orders
    plain = read_corpus(corpus.uri)
    assert _file_sequence(plain, first_rows) == sorted(first_rows.values())  # no seed: as listed


def test_only_the_train_split_is_reshuffled(ray_local, tmp_path):
    corpus = make_corpus(tmp_path / "c", images=200, identities=20, files=4)
    splits = corpus_splits(corpus.uri, file_order_seed=1)
    counts = labelled_counts(corpus.uri)
    assert splits["train"].count() == counts["train"]["labelled"] == corpus.train_rows
    assert splits["val"].count() == counts["val"]["labelled"]


def test_cache_decision_is_by_size_against_the_object_store(ray_local, tmp_path):
    store = 1e9
    fits = int(0.5 * store // CACHED_ROW_BYTES)
    assert cache_fits(fits, store) and not cache_fits(fits + 1, store)
    corpus = make_corpus(tmp_path / "c", images=100, identities=10, files=2)
    splits = corpus_splits(corpus.uri)
    kept = cached_if_fits(splits, rows=100)
    streamed = cached_if_fits(splits, rows=10**12)  # a corpus far past any object store
    assert all(type(d).__name__ == "MaterializedDataset" for d in kept.values())
    assert all(streamed[s] is splits[s] for s in splits)
    assert kept["train"].count() == splits["train"].count()


def test_a_write_bounds_its_own_object_store_share_and_leaves_other_datasets_unbounded(
    ray_local,
):
    global_limit = DataContext.get_current().execution_options.resource_limits.object_store_memory
    bounded, other = ray.data.range(10), ray.data.range(10)
    bound_object_store(bounded, 123 * 2**20)
    assert bounded.context.execution_options.resource_limits.object_store_memory == 123 * 2**20
    assert bounded.map_batches(lambda b: b).context.execution_options.resource_limits == (
        bounded.context.execution_options.resource_limits
    )  # what the write derives from it keeps the bound
    assert other.context.execution_options.resource_limits.object_store_memory == global_limit
    current = DataContext.get_current().execution_options.resource_limits.object_store_memory
    assert current == global_limit
    assert bounded.count() == 10


def test_corpus_reads_alone_run_in_workers_whose_freed_heap_goes_back(tmp_path, ray_local):
    corpus = make_corpus(tmp_path / "c", images=64, identities=8, files=2)

    def _trim_at_start(batch: dict) -> dict:
        """The MALLOC_TRIM_THRESHOLD_ its process started with (what glibc read), per row."""
        with open("/proc/self/environ", "rb") as handle:  # the process's start, not os.environ
            started = dict(
                item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item
            )
        value = started.get(b"MALLOC_TRIM_THRESHOLD_", b"<unset>").decode()
        return {"trim": [value] * len(batch["content_hash"])}

    dataset = read_corpus(corpus.uri, labelled_only=False)
    read = dataset._logical_plan.dag
    while read.input_dependencies and type(read).__name__ != "ReadFiles":
        read = read.input_dependencies[0]
    assert read.ray_remote_args["runtime_env"] == READ_TASK_ENV
    # Such a worker starts with the setting; a default one (a training worker) does not.
    in_read_env = dataset.map_batches(_trim_at_start, runtime_env=READ_TASK_ENV).take(5)
    assert {row["trim"] for row in in_read_env} == {"0"}
    default = dataset.map_batches(_trim_at_start).take(5)
    assert {row["trim"] for row in default} == {os.environ.get("MALLOC_TRIM_THRESHOLD_", "<unset>")}
