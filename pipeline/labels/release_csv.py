"""Readers for the paper's released label CSVs: MS-Celeb pre-training labels and DISFA test folds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.labels._csv import (
    LabelFormatError,
    decode_presence_columns,
    label_table,
    line_refs,
    read_csv_strings,
    reject_column,
    trimmed,
)
from pipeline.names import RELEASE_GENDER_CODES
from pipeline.rejects import RejectReason
from pipeline.storage import Location
from pipeline.vocabulary import DISFA_AUS, OPENFACE_AUS

#: The header of the released pre-training label CSVs, which have no header row of their own;
#: it is the second line of the release's ``labels.txt``. AU45 is read past (not in OPENFACE_AUS).
RELEASE_HEADER: tuple[str, ...] = (
    "image", "rectsize", "gender",
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU28", "AU45",
)  # fmt: skip

#: The header of the released DISFA fold CSVs (``fold1_test.csv`` ...), which have no header row.
DISFA_FOLD_HEADER: tuple[str, ...] = (
    "image", "rect",
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU09", "AU12", "AU15", "AU17", "AU20", "AU25", "AU26",
)  # fmt: skip

#: One DISFA frame's ground truth: subject (``SN005``), 0-based frame index, the 12 AU presence bits.
DISFA_FOLD_SCHEMA = pa.schema(
    [
        pa.field("image_name", pa.string(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),
        *[pa.field(au, pa.int8(), nullable=False) for au in DISFA_AUS],
    ]
)

LABEL_SOURCE = "release_csv"

#: ``RightVideoSN005_00003268.jpg`` -> subject ``SN005``, frame ``3268``.
_DISFA_FRAME_PATTERN = r"(?P<subject>SN\d+)_(?P<frame>\d+)\.[A-Za-z]+$"


def read_release_header(uri: str) -> tuple[str, ...]:
    """The column names from a ``labels.txt`` (the line ``Headers``, then the header line)."""
    location = Location.of(uri)
    lines = [line.strip() for line in location.read_text().splitlines() if line.strip()]
    if lines and lines[0].lower() == "headers":
        lines = lines[1:]
    if len(lines) != 1:
        raise LabelFormatError(
            f"{location.uri}: expected one header line (optionally after 'Headers'), "
            f"found {len(lines)} non-empty lines"
        )
    return tuple(name.strip() for name in lines[0].split(","))


def read_release_labels(uri: str, header_uri: str | None = None) -> pa.Table:
    """Read a released pre-training label CSV (no header row) into a ``LABEL_TABLE_SCHEMA`` table.

    ``header_uri`` points at a ``labels.txt``; without it :data:`RELEASE_HEADER` is used. A row with
    the wrong number of columns raises :class:`LabelFormatError`; a row whose AU values are not 0/1
    is kept as a counted reject (``invalid label``, AUs null). Gender codes follow
    ``RELEASE_GENDER_CODES``; any other gender value becomes null.
    """
    header = RELEASE_HEADER if header_uri is None else read_release_header(header_uri)
    location = Location.of(uri)
    missing = [name for name in ("image", "gender", *OPENFACE_AUS) if name not in header]
    if missing:
        raise LabelFormatError(
            f"{header_uri or 'RELEASE_HEADER'}: header lacks columns {missing} needed to read {location.uri}"
        )
    table, lines = read_csv_strings(
        location.read_bytes(),
        header,
        describe_line=lambda line: f"{location.uri}:{line}",
        include_columns=["image", "gender", *OPENFACE_AUS],
    )
    refs = line_refs(location.uri, lines)
    image_name = _image_names(table["image"], refs)
    aus, invalid = decode_presence_columns(table, {au: au for au in OPENFACE_AUS})
    return label_table(
        image_name=image_name,
        aus=aus,
        gender=_genders(table["gender"]),
        label_source=LABEL_SOURCE,
        label_reject=reject_column([(invalid, RejectReason.INVALID_LABEL.value)], table.num_rows),
        label_ref=refs,
    )


def read_disfa_fold_csv(uri: str) -> pa.Table:
    """Read a released DISFA fold CSV (no header row) into a ``DISFA_FOLD_SCHEMA`` table.

    These are ground truth, so a value that is not 0/1 or a name without ``SNxxx_<frame>`` raises
    :class:`LabelFormatError` naming the line.
    """
    location = Location.of(uri)
    table, lines = read_csv_strings(
        location.read_bytes(),
        DISFA_FOLD_HEADER,
        describe_line=lambda line: f"{location.uri}:{line}",
        include_columns=["image", *DISFA_AUS],
    )
    refs = line_refs(location.uri, lines)
    image_name = _image_names(table["image"], refs)
    parts = pc.extract_regex(image_name, _DISFA_FRAME_PATTERN)
    unmatched = np.flatnonzero(pc.is_null(parts).to_numpy(zero_copy_only=False))
    if len(unmatched):
        first = int(unmatched[0])
        raise LabelFormatError(
            f"{refs[first].as_py()}: expected an image name like RightVideoSN005_00003268.jpg, "
            f"found {image_name[first].as_py()!r}"
        )
    aus, invalid = decode_presence_columns(table, {au: au for au in DISFA_AUS})
    if invalid.any():
        first = int(np.flatnonzero(invalid)[0])
        values = {au: table[au][first].as_py() for au in DISFA_AUS}
        raise LabelFormatError(f"{refs[first].as_py()}: expected AU values 0/1, found {values}")
    columns = {
        "image_name": image_name,
        "subject": pc.struct_field(parts, "subject"),
        "frame": pc.cast(pc.struct_field(parts, "frame"), pa.int32()),
        **aus,
    }
    return pa.Table.from_pydict(columns, schema=DISFA_FOLD_SCHEMA)


def _image_names(column: pa.ChunkedArray, refs: pa.Array) -> pa.Array:
    names = trimmed(column)
    empty = np.flatnonzero(pc.equal(names, "").to_numpy(zero_copy_only=False))
    if len(empty):
        raise LabelFormatError(f"{refs[int(empty[0])].as_py()}: expected an image name, found ''")
    return names


def _genders(column: pa.ChunkedArray) -> pa.Array:
    codes = [str(code) for code in RELEASE_GENDER_CODES]
    genders = pa.array(list(RELEASE_GENDER_CODES.values()), pa.string())
    return genders.take(pc.index_in(trimmed(column), value_set=pa.array(codes, pa.string())))
