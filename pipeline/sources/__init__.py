"""Readers that turn raw inputs (image folders, MS-Celeb TSVs) into Ray Datasets of input records.

Every source yields the same record columns (``RECORD_COLUMNS``): one row per input row, including
rows that are already known to be bad (``reject_reason`` set), so that rows read = accepted + rejected.
"""

from pipeline.sources.image_folder import read_image_folder
from pipeline.sources.msceleb_tsv import read_msceleb_tsv
from pipeline.sources.records import RECORD_SCHEMA

__all__ = ["RECORD_SCHEMA", "read_image_folder", "read_msceleb_tsv"]
