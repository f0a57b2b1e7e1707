"""A labeler's OpenFace FeatureExtraction CSVs of the DISFA videos, read per frame."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from pipeline.disfa.labeler_outputs import SCORED_COLUMN, read_labeler_outputs
from pipeline.disfa.layout import DisfaLayoutError
from pipeline.synth.noisy_labeler import openface_au_header
from pipeline.vocabulary import DISFA_AUS

SHARED_CSV = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "faces"
    / "video"
    / "OpenFace_Test.csv"
)


def test_a_real_openface_csv_in_the_older_header_style_reads_frame_by_frame(tmp_path):
    if not SHARED_CSV.exists():
        pytest.skip(f"{SHARED_CSV} not present (../shared holds the real test data)")
    folder = tmp_path / "openface"
    folder.mkdir()
    shutil.copy(SHARED_CSV, folder / "RightVideoSN001_comp.csv")
    table = read_labeler_outputs(str(folder), ["SN001"])
    with open(SHARED_CSV, newline="") as handle:
        rows = [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(handle)]
    assert table.num_rows == len(rows)
    first = table.slice(0, 1).to_pylist()[0]
    assert first["image_name"] == f"RightVideoSN001_{int(rows[0]['frame']) - 1:08d}.jpg"
    for row, read in zip(rows, table.to_pylist(), strict=True):
        tracked = row["success"] == "1"
        assert read[SCORED_COLUMN] == tracked
        for au in DISFA_AUS:
            expected = int(float(row[f"{au}_c"])) if tracked else 0
            assert read[au] == expected, (row["frame"], au)


def _write(path: Path, rows: list[tuple[int, int, dict[str, int]]]) -> None:
    header = ["frame", "face_id", "timestamp", "confidence", "success", *openface_au_header()]
    lines = [",".join(header)]
    for frame, success, present in rows:
        values = []
        for name in openface_au_header():
            au, kind = name.rsplit("_", 1)
            values.append(f"{present.get(au, 0):.1f}" if kind == "c" else "0.00")
        lines.append(",".join([str(frame), "0", "0.0", "0.95", str(success), *values]))
    path.write_text("\n".join(lines) + "\n")


def test_a_tracking_failure_reads_absent_for_every_au_and_unscored(tmp_path):
    _write(
        tmp_path / "RightVideoSN002_comp.csv",
        [(1, 1, {"AU12": 1}), (2, 0, {"AU12": 1, "AU25": 1}), (3, 1, {"AU25": 1})],
    )
    table = read_labeler_outputs(str(tmp_path), ["SN002"]).to_pylist()
    assert [r["image_name"] for r in table] == [f"RightVideoSN002_{i:08d}.jpg" for i in range(3)]
    assert [r[SCORED_COLUMN] for r in table] == [True, False, True]
    assert [(r["AU12"], r["AU25"]) for r in table] == [(1, 0), (0, 0), (0, 1)]


def test_a_subject_without_a_csv_is_an_error_naming_where_it_was_looked_for(tmp_path):
    _write(tmp_path / "RightVideoSN002_comp.csv", [(1, 1, {})])
    with pytest.raises(DisfaLayoutError, match="RightVideoSN003_comp.csv"):
        read_labeler_outputs(str(tmp_path), ["SN002", "SN003"])
    with pytest.raises(DisfaLayoutError, match="no such folder"):
        read_labeler_outputs(str(tmp_path / "missing"), ["SN002"])
