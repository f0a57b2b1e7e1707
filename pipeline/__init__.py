"""Data layer: raw sources -> faces -> labels -> versioned Parquet corpus; DISFA -> frames -> folds."""
