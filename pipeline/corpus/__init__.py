"""The versioned pre-training corpus: Parquet shards + a manifest, built and grown by Ray Data."""
