"""DISFA ingestion: release layout, label files, frame-range decoding, faces, rejects, folds, cache."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.disfa import (
    PAPER_TEST_FOLDS,
    DisfaCacheError,
    DisfaConfig,
    DisfaFrames,
    DisfaLayoutError,
    FoldError,
    cache_key,
    make_folds,
    positive_counts,
    prepare_disfa,
    read_fold_csvs,
    read_subject_labels,
)
from pipeline.disfa import ingest as disfa_ingest
from pipeline.disfa.frames import read_frame_range
from pipeline.disfa.labels import fold_subjects
from pipeline.disfa.layout import FileStamp
from pipeline.faces import FaceConfig, FaceProcessor, crop_square_face
from pipeline.images import encode_jpeg
from pipeline.rejects import RejectReason
from pipeline.storage import Location
from pipeline.vocabulary import DISFA_AUS, au_number

SHARED = Path(__file__).resolve().parents[2] / "shared"
#: Small frames keep the Haar scans cheap; the test video's face stays far above the minimum size.
FRAME_SIZE = (320, 180)
#: Video frames (from single_face.mp4 / no_face.mp4) and label-file frames of the tiny world.
SN001_FACES, SN001_NO_FACES, SN001_LABELLED = 24, 8, 30  # video 2 frames longer than its labels
SN002_FACES, SN002_LABELLED = 20, 25  # labels 5 frames longer than the video


@pytest.fixture(scope="module")
def shared() -> Path:
    """../shared/data next to the project root; skip when it is absent."""
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(
            f"real test data not found at {data} (the ../shared folder next to the project)"
        )
    return data


def known_intensity(frame: int, au_index: int) -> int:
    """The intensity the tiny world's label files give AU ``au_index`` at 1-based ``frame``."""
    return (frame + au_index) % 6


def video_frames(path: Path, start: int, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames, index = [], 0
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        if index >= start:
            frames.append(cv2.resize(frame, FRAME_SIZE, interpolation=cv2.INTER_AREA))
        index += 1
    capture.release()
    assert len(frames) == count, f"{path} has fewer than {start + count} frames"
    return frames


def write_avi(path: Path, frames: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20, FRAME_SIZE)
    for frame in frames:
        writer.write(frame)
    writer.release()


def write_labels(root: Path, subject: str, frames: int) -> None:
    for k, au in enumerate(DISFA_AUS):
        path = root / "ActionUnit_Labels" / subject / f"{subject}_au{au_number(au)}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{f},{known_intensity(f, k)}\n" for f in range(1, frames + 1)))


@pytest.fixture(scope="module")
def tiny_disfa(tmp_path_factory, shared) -> Path:
    """Two subjects' right-camera MJPG AVIs made from the real test videos, with label files."""
    root = tmp_path_factory.mktemp("disfa")
    videos = shared / "faces" / "video"
    sn001 = video_frames(videos / "single_face.mp4", 0, SN001_FACES)
    sn001 += video_frames(videos / "no_face.mp4", 0, SN001_NO_FACES)
    write_avi(root / "Videos_RightCamera" / "RightVideoSN001_comp.avi", sn001)
    sn002 = video_frames(videos / "single_face.mp4", SN001_FACES, SN002_FACES)
    write_avi(root / "Videos_RightCamera" / "RightVideoSN002_comp.avi", sn002)
    write_labels(root, "SN001", SN001_LABELLED)
    write_labels(root, "SN002", SN002_LABELLED)
    # Another camera's video and an unrelated file are not inputs of a right-camera read.
    write_avi(root / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi", sn002[:3])
    (root / "Videos_RightCamera" / "README.txt").write_text("not a video")
    return root


def tiny_config(root: Path, cache: Path, **options) -> DisfaConfig:
    return DisfaConfig(
        root=str(root),
        cache=str(cache),
        frames_per_task=7,  # SN001's 32 frames span 5 read tasks
        frames_per_block=4,
        batch_size=8,
        workers=2,
        **options,
    )


@pytest.fixture(scope="module")
def ingested(tiny_disfa, tmp_path_factory, ray_local) -> tuple[DisfaConfig, DisfaFrames]:
    config = tiny_config(tiny_disfa, tmp_path_factory.mktemp("cache"))
    return config, prepare_disfa(config)


def all_rows(frames: DisfaFrames, columns: list[str]) -> list[dict]:
    rows = []
    for status in ("accepted", "rejected"):
        rows += frames.table(columns=columns, status=status).to_pylist()
    return sorted(rows, key=lambda r: (r["subject"], r["frame"]))


# --- the paper's released fold CSVs ----------------------------------------------------------


def test_paper_folds_are_the_subjects_of_the_released_fold_csvs(shared):
    for k, subjects in enumerate(PAPER_TEST_FOLDS, start=1):
        table = read_fold_csvs([str(shared / "facs_release" / f"fold{k}_test.csv")])
        assert fold_subjects(table) == sorted(subjects)


def test_fold_csv_positive_counts_equal_an_independent_count(shared):
    paths = [shared / "facs_release" / f"fold{k}_test.csv" for k in (1, 2, 3)]
    expected = dict.fromkeys(DISFA_AUS, 0)
    lines = 0
    for path in paths:
        with open(path, newline="") as handle:
            for row in csv.reader(handle):
                lines += 1
                for k, au in enumerate(DISFA_AUS):
                    expected[au] += int(row[2 + k])  # image, rect, then the 12 AUs
    table = read_fold_csvs([str(p) for p in paths])
    assert table.num_rows == lines == 130_814
    assert positive_counts(table) == expected


# --- label files -------------------------------------------------------------------------------


def test_missing_label_file_is_an_error_naming_its_path(tmp_path):
    write_labels(tmp_path, "SN003", 5)
    missing = tmp_path / "ActionUnit_Labels" / "SN003" / "SN003_au15.txt"
    missing.unlink()
    with pytest.raises(DisfaLayoutError, match="SN003_au15.txt: label file not found"):
        read_subject_labels(str(tmp_path), "SN003")


def test_unparsable_label_line_is_an_error_naming_file_and_line(tmp_path):
    write_labels(tmp_path, "SN003", 5)
    path = tmp_path / "ActionUnit_Labels" / "SN003" / "SN003_au4.txt"
    path.write_text("1,0\n2,1\n3;2\n")
    with pytest.raises(DisfaLayoutError, match=r"SN003_au4.txt:3: expected 'frame,intensity'"):
        read_subject_labels(str(tmp_path), "SN003")
    path.write_text("1,0\n2,7\n")
    with pytest.raises(DisfaLayoutError, match=r"SN003_au4.txt:2: .*intensity 0-5"):
        read_subject_labels(str(tmp_path), "SN003")


# --- frame ranges ------------------------------------------------------------------------------


@pytest.mark.parametrize("seek", ["seek", "grab"])
def test_frame_ranges_are_the_frames_of_a_sequential_decode(tiny_disfa, seek):
    path = str(tiny_disfa / "Videos_RightCamera" / "RightVideoSN001_comp.avi")
    sequential = [gray for _, gray in read_frame_range(path, 0, None)]
    assert len(sequential) == SN001_FACES + SN001_NO_FACES
    for start in (5, 14, 30, 32, 40):
        got = list(read_frame_range(path, start, start + 7, seek=seek))
        assert [i for i, _ in got] == list(range(start, min(start + 7, len(sequential))))
        for index, gray in got:
            assert np.array_equal(gray, sequential[index])


# --- folds -------------------------------------------------------------------------------------


def test_paper_folds_keep_present_subjects_and_never_mix():
    present = ["SN001", "SN002", "SN003", "SN005", "SN008", "SN017", "SN021"]
    folds = make_folds(present, scheme="paper", seed=3, val_subjects_per_fold=1)
    assert [f.test_subjects for f in folds] == [
        ("SN002", "SN005"),
        ("SN001", "SN003"),
        ("SN008", "SN017", "SN021"),
    ]
    for fold in folds:
        assert len(fold.val_subjects) == 1
        assert set(fold.val_subjects) | set(fold.train_subjects) == set(present) - set(
            fold.test_subjects
        )
        assert not set(fold.train_subjects) & set(fold.test_subjects)
        assert not set(fold.val_subjects) & (set(fold.train_subjects) | set(fold.test_subjects))


def test_paper_fold_without_a_present_subject_is_an_error():
    with pytest.raises(FoldError, match=r"paper fold\(s\) \[3\]"):
        make_folds(["SN001", "SN002", "SN003"], scheme="paper", val_subjects_per_fold=0)


def test_seeded_folds_partition_the_subjects_reproducibly():
    subjects = [f"SN{n:03d}" for n in range(1, 14)]
    folds = make_folds(subjects, scheme="seeded", seed=7, val_subjects_per_fold=2)
    tests = [set(f.test_subjects) for f in folds]
    assert sorted(s for t in tests for s in t) == subjects  # every subject tested exactly once
    assert sorted(len(t) for t in tests) == [4, 4, 5]
    for fold in folds:
        assert not set(fold.train_subjects) & set(fold.test_subjects)
        assert set(fold.val_subjects) <= set(subjects) - set(fold.test_subjects)
    assert make_folds(subjects, scheme="seeded", seed=7, val_subjects_per_fold=2) == folds
    assert make_folds(subjects, scheme="seeded", seed=8, val_subjects_per_fold=2) != folds


# --- cache key ---------------------------------------------------------------------------------


def test_cache_key_follows_what_decides_the_rows_not_the_speed():
    inputs = [FileStamp("/d/Videos_RightCamera/RightVideoSN001_comp.avi", 100, 1)]
    base = cache_key(DisfaConfig(root="/d"), inputs)
    assert cache_key(DisfaConfig(root="/d", workers=7, frames_per_task=3), inputs) == base
    assert cache_key(DisfaConfig(root="/d", threshold=3), inputs) != base
    assert cache_key(DisfaConfig(root="/d", face=FaceConfig(margin=0.3)), inputs) != base
    touched = [FileStamp(inputs[0].uri, 100, 2)]
    assert cache_key(DisfaConfig(root="/d"), touched) != base


# --- Ray ingestion of the tiny video layout ----------------------------------------------------


def test_rows_read_equal_accepted_plus_rejected(ingested):
    _, frames = ingested
    manifest = frames.manifest
    decoded = SN001_FACES + SN001_NO_FACES + SN002_FACES
    assert manifest.rows_read == decoded
    assert manifest.accepted + manifest.rejected == decoded
    assert frames.table().num_rows == manifest.accepted
    assert frames.table(status="rejected").num_rows == manifest.rejected


def test_one_row_per_frame_in_frame_order(ingested):
    _, frames = ingested
    rows = all_rows(frames, ["subject", "frame", "image_name"])
    sn001 = [r for r in rows if r["subject"] == "SN001"]
    sn002 = [r for r in rows if r["subject"] == "SN002"]
    assert [r["frame"] for r in sn001] == list(range(SN001_FACES + SN001_NO_FACES))
    assert [r["frame"] for r in sn002] == list(range(SN002_FACES))
    assert sn001[3]["image_name"] == "RightVideoSN001_00000003.jpg"


def test_faces_are_those_of_the_frames_at_their_index(ingested, tiny_disfa):
    """Each cached face is the crop of the frame a sequential decode finds at that index, so
    every read task started exactly where it should."""
    _, frames = ingested
    path = str(tiny_disfa / "Videos_RightCamera" / "RightVideoSN001_comp.avi")
    sequential = [gray for _, gray in read_frame_range(path, 0, None)]
    processor = FaceProcessor(FaceConfig())
    cached = {r["frame"]: r["face"] for r in frames.table(["SN001"]).to_pylist()}
    assert set(cached) == set(range(SN001_FACES))
    for index in (0, 6, 7, 13, 14, 23):
        box = processor.detect_faces(sequential[index])[0]
        expected = crop_square_face(sequential[index], box, 0.2, 64).tobytes()
        assert cached[index] == expected
        assert len(cached[index]) == 64 * 64


def test_labels_are_intensity_at_or_above_two(ingested):
    _, frames = ingested
    intensity_columns = [f"{au}_intensity" for au in DISFA_AUS]
    rows = frames.table(columns=["subject", "frame", *DISFA_AUS, *intensity_columns]).to_pylist()
    assert rows
    for row in rows:
        for k, au in enumerate(DISFA_AUS):
            intensity = known_intensity(row["frame"] + 1, k)  # label files count from 1
            assert row[f"{au}_intensity"] == intensity
            assert row[au] == int(intensity >= 2)


def test_no_face_and_unlabelled_frames_are_counted_rejects(ingested):
    _, frames = ingested
    rejected = {
        (r["subject"], r["frame"]): r["reject_reason"]
        for r in frames.table(
            columns=["subject", "frame", "reject_reason", "face"], status="rejected"
        ).to_pylist()
    }
    no_face = {("SN001", f): RejectReason.NO_FACE.value for f in range(SN001_FACES, SN001_LABELLED)}
    no_label = {
        ("SN001", f): RejectReason.NO_LABEL.value
        for f in range(SN001_LABELLED, SN001_FACES + SN001_NO_FACES)
    }
    assert rejected == no_face | no_label
    assert frames.manifest.reject_counts == {"no face": len(no_face), "no label": len(no_label)}
    assert frames.manifest.labels_without_frames == {"SN002": SN002_LABELLED - SN002_FACES}


def test_second_call_returns_the_cache_without_decoding(ingested, monkeypatch):
    config, frames = ingested

    def no_decoding(*args, **kwargs):
        raise AssertionError("the videos were decoded again")

    monkeypatch.setattr(disfa_ingest, "read_video_frames", no_decoding)
    again = prepare_disfa(config)
    assert again.uri == frames.uri
    assert again.manifest.created == frames.manifest.created
    assert again.manifest.accepted == frames.manifest.accepted


def test_dataset_gives_the_frames_of_the_chosen_subjects(ingested):
    _, frames = ingested
    assert frames.subjects() == ["SN001", "SN002"]
    rows = frames.dataset(["SN002"]).select_columns(["subject", "frame"]).take_all()
    assert sorted(r["frame"] for r in rows) == list(range(SN002_FACES))
    assert {r["subject"] for r in rows} == {"SN002"}
    with pytest.raises(DisfaCacheError, match="SN009"):
        frames.dataset(["SN009"])


def test_folds_over_the_ingested_subjects_never_mix(ingested):
    _, frames = ingested
    folds = make_folds(frames.subjects(), scheme="seeded", seed=0, val_subjects_per_fold=0, folds=2)
    assert sorted(s for f in folds for s in f.test_subjects) == ["SN001", "SN002"]
    for fold in folds:
        train = frames.table(list(fold.train_subjects), columns=["subject"])
        test = frames.table(list(fold.test_subjects), columns=["subject"])
        assert not set(train["subject"].to_pylist()) & set(test["subject"].to_pylist())
    with pytest.raises(FoldError, match="fold"):  # 2 subjects cannot fill the paper's 3 folds
        make_folds(frames.subjects(), scheme="paper", val_subjects_per_fold=0)


# --- the released frames layout ----------------------------------------------------------------


def test_frame_images_with_fold_csvs(tmp_path, shared, ray_local):
    images = tmp_path / "frames"
    images.mkdir()
    faces = video_frames(shared / "faces" / "video" / "single_face.mp4", 0, 4)
    empty = video_frames(shared / "faces" / "video" / "no_face.mp4", 0, 1)
    names = [f"RightVideoSN005_{i:08d}.jpg" for i in range(4)]
    for name, frame in zip(names, faces, strict=True):
        (images / name).write_bytes(encode_jpeg(frame))
    (images / "RightVideoSN005_00000004.jpg").write_bytes(encode_jpeg(empty[0]))
    (images / "RightVideoSN007_00000000.jpg").write_bytes(encode_jpeg(faces[0]))  # not in the CSV
    (images / "LeftVideoSN005_00000000.jpg").write_bytes(encode_jpeg(faces[0]))  # other camera
    shutil.copy(images / names[0], images / "snapshot.jpg")  # not a DISFA frame name
    lines = [
        f'RightVideoSN005_{i:08d}.jpg,"(0,0,120,120)",'
        + ",".join(str((i + k) % 2) for k in range(12))
        for i in range(6)  # frame 5 has a label but no image
    ]
    (tmp_path / "fold1_test.csv").write_text("\n".join(lines) + "\n")
    config = DisfaConfig(
        root=str(images),
        layout="frames",
        fold_csvs=[str(tmp_path / "fold1_test.csv")],
        cache=str(tmp_path / "cache"),
        workers=1,
    )
    frames = prepare_disfa(config)
    manifest = frames.manifest
    assert manifest.rows_read == 6 and manifest.accepted == 4
    assert manifest.reject_counts == {"no face": 1, "no label": 1}
    assert manifest.skipped_files == 2
    assert manifest.labels_without_frames == {"SN005": 1}
    for row in frames.table().to_pylist():
        assert row["subject"] == "SN005" and row["camera"] == "right"
        assert [row[au] for au in DISFA_AUS] == [(row["frame"] + k) % 2 for k in range(12)]
        assert row[f"{DISFA_AUS[0]}_intensity"] is None


# --- the synthetic DISFA world -----------------------------------------------------------------


@pytest.mark.slow
def test_synthetic_world_left_camera(tmp_path, ray_local):
    synth = pytest.importorskip("pipeline.synth")
    if not hasattr(synth, "generate_disfa"):
        pytest.skip("pipeline.synth has no generate_disfa yet")
    world = synth.generate_disfa(
        str(tmp_path / "world"), subjects=3, frames=6, seed=1, frame_size=(240, 240), cameras="both"
    )
    config = DisfaConfig(
        root=world.out, camera="left", cache=str(tmp_path / "cache"), frames_per_task=4, workers=2
    )
    frames = prepare_disfa(config)
    assert frames.manifest.rows_read == 3 * 6
    with open(world.truth_csv, newline="") as handle:
        truth = {
            (row["video"][len("RightVideo") :].split("_")[0], int(row["frame"]) - 1): row
            for row in csv.DictReader(handle)
        }
    rows = frames.table().to_pylist()
    assert rows
    for row in rows:
        assert row["camera"] == "left" and row["image_name"].startswith("LeftVideoSN")
        expected = truth[(row["subject"], row["frame"])]
        assert [row[au] for au in DISFA_AUS] == [int(int(expected[au]) >= 2) for au in DISFA_AUS]
    folds = make_folds(frames.subjects(), scheme="paper", val_subjects_per_fold=1)
    assert sorted(s for f in folds for s in f.test_subjects) == sorted(world.subjects)
    for fold in folds:
        assert len(fold.test_subjects) == 1 and len(fold.train_subjects) == 1


# --- S3 ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_videos_and_cache_on_s3(tiny_disfa, s3_bucket, ray_local):
    """Read tasks copy the S3 video to a local file for OpenCV; the cache lives on S3 too."""
    root = f"s3://{s3_bucket}/disfa"
    for path in tiny_disfa.rglob("*"):
        relative = path.relative_to(tiny_disfa).as_posix()
        if path.is_file() and ("SN002" in relative or relative.endswith("README.txt")):
            Location.of(f"{root}/{relative}").write_bytes(path.read_bytes())
    config = DisfaConfig(
        root=root, cache=f"s3://{s3_bucket}/cache", frames_per_task=8, batch_size=8, workers=2
    )
    frames = prepare_disfa(config)
    assert frames.uri.startswith(f"s3://{s3_bucket}/cache/disfa-")
    assert frames.manifest.rows_read == SN002_FACES
    assert sorted(frames.table(columns=["frame"])["frame"].to_pylist()) == list(range(SN002_FACES))
    assert DisfaFrames.open(frames.uri).manifest == frames.manifest
