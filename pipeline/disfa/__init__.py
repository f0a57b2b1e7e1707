"""DISFA ingestion: videos or released frames -> cached 64x64 faces with AU labels -> subject folds."""

from pipeline.disfa.cache import CacheManifest, DisfaCacheError, DisfaFrames, cache_key
from pipeline.disfa.config import DisfaConfig
from pipeline.disfa.folds import PAPER_TEST_FOLDS, Fold, FoldError, make_folds
from pipeline.disfa.ingest import prepare_disfa
from pipeline.disfa.labels import (
    SubjectLabels,
    positive_counts,
    presence,
    read_au_label_file,
    read_fold_csvs,
    read_subject_labels,
)
from pipeline.disfa.layout import DisfaLayoutError, DisfaVideo, find_videos
from pipeline.disfa.schema import DISFA_FRAME_SCHEMA, INTENSITY_COLUMNS, intensity_column

__all__ = [
    "DISFA_FRAME_SCHEMA",
    "INTENSITY_COLUMNS",
    "PAPER_TEST_FOLDS",
    "CacheManifest",
    "DisfaCacheError",
    "DisfaConfig",
    "DisfaFrames",
    "DisfaLayoutError",
    "DisfaVideo",
    "Fold",
    "FoldError",
    "SubjectLabels",
    "cache_key",
    "find_videos",
    "intensity_column",
    "make_folds",
    "positive_counts",
    "prepare_disfa",
    "presence",
    "read_au_label_file",
    "read_fold_csvs",
    "read_subject_labels",
]
