"""Readers for OpenFace 2.0 output CSVs: per-image FaceLandmarkImg files and FeatureExtraction sequences."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from pipeline.labels._csv import (
    LabelFormatError,
    decode_presence_columns,
    label_table,
    line_refs,
    parse_numbers,
    read_csv_strings,
    reject_column,
)
from pipeline.names import frame_name
from pipeline.rejects import RejectReason
from pipeline.schema import LABEL_TABLE_SCHEMA
from pipeline.storage import Location
from pipeline.vocabulary import OPENFACE_AUS

IMAGE_LABEL_SOURCE = "openface_img"
SEQUENCE_LABEL_SOURCE = "openface_seq"

#: OpenFace's presence (classification) column for each AU; AU28 has ``_c`` but no ``_r``.
PRESENCE_COLUMNS: dict[str, str] = {au: f"{au}_c" for au in OPENFACE_AUS}

#: Per-image CSVs are read this many files at a time (bounds memory; one parse per chunk and header).
_FILES_PER_CHUNK = 4096
_READ_THREADS = 16


def read_openface_image_csvs(uri: str, min_confidence: float = 0.75) -> pa.Table:
    """Read a folder (or prefix) of FaceLandmarkImg CSVs, one per image, into a label table.

    ``image_name`` is each CSV's file stem (the join goes through ``names.image_key``). Of several
    faces in one CSV (rows told apart by ``face_id`` or, in FaceLandmarkImg's own header, ``face``)
    the most confident is kept. A CSV with a header but no face row gets one
    ``openface failure`` row. ``uri`` may also name a single CSV. Files that share a header are
    concatenated and parsed together, so per-file cost is a read, not a CSV parse.
    """
    location = Location.of(uri)
    if not location.exists():
        raise FileNotFoundError(f"{location.uri}: no such folder or file of OpenFace CSVs")
    if location.is_dir():
        paths = [p for p in location.list_files() if p.lower().endswith(".csv")]
    else:
        paths = [location.path]
    tables = [
        _read_image_chunk(location, paths[start : start + _FILES_PER_CHUNK], min_confidence)
        for start in range(0, len(paths), _FILES_PER_CHUNK)
    ]
    return pa.concat_tables(tables) if tables else LABEL_TABLE_SCHEMA.empty_table()


def read_openface_sequence_csv(
    uri: str,
    *,
    image_names: Sequence[str] | None = None,
    video_stem: str | None = None,
    min_confidence: float = 0.75,
) -> pa.Table:
    """Read a FeatureExtraction CSV over an image sequence or a video into a label table.

    Column ``frame`` is 1-based: frame N is the Nth of ``sorted(image_names)``, or for a video the
    frame image ``names.frame_name(video_stem, N - 1)``. Give exactly one of the two. Where several
    faces share a frame (multi-face tracking) the most confident is kept.
    """
    if (image_names is None) == (video_stem is None):
        raise ValueError(
            "give exactly one of image_names (an image sequence) or video_stem (a video)"
        )
    location = Location.of(uri)
    header, body = _split_header(location.read_bytes())
    names = _header_names(header)
    frame_column = _require(names, ["frame"], location.uri)[0]

    def describe(body_line: int) -> str:
        return f"{location.uri}:{body_line + 1}"

    table, body_lines = read_csv_strings(
        body, names, describe_line=describe, include_columns=_columns_to_read(names, [frame_column])
    )
    refs = line_refs(location.uri, body_lines + 1)
    frames = _whole_numbers(table[frame_column], "frame", refs)
    limit = len(image_names) if image_names is not None else None
    out_of_range = (frames < 1) | (frames > limit if limit is not None else False)
    if out_of_range.any():
        first = int(np.flatnonzero(out_of_range)[0])
        expected = f"1..{limit} (one per image given)" if limit is not None else ">= 1"
        raise LabelFormatError(
            f"{refs[first].as_py()}: frame {frames[first]} is outside the expected range {expected}"
        )
    keep = _most_confident(frames, _confidence(table, refs))
    table, frames, refs = table.take(keep), frames[keep], refs.take(keep)
    if image_names is not None:
        ordered = np.array(sorted(image_names), dtype=object)
        frame_images = pa.array(ordered[frames - 1], pa.string())
    else:
        frame_images = pa.array([frame_name(video_stem, int(n) - 1) for n in frames], pa.string())
    return _to_label_table(table, frame_images, refs, SEQUENCE_LABEL_SOURCE, min_confidence)


def _read_image_chunk(root: Location, paths: list[str], min_confidence: float) -> pa.Table:
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        contents = list(pool.map(lambda path: _read(root, path), paths))
    uris = [root.uri_of(path) for path in paths]
    stems = [_csv_stem(path) for path in paths]
    by_header: dict[bytes, list[int]] = {}
    for index, data in enumerate(contents):
        header, body = _split_header(data)
        contents[index] = body
        by_header.setdefault(header, []).append(index)
    tables: list[pa.Table] = []
    file_order: list[np.ndarray] = []
    for header, members in by_header.items():
        rows, files = _read_image_group(header, members, contents, uris, stems, min_confidence)
        tables.append(rows)
        file_order.append(files)
    found = np.concatenate(file_order) if file_order else np.zeros(0, dtype=np.int64)
    faceless = np.setdiff1d(np.arange(len(paths)), found)
    tables.append(_failure_rows([stems[i] for i in faceless], [uris[i] for i in faceless]))
    file_order.append(faceless)
    table = pa.concat_tables(tables)
    return table.take(np.argsort(np.concatenate(file_order), kind="stable"))


def _read_image_group(
    header: bytes,
    members: list[int],
    bodies: list[bytes],
    uris: list[str],
    stems: list[str],
    min_confidence: float,
) -> tuple[pa.Table, np.ndarray]:
    """Parse the bodies of files sharing one header at once; returns rows and their file indices."""
    parts = [
        bodies[i] if not bodies[i] or bodies[i].endswith(b"\n") else bodies[i] + b"\n"
        for i in members
    ]
    offsets = np.concatenate(([0], np.cumsum([part.count(b"\n") for part in parts])))
    names = _header_names(header)
    if not any(parts):  # header-only files: no face found
        return LABEL_TABLE_SCHEMA.empty_table(), np.zeros(0, dtype=np.int64)

    def describe(line: int) -> str:  # a line of the joined bodies -> "<file>:<line in file>"
        member = int(np.searchsorted(offsets, line - 1, side="right")) - 1
        return f"{uris[members[member]]}:{line - int(offsets[member]) + 1}"

    _require(names, list(PRESENCE_COLUMNS.values()), uris[members[0]])
    table, lines = read_csv_strings(
        b"".join(parts), names, describe_line=describe, include_columns=_columns_to_read(names, [])
    )
    member_of_row = np.searchsorted(offsets, lines - 1, side="right") - 1
    file_of_row = np.asarray(members, dtype=np.int64)[member_of_row]
    refs = line_refs(
        pa.array(uris, pa.string()).take(pa.array(file_of_row)), lines - offsets[member_of_row] + 1
    )
    keep = _most_confident(file_of_row, _confidence(table, refs))
    image_names = pa.array(stems, pa.string()).take(pa.array(file_of_row[keep]))
    rows = _to_label_table(
        table.take(keep), image_names, refs.take(keep), IMAGE_LABEL_SOURCE, min_confidence
    )
    return rows, file_of_row[keep]


def _to_label_table(
    table: pa.Table, image_names: pa.Array, refs: pa.Array, source: str, min_confidence: float
) -> pa.Table:
    confidence = _confidence(table, refs)
    if "success" in table.column_names:
        failed = _whole_numbers(table["success"], "success", refs) == 0
    else:  # FaceLandmarkImg writes no success column: a row is a detected face
        failed = np.zeros(table.num_rows, dtype=bool)
    low_confidence = ~(confidence >= min_confidence)  # NaN counts as low
    aus, invalid = decode_presence_columns(table, PRESENCE_COLUMNS)
    reasons = [
        (failed, RejectReason.OPENFACE_FAILURE.value),
        (low_confidence, RejectReason.LOW_CONFIDENCE.value),
        (invalid, RejectReason.INVALID_LABEL.value),
    ]
    return label_table(
        image_name=image_names,
        aus=aus,
        confidence=confidence,
        label_source=source,
        label_reject=reject_column(reasons, table.num_rows),
        label_ref=refs,
    )


def _failure_rows(stems: list[str], uris: list[str]) -> pa.Table:
    """One ``openface failure`` row per CSV that holds no face row."""
    count = len(stems)
    return label_table(
        image_name=pa.array(stems, pa.string()),
        aus={au: pa.nulls(count, pa.int8()) for au in OPENFACE_AUS},
        label_source=IMAGE_LABEL_SOURCE,
        label_reject=pa.array([RejectReason.OPENFACE_FAILURE.value] * count, pa.string()),
        label_ref=line_refs(pa.array(uris, pa.string()), np.ones(count, dtype=np.int64)),
    )


def _most_confident(group: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Row indices, in input order, of the most confident row of each group (first on ties)."""
    if len(group) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(len(group)), -confidence, group))  # NaN confidence sorts last
    sorted_group = group[order]
    first = np.concatenate(([True], sorted_group[1:] != sorted_group[:-1]))
    return np.sort(order[first])


def _confidence(table: pa.Table, refs: pa.Array) -> np.ndarray:
    return parse_numbers(table["confidence"], name="confidence", refs=refs)


def _whole_numbers(column: pa.ChunkedArray, name: str, refs: pa.Array) -> np.ndarray:
    values = parse_numbers(column, name=name, refs=refs)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise LabelFormatError(
            f"{refs[first].as_py()}: column {name!r} expected a whole number, found {values[first]}"
        )
    return values.astype(np.int64)


def _columns_to_read(names: list[str], extra: list[str]) -> list[str]:
    wanted = [*extra, "confidence", "success", *PRESENCE_COLUMNS.values()]
    return [name for name in dict.fromkeys(wanted) if name in names]


def _require(names: list[str], columns: Sequence[str], uri: str) -> list[str]:
    needed = [*columns, "confidence", *PRESENCE_COLUMNS.values()]
    missing = [column for column in dict.fromkeys(needed) if column not in names]
    if missing:
        raise LabelFormatError(
            f"{uri}:1: OpenFace header lacks columns {missing}; expected frame/confidence and "
            f"the presence columns {list(PRESENCE_COLUMNS.values())}"
        )
    return list(columns)


def _split_header(data: bytes) -> tuple[bytes, bytes]:
    """(header line without its line break, the rest); tolerates a UTF-8 byte order mark."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    header, _, body = data.partition(b"\n")
    return header.rstrip(b"\r"), body


def _header_names(header: bytes) -> list[str]:
    """Column names with the spaces of the older ``frame, timestamp, ...`` style removed."""
    return [name.strip() for name in header.decode("utf-8").split(",")] if header.strip() else []


def _csv_stem(path: str) -> str:
    base = posixpath.basename(path)
    return base[: -len(".csv")] if base.lower().endswith(".csv") else base


def _read(root: Location, path: str) -> bytes:
    with root.fs.open_input_stream(path) as stream:
        return stream.read()
