"""The MS-Celeb TSV source: byte-range splitting, parsing, and bad rows as counted rejects."""

from __future__ import annotations

import base64
import random

import pyarrow.fs as pafs
import pytest

from pipeline.rejects import RejectReason
from pipeline.sources.msceleb_tsv import (
    _lines_in_range,
    encode_face_rectangle,
    parse_face_rectangle,
    read_msceleb_tsv,
)


def tsv_line(mid: str, rank: int, face_id: int, jpeg: bytes) -> str:
    rectangle = encode_face_rectangle(0.1, 0.2, 0.8, 0.9)
    data = base64.b64encode(jpeg).decode()
    return "\t".join([mid, str(rank), "http://img", "http://page", str(face_id), rectangle, data])


@pytest.mark.parametrize("seed", range(5))
def test_byte_ranges_cover_every_line_exactly_once(tmp_path, seed):
    rng = random.Random(seed)
    for trial in range(60):
        lines = [
            bytes(rng.choice(b"ab\t") for _ in range(rng.randint(0, 40)))
            for _ in range(rng.randint(0, 25))
        ]
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        path = tmp_path / f"f{trial}.tsv"
        path.write_bytes(data)
        range_bytes = rng.randint(1, 50)
        got = []
        with pafs.LocalFileSystem().open_input_file(str(path)) as handle:
            for start in range(0, max(len(data), 1), range_bytes):
                got += [
                    line
                    for _, line in _lines_in_range(
                        handle, start, min(start + range_bytes, len(data))
                    )
                ]
        expected = data.split(b"\n")
        if data.endswith(b"\n") or not data:
            expected = expected[:-1]
        assert got == expected


def test_face_rectangle_round_trip():
    assert parse_face_rectangle(encode_face_rectangle(0.25, 0.5, 0.75, 1.0)) == (
        0.25,
        0.5,
        0.75,
        1.0,
    )


def test_tsv_round_trip_of_real_photos_with_bad_rows(tmp_path, shared_data, ray_local):
    photos = sorted((shared_data / "faces" / "celebrities").glob("img*.jpg"))[:12]
    good = [tsv_line(f"m.0test{i % 3}", i, 0, p.read_bytes()) for i, p in enumerate(photos)]
    truncated = "\t".join(good[0].split("\t")[:4])  # a line cut short: fewer than 7 fields
    bad_base64 = tsv_line("m.0bad", 99, 1, b"x").rsplit("\t", 1)[0] + "\t%%%not-base64%%%"
    path = tmp_path / "FaceImageCroppedWithAlignment.tsv"
    path.write_text("\n".join(good[:5] + [truncated] + good[5:] + [bad_base64]) + "\n")

    # Small ranges force many parallel read tasks over one file.
    rows = read_msceleb_tsv(str(path), range_bytes=200_000).take_all()

    assert len(rows) == len(good) + 2
    by_name = {r["image_name"]: r for r in rows}
    for i, photo in enumerate(photos):
        row = by_name[f"m.0test{i % 3}_{i}-FaceId-0.jpg"]
        assert row["identity"] == f"m.0test{i % 3}"
        assert row["data"] == photo.read_bytes()
        assert row["reject_reason"] is None
    reasons = sorted(r["reject_reason"] for r in rows if r["reject_reason"])
    assert reasons == sorted([RejectReason.TRUNCATED_ROW.value, RejectReason.BAD_BASE64.value])
    assert all("@" in r["source"] for r in rows)  # file@offset points at the line


def test_missing_tsv_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        read_msceleb_tsv(str(tmp_path / "nope.tsv"))
