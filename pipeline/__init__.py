"""Data layer: raw sources -> faces -> labels -> versioned Parquet corpus; DISFA -> frames -> folds."""

import os

# Arrow's allocator: the system's, unless the user chose one. Arrow's default (mimalloc) keeps the
# pages of freed buffers, so a scan over a corpus held memory that grew with the shards it had
# read (`facs corpus stats` at 1,100,000 rows: +0.18 GB against +0.06 GB with this one). Set here,
# before any module of the package imports pyarrow; Ray's local workers inherit it, and
# cluster/runtime_env.yaml sets it for jobs on a cluster.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

# glibc's malloc, in the processes this one starts (the local Ray's workers among them): give freed
# heap back to the system at once. By default each of its arenas keeps what a thread freed, and a
# Ray worker that read Parquet files for an epoch kept 2-2.8 GB (pre-training streaming over
# 1,100,000 rows: peak 7.1-7.7 GB in four runs, 5.5 GB with this). glibc reads it when a process
# starts, so it does not change this process; cluster/runtime_env.yaml sets it for cluster jobs.
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "0")
