"""Label readers (released CSVs, OpenFace outputs) into LABEL_TABLE_SCHEMA tables, and the Labeler interface."""

from pipeline.labels._csv import LabelFormatError
from pipeline.labels.labeler import NO_LABEL, LabelBatch, Labeler, TableLabeler
from pipeline.labels.openface import read_openface_image_csvs, read_openface_sequence_csv
from pipeline.labels.release_csv import (
    DISFA_FOLD_SCHEMA,
    RELEASE_HEADER,
    read_disfa_fold_csv,
    read_release_header,
    read_release_labels,
)

__all__ = [
    "DISFA_FOLD_SCHEMA",
    "NO_LABEL",
    "RELEASE_HEADER",
    "LabelBatch",
    "LabelFormatError",
    "Labeler",
    "TableLabeler",
    "read_disfa_fold_csv",
    "read_openface_image_csvs",
    "read_openface_sequence_csv",
    "read_release_header",
    "read_release_labels",
]
