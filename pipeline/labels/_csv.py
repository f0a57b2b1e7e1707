"""CSV plumbing shared by the label readers: strict parsing with line numbers, 0/1 decoding, table assembly."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipeline.schema import LABEL_TABLE_SCHEMA
from pipeline.vocabulary import OPENFACE_AUS

#: A presence value: 0 or 1, optionally written as a float ("1.0", "0.000000"), optionally padded.
_BINARY_PATTERN = r"^\s*[01](\.0*)?\s*$"


class LabelFormatError(ValueError):
    """A label file does not have the expected shape; the message names the file, the line and what was expected."""


def nonempty_line_numbers(data: bytes) -> np.ndarray:
    """1-based physical line numbers of the non-empty lines of ``data`` (the rows pyarrow will read).

    pyarrow's CSV reader skips empty lines and reports no line numbers, so they are recomputed here,
    vectorised over the newline positions.
    """
    if not data:
        return np.zeros(0, dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == ord("\n"))
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(buf)]))
    lengths = ends - starts
    ends_with_cr = (lengths > 0) & (buf[np.maximum(ends - 1, 0)] == ord("\r"))
    return np.flatnonzero(lengths - ends_with_cr > 0).astype(np.int64) + 1


def _first_malformed_line(data: bytes, expected: int) -> tuple[int, int] | None:
    """(line, field count) of the first row whose field count is not ``expected``; error path only."""
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline=""))
    for fields in reader:
        if fields and len(fields) != expected:
            return reader.line_num, len(fields)
    return None


def read_csv_strings(
    data: bytes,
    column_names: Sequence[str],
    *,
    describe_line: Callable[[int], str],
    include_columns: Sequence[str] | None = None,
) -> tuple[pa.Table, np.ndarray]:
    """Parse headerless CSV bytes, every column as a string, and each row's physical line number.

    A row with the wrong number of fields raises :class:`LabelFormatError`; ``describe_line`` turns a
    line number of ``data`` into the ``file:line`` text used in messages.
    """
    columns = list(include_columns) if include_columns is not None else list(column_names)
    if not data.strip():
        empty = pa.table({name: pa.array([], pa.string()) for name in columns})
        return empty, np.zeros(0, dtype=np.int64)
    malformed: list[pacsv.InvalidRow] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        malformed.append(row)
        return "skip"

    table = pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(column_names=list(column_names)),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in columns},
            include_columns=columns,
        ),
    )
    if malformed:
        expected = len(column_names)
        found = _first_malformed_line(data, expected)
        if found is None:  # the csv module disagrees with pyarrow: report pyarrow's view of the row
            row = malformed[0]
            where, actual = f"row {row.text[:80]!r}", row.actual_columns
        else:
            where, actual = describe_line(found[0]), found[1]
        raise LabelFormatError(
            f"{where}: expected {expected} comma-separated columns, found {actual} "
            f"({len(malformed)} malformed row(s) in all)"
        )
    lines = nonempty_line_numbers(data)
    if len(lines) != table.num_rows:
        raise LabelFormatError(
            f"{describe_line(1)}: read {table.num_rows} rows from {len(lines)} non-empty lines; "
            "quoted line breaks are not supported in label files"
        )
    return table, lines


def trimmed(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return pc.utf8_trim_whitespace(
        column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    )


def decode_presence(column: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """0/1 strings -> int8 (null where the value is not 0/1), and the mask of invalid values."""
    valid = pc.fill_null(pc.match_substring_regex(column, _BINARY_PATTERN), False)
    ones = pc.starts_with(trimmed(column), "1")
    values = pc.if_else(valid, pc.cast(ones, pa.int8()), pa.scalar(None, pa.int8()))
    return values, ~valid.to_numpy(zero_copy_only=False)


def decode_presence_columns(
    table: pa.Table, columns: Mapping[str, str]
) -> tuple[dict[str, pa.Array], np.ndarray]:
    """Decode ``{au: csv column}``; also return the mask of rows with any invalid value."""
    aus: dict[str, pa.Array] = {}
    invalid = np.zeros(table.num_rows, dtype=bool)
    for au, column in columns.items():
        aus[au], bad = decode_presence(table[column])
        invalid |= bad
    return aus, invalid


def parse_numbers(
    column: pa.ChunkedArray | pa.Array, *, name: str, refs: Sequence[str] | pa.Array
) -> np.ndarray:
    """Number strings -> float64; a value that is not a number raises naming its ``file:line``."""
    text = trimmed(column)
    try:
        return pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        for i, value in enumerate(text.to_pylist()):  # error path only: find the first bad value
            try:
                pc.cast(pa.array([value], pa.string()), pa.float64())
            except pa.ArrowInvalid:
                ref = refs[i].as_py() if isinstance(refs, pa.Array) else refs[i]
                raise LabelFormatError(
                    f"{ref}: column {name!r} expected a number, found {value!r}"
                ) from None
        raise


def line_refs(files: pa.Array | str, lines: np.ndarray) -> pa.Array:
    """``"<file>:<line>"`` for each row; ``files`` is one file for all rows or one per row."""
    line_text = pc.cast(pa.array(lines, pa.int64()), pa.string())
    if isinstance(files, str):
        return pc.binary_join_element_wise(files + ":", line_text, "")
    return pc.binary_join_element_wise(files, line_text, ":")


def reject_column(reasons: Sequence[tuple[np.ndarray, str]], num_rows: int) -> pa.Array:
    """The ``label_reject`` column: the first reason whose mask holds, else null."""
    result = np.full(num_rows, None, dtype=object)
    for mask, reason in reversed(reasons):
        result[mask] = reason
    return pa.array(result, pa.string())


def label_table(
    *,
    image_name: pa.Array,
    aus: Mapping[str, pa.Array],
    label_source: str,
    label_reject: pa.Array,
    label_ref: pa.Array,
    gender: pa.Array | None = None,
    confidence: pa.Array | np.ndarray | None = None,
) -> pa.Table:
    """Assemble a table with exactly ``LABEL_TABLE_SCHEMA``; AUs are nulled on rejected rows."""
    num_rows = len(image_name)
    accepted = pc.is_null(label_reject)
    null_au = pa.scalar(None, pa.int8())
    columns: dict[str, pa.Array] = {"image_name": image_name}
    for au in OPENFACE_AUS:
        columns[au] = pc.if_else(accepted, aus[au], null_au)
    columns["gender"] = gender if gender is not None else pa.nulls(num_rows, pa.string())
    columns["confidence"] = (
        pc.cast(pa.array(confidence), pa.float32())
        if confidence is not None
        else pa.nulls(num_rows, pa.float32())
    )
    columns["label_source"] = pa.repeat(pa.scalar(label_source, pa.string()), num_rows)
    columns["label_reject"] = label_reject
    columns["label_ref"] = label_ref
    return pa.Table.from_pydict(columns, schema=LABEL_TABLE_SCHEMA)
