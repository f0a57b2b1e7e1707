"""Source 2: MS-Celeb-1M TSV as released (``FaceImageCroppedWithAlignment.tsv`` style).

Columns, tab-separated, no header: MID, ImageSearchRank, ImageURL, PageURL, FaceID,
FaceRectangle (base64), FaceData (base64 JPEG). The released files are hundreds of GB, so each file
is split into byte ranges read by parallel Ray tasks (a line belongs to the range its first byte is
in), streaming: no task holds more than one range.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from pipeline.names import msceleb_image_name
from pipeline.rejects import RejectReason
from pipeline.sources.records import RECORD_SCHEMA, UNKNOWN_IDENTITY, ExpectedRows, read_records
from pipeline.storage import Location

TSV_COLUMNS = (
    "MID",
    "ImageSearchRank",
    "ImageURL",
    "PageURL",
    "FaceID",
    "FaceRectangle",
    "FaceData",
)
DEFAULT_RANGE_BYTES = 16 * 1024 * 1024
#: Bytes read from the start of each TSV to estimate its line count (progress, ETA).
SAMPLE_BYTES = 4 * 1024 * 1024
LINES_PER_BLOCK = 256


def parse_face_rectangle(text: str) -> tuple[float, float, float, float]:
    """MS-Celeb's FaceRectangle: base64 of four little-endian float32 (left, top, right, bottom)."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 16:
        raise ValueError(f"FaceRectangle must decode to 16 bytes, got {len(raw)}")
    return struct.unpack("<4f", raw)


def encode_face_rectangle(left: float, top: float, right: float, bottom: float) -> str:
    return base64.b64encode(struct.pack("<4f", left, top, right, bottom)).decode("ascii")


def parse_tsv_line(line: bytes, source: str) -> dict:
    """One TSV line -> one input record; a bad line becomes a record with its reject reason."""
    fields = line.rstrip(b"\r\n").split(b"\t")
    record = {
        "image_name": source,
        "identity": UNKNOWN_IDENTITY,
        "data": b"",
        "source": source,
        "reject_reason": None,
    }
    if len(fields) < len(TSV_COLUMNS):
        record["reject_reason"] = RejectReason.TRUNCATED_ROW.value
        if fields and fields[0]:
            record["identity"] = fields[0].decode("utf-8", "replace")
        return record
    mid, rank, _, _, face_id, rectangle, face_data = (
        f.decode("utf-8", "replace") for f in fields[:7]
    )
    record["identity"] = mid
    record["image_name"] = msceleb_image_name(mid, rank, face_id)
    try:
        parse_face_rectangle(rectangle)
        record["data"] = base64.b64decode(face_data, validate=True)
    except (binascii.Error, ValueError):
        record["reject_reason"] = RejectReason.BAD_BASE64.value
    return record


def _lines_in_range(handle: pa.NativeFile, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for every line whose first byte lies in [start, end)."""
    size = handle.size()
    starts_mid_line = False
    if start > 0:
        handle.seek(start - 1)
        starts_mid_line = handle.read(1) != b"\n"
    handle.seek(start)
    buffer = handle.read(end - start)
    if end < size and not buffer.endswith(b"\n"):
        # Finish the line that straddles `end`; the next range skips it.
        while True:
            more = handle.read(256 * 1024)
            if not more:
                break
            cut = more.find(b"\n")
            if cut >= 0:
                buffer += more[: cut + 1]
                break
            buffer += more
    position = 0
    if starts_mid_line:
        cut = buffer.find(b"\n")
        if cut < 0:
            return
        position = cut + 1
    while position < len(buffer) and start + position < end:
        newline = buffer.find(b"\n", position)
        if newline < 0:
            newline = len(buffer)
        yield start + position, buffer[position:newline]
        position = newline + 1


def _read_range(
    fs: pafs.FileSystem, path: str, uri: str, start: int, end: int
) -> Iterator[pa.Table]:
    """Yield record blocks for the non-blank lines that start in [start, end)."""
    rows: dict[str, list] = {name: [] for name in RECORD_SCHEMA.names}
    with fs.open_input_file(path) as handle:
        for offset, line in _lines_in_range(handle, start, end):
            if not line.strip():
                continue  # blank lines are not input rows
            record = parse_tsv_line(line, f"{uri}@{offset}")
            for name in rows:
                rows[name].append(record[name])
            if len(rows["source"]) >= LINES_PER_BLOCK:
                yield pa.Table.from_pydict(rows, schema=RECORD_SCHEMA)
                rows = {name: [] for name in RECORD_SCHEMA.names}
    if rows["source"]:
        yield pa.Table.from_pydict(rows, schema=RECORD_SCHEMA)


class MsCelebTsvDatasource(Datasource):
    """Ray Data datasource over one or more MS-Celeb TSV files, split into byte ranges."""

    def __init__(self, uris: list[str], range_bytes: int = DEFAULT_RANGE_BYTES):
        self.files: list[tuple[Location, int]] = []
        for uri in uris:
            location = Location.of(uri)
            info = location.fs.get_file_info(location.path)
            if info.type != pafs.FileType.File:
                raise FileNotFoundError(f"MS-Celeb TSV not found: {uri}")
            self.files.append((location, info.size))
        self.range_bytes = range_bytes

    def estimate_inmemory_data_size(self) -> int:
        return sum(size for _, size in self.files)

    def expected_rows(self, sample_bytes: int = SAMPLE_BYTES) -> ExpectedRows:
        """Lines in the files, estimated from the line length of each file's first bytes (exact
        when a file is no longer than the sample): counting every line of a file of hundreds of
        GB would read it twice. Blank lines are counted, so a blank-heavy file over-estimates."""
        rows, exact = 0, True
        for location, size in self.files:
            if size == 0:
                continue
            with location.fs.open_input_file(location.path) as handle:
                head = handle.read(min(size, sample_bytes))
            lines = head.count(b"\n") + (0 if head.endswith(b"\n") else 1)
            if len(head) == size:
                rows += lines
            else:
                rows += max(1, round(size * max(1, head.count(b"\n")) / len(head)))
                exact = False
        return ExpectedRows(rows, exact)

    def task_count(self) -> int:
        return sum(len(range(0, max(size, 1), self.range_bytes)) for _, size in self.files)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit=None, data_context=None
    ) -> list[ReadTask]:
        tasks = []
        for location, size in self.files:
            for start in range(0, max(size, 1), self.range_bytes):
                end = min(start + self.range_bytes, size)
                fs, path, uri = location.fs, location.path, location.uri

                def read(fs=fs, path=path, uri=uri, start=start, end=end) -> Iterator[pa.Table]:
                    yield from _read_range(fs, path, uri, start, end)

                metadata = BlockMetadata(
                    num_rows=None, size_bytes=end - start, exec_stats=None, input_files=(uri,)
                )
                tasks.append(ReadTask(read, metadata, schema=RECORD_SCHEMA))
        return tasks


def read_msceleb_tsv(
    uris: list[str] | str, range_bytes: int = DEFAULT_RANGE_BYTES
) -> ray.data.Dataset:
    """MS-Celeb TSV file(s) as input records (identity = MID, name = <MID>_<rank>-FaceId-<id>.jpg)."""
    return read_records(
        MsCelebTsvDatasource([uris] if isinstance(uris, str) else uris, range_bytes)
    )
