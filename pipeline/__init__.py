"""Data layer: raw sources -> faces -> labels -> versioned Parquet corpus; DISFA -> frames -> folds."""

import os

# Arrow's allocator: the system's, unless the user chose one. Arrow's default (mimalloc) keeps the
# pages of freed buffers, so a scan over a corpus held memory that grew with the shards it had
# read (`facs corpus stats` at 1,100,000 rows: +0.18 GB against +0.06 GB with this one). Set here,
# before any module of the package imports pyarrow; Ray's local workers inherit it, and
# cluster/runtime_env.yaml sets it for jobs on a cluster.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

# Ray Data lists a Parquet read's files by reading their footers in a pool of actors, 32 by
# default (sized for a cluster reading S3), started anew for every read: 32 Python processes per
# epoch and per pass, in the read's own runtime env (corpus/read.READ_TASK_ENV), which child actors
# inherit. With 2, pre-training at 1,000,000 rows ran 1.19x faster at the same memory
# (benchmarks/pretrain_ab.py, local disk). Workers of a Ray this process starts inherit it; on a
# cluster, Ray's default holds unless the job's runtime env sets it.
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")
