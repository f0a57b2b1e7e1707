"""Progress lines of long row-by-row work, and the row totals they are measured against."""

from __future__ import annotations

import base64
import itertools
import shutil
import time

import pytest

import pipeline.progress
from pipeline.corpus.build import build_version
from pipeline.corpus.config import CorpusBuildConfig
from pipeline.progress import RowProgress, progress_line
from pipeline.sources.image_folder import image_folder_source
from pipeline.sources.msceleb_tsv import MsCelebTsvDatasource, encode_face_rectangle


def test_line_gives_share_rate_and_time_left() -> None:
    line = progress_line("build v1", 250, 1000, 10.0)
    assert line == "[facs] build v1: 250 / 1,000 rows (25%), 25 rows/s, ETA 30s"
    assert "/ ~1,000 rows" in progress_line("build v1", 250, 1000, 10.0, estimated=True)
    assert progress_line("x", 120_000, 1_000_000, 60.0).endswith("2,000 rows/s, ETA 7m20s")
    assert "ETA 10h00m" in progress_line("x", 1, 36_001, 1.0)


def test_line_without_a_total_or_past_it_gives_no_eta() -> None:
    assert progress_line("ingest", 42, None, 2.0) == "[facs] ingest: 42 rows, 21 rows/s"
    over = progress_line("build", 1100, 1000, 10.0, estimated=True)
    assert "(100%)" in over and "finishing" in over and "ETA" not in over


def test_reporter_prints_periodically_from_the_count_and_stops() -> None:
    counter = itertools.count(100, 100)
    printed: list[str] = []
    with RowProgress("work", lambda: next(counter), 1000, every=0.05, emit=printed.append) as p:
        deadline = time.monotonic() + 30  # a reporter that never prints fails, not hangs
        while len(p.lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(p.lines) >= 3
    settled = len(printed)
    assert printed[:3] == p.lines[:3]
    assert [line.split(": ")[1].split(" ")[0] for line in printed[:3]] == ["100", "200", "300"]
    assert all(line.startswith("[facs] work: ") and "/ 1,000 rows" in line for line in printed)
    time.sleep(0.2)
    assert len(printed) == settled  # nothing after the block ends


def test_a_failing_count_skips_lines_without_stopping_the_work() -> None:
    def broken() -> int:
        raise RuntimeError("actor gone")

    with RowProgress("work", broken, 10, every=0.01) as p:
        time.sleep(0.1)
    assert p.lines == []


def _tsv_line(k: int) -> str:
    data = base64.b64encode(b"x" * (50 + k % 7)).decode()
    return "\t".join([f"m.{k}", "1", "u", "p", "0", encode_face_rectangle(0, 0, 1, 1), data])


def test_tsv_rows_are_exact_when_sampled_whole_and_estimated_otherwise(tmp_path) -> None:
    tsv = tmp_path / "a.tsv"
    tsv.write_text("".join(_tsv_line(k) + "\n" for k in range(2000)))
    source = MsCelebTsvDatasource([str(tsv)])
    exact = source.expected_rows()
    assert (exact.rows, exact.exact) == (2000, True)
    estimate = source.expected_rows(sample_bytes=4096)
    assert not estimate.exact
    assert abs(estimate.rows - 2000) <= 100
    both = MsCelebTsvDatasource([str(tsv), str(tsv)]).expected_rows(sample_bytes=4096)
    assert both.rows == 2 * estimate.rows


def test_image_folder_rows_count_image_files_only(tmp_path, shared_data) -> None:
    photos = sorted((shared_data / "faces" / "celebrities").glob("img*.jpg"))[:3]
    for photo in photos:
        shutil.copy(photo, tmp_path / photo.name)
    (tmp_path / "notes.txt").write_text("not an input")
    assert image_folder_source(str(tmp_path)).expected_rows().rows == 3


def test_a_build_reports_its_progress(tmp_path, shared_data, ray_local, monkeypatch, capsys):
    monkeypatch.setattr(pipeline.progress, "PROGRESS_EVERY", 0.2)
    photos = sorted((shared_data / "faces" / "celebrities").glob("img*.jpg"))[:12]
    folder = tmp_path / "photos" / "someone"
    folder.mkdir(parents=True)
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    entry = build_version(
        CorpusBuildConfig(corpus=str(tmp_path / "c"), images=str(tmp_path / "photos")),
        append=False,
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if "build v1:" in line]
    assert entry.rows_read == 12
    assert lines, "no progress line during the build"
    assert all(line.startswith("[facs] build v1: ") and "/ 12 rows" in line for line in lines)


@pytest.mark.parametrize("seconds, text", [(59, "59s"), (61, "1m01s"), (3660, "1h01m")])
def test_durations_read_naturally(seconds: int, text: str) -> None:
    assert pipeline.progress.format_duration(seconds) == text
