"""The input-record schema every source produces before the face stage."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import ray
from ray.data import Datasource

RECORD_SCHEMA = pa.schema(
    [
        pa.field("image_name", pa.string(), nullable=False),
        pa.field("identity", pa.string(), nullable=False),
        pa.field("data", pa.binary(), nullable=False),  # encoded image bytes; b"" when unreadable
        pa.field("source", pa.string(), nullable=False),  # file, or file@byte-offset for TSV lines
        pa.field("reject_reason", pa.string()),  # set by the reader for rows it could not parse
    ]
)

UNKNOWN_IDENTITY = "unknown"

#: Reads and writes are I/O-bound; they are scheduled with no CPU reservation so that the face
#: workers (one per core) can hold every core without starving the reads that feed them.
IO_TASK_CPUS = 0.0


def io_concurrency() -> int:
    """How many zero-CPU read/write tasks may run at once: one per CPU of the cluster (at least 2).

    Tasks that reserve no CPU are not throttled by the scheduler: without this bound Ray Data starts
    every pending read task at once, each in a new worker process (60+ processes on 2 cores, the
    build spending its time importing Python instead of finding faces).
    """
    cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else 1
    return max(2, int(cpus))


@dataclass(frozen=True)
class ExpectedRows:
    """How many input rows a source will yield: exact (files listed) or estimated (TSV bytes)."""

    rows: int
    exact: bool

    def __add__(self, other: ExpectedRows) -> ExpectedRows:
        return ExpectedRows(self.rows + other.rows, self.exact and other.exact)


def read_records(source: Datasource) -> ray.data.Dataset:
    """A source's input records as a Ray Dataset: zero-CPU read tasks, bounded in number, one
    block stream per task (the tasks' own blocks are the unit of work; no re-splitting)."""
    tasks = source.task_count()
    return ray.data.read_datasource(
        source,
        num_cpus=IO_TASK_CPUS,
        concurrency=max(1, min(io_concurrency(), tasks)),
        override_num_blocks=max(1, tasks),
    )
