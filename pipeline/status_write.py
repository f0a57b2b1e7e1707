"""Run a per-row face stage on an actor pool and write its rows as Parquet split by status.

The corpus build and DISFA ingestion both end this way: every input row leaves the stage either
accepted or rejected (with its reason), and lands under ``status=accepted/`` or
``status=rejected/`` of one folder, so that rows read = accepted + rejected can be checked there.
"""

from __future__ import annotations

import copy
from typing import Any

import pyarrow as pa
import ray

from pipeline.sources.records import IO_TASK_CPUS, io_concurrency
from pipeline.storage import Location

STATUS_COLUMN = "status"
ACCEPTED, REJECTED = "accepted", "rejected"
#: Rows a Parquet row group holds (about 17 MB of 64x64 faces). Without it each block of the face
#: stage became a row group of a few dozen rows, and a 23,000-row shard carried a 3.4 MB footer
#: that every read (every pre-training epoch) fetched and parsed again: at 1,100,000 rows
#: pre-training read at half its speed now (see benchmarks/results/scale.json).
ROW_GROUP_ROWS = 4096
#: Object store a write's stream may fill, per face-stage worker. Unbounded, Ray Data's budget
#: grows with the store, and a long build kept filling it: the pages it touched stayed resident,
#: so a build's memory rose with its length (1,000,000 rows: 1.3 GB in the row makers' share of
#: the store, against 0.5 GB at 100,000 rows).
STORE_BYTES_PER_WORKER = 256 * 2**20


def store_budget(workers: int) -> int:
    """Object store a stream feeding ``workers`` workers may hold (as for at least two)."""
    return max(2, workers) * STORE_BYTES_PER_WORKER


def statistics_columns(schema: pa.Schema) -> list[str]:
    """The columns worth min/max statistics: all but the binary ones (a face's bytes filter
    nothing, and their statistics would put two faces per row group into the footer)."""
    return [field.name for field in schema if not pa.types.is_binary(field.type)]


def status_folder(location: Location, status: str) -> Location:
    """``<location>/status=<status>``: where that status's shards are written."""
    return location.join(f"{STATUS_COLUMN}={status}")


def write_by_status(
    records: ray.data.Dataset,
    stage: type,
    stage_args: tuple[Any, ...],
    location: Location,
    *,
    schema: pa.Schema,
    workers: int,
    batch_size: int,
    batch_format: str,
    rows_per_file: int,
) -> None:
    """``stage(*stage_args)`` on ``workers`` actors (one CPU each) -> ``location`` by status.

    ``stage`` must return batches with a ``status`` column of ``accepted``/``rejected`` and
    the other columns of ``schema``; files get row groups of ``ROW_GROUP_ROWS`` rows.
    """
    rows = records.map_batches(
        stage,
        fn_constructor_args=stage_args,
        batch_size=batch_size,
        batch_format=batch_format,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
    )
    # Files of about ``rows_per_file`` rows: blocks of that many rows first, each block then written
    # as one file per status. (Ray 2.60 deprecates ``min_rows_per_file`` with ``partition_cols``;
    # its suggested repartition by key is an all-to-all shuffle, which a streaming build avoids.)
    blocks = rows.map_batches(
        _as_block,
        batch_size=rows_per_file,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ray.data.TaskPoolStrategy(size=io_concurrency()),
        num_cpus=IO_TASK_CPUS,
    )
    bound_object_store(blocks, store_budget(workers))
    blocks.write_parquet(
        location.path,
        filesystem=location.fs,
        partition_cols=[STATUS_COLUMN],
        row_group_size=ROW_GROUP_ROWS,  # passed on to pyarrow's writer, like the next
        write_statistics=statistics_columns(schema),
        ray_remote_args={"num_cpus": IO_TASK_CPUS},
        concurrency=io_concurrency(),
    )


def bound_object_store(dataset: ray.data.Dataset, budget_bytes: int) -> None:
    """Let ``dataset``'s execution hold at most ``budget_bytes`` of object store (its own copy of
    the data context: other datasets keep theirs)."""
    context = dataset.context
    options = copy.copy(context.execution_options)
    options.resource_limits = options.resource_limits.copy(object_store_memory=budget_bytes)
    context.execution_options = options


def _as_block(batch: pa.Table) -> pa.Table:
    """The batch unchanged: ``map_batches``'s ``batch_size`` does the regrouping."""
    return batch
