"""The synthetic face world: deterministic files in the real formats, calibrated AUs, visible AUs."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import struct
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.bios import parse_biography
from pipeline.faces import FaceBox, crop_square_face
from pipeline.labels.openface import read_openface_image_csvs, read_openface_sequence_csv
from pipeline.names import image_key
from pipeline.sources.msceleb_tsv import parse_tsv_line
from pipeline.synth import au_sampling, generate_celeb_from_config, generate_disfa_from_config
from pipeline.synth.au_sampling import (
    CELEB_PHOTO_RATES,
    DISFA_RATES,
    OPENFACE_MSCELEB_RATES,
    IntensityScale,
    person_offsets,
    sample_photo_latents,
    sample_video_latents,
)
from pipeline.synth.celeb_world import TRUTH_NAME, TSV_NAME, generate_celeb, shard_bounds
from pipeline.synth.config import SynthCelebConfig, SynthDisfaConfig
from pipeline.synth.disfa_world import (
    DEFAULT_STRIDE,
    DISFA_FOLDS,
    generate_disfa,
    label_file_name,
    labeler_reading,
    pick_subjects,
    presence_counts,
    subject_session,
)
from pipeline.synth.identity import sample_identity
from pipeline.synth.noisy_labeler import NoisyLabeler, openface_sequence_csv
from pipeline.synth.people import fake_mid
from pipeline.synth.render import AU_INDEX, RENDER_AUS, Scene, render_face, sample_scene
from pipeline.vocabulary import DISFA_AUS, PAPER_COMPARISON_AUS, REGIONS

HAAR = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
FRAMES = 8  # per DISFA video in the small test world


@pytest.fixture(scope="module")
def shared() -> Path:
    path = Path(__file__).resolve().parents[2] / "shared"
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path} (../shared next to the project root)")
    return path


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def celeb(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("celeb")
    summary = generate_celeb(str(out), people=5, images_per_person=3, seed=11, people_per_shard=2)
    assert summary.images == 15 and summary.shards == 3
    return out


@pytest.fixture(scope="module")
def disfa(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("disfa")
    generate_disfa(str(out), subjects=3, frames=FRAMES, seed=5, cameras="both")
    return out


def _tsv_rows(world: Path) -> list[list[str]]:
    return [line.split("\t") for line in (world / TSV_NAME).read_text().splitlines()]


def _decode(b64_jpeg: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(base64.b64decode(b64_jpeg), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "FaceData is not a JPEG OpenCV can decode"
    return image


def _detected(detector: cv2.CascadeClassifier, image: np.ndarray, box) -> bool:
    """Haar finds a face whose centre lies inside the generator's face box."""
    x, y, w, h = box
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    for dx, dy, dw, dh in detector.detectMultiScale(gray):
        cx, cy = dx + dw / 2, dy + dh / 2
        if x <= cx <= x + w and y <= cy <= y + h:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_celeb_world_whatever_the_sharding(celeb, tmp_path):
    again = tmp_path / "again"
    generate_celeb(str(again), people=5, images_per_person=3, seed=11, people_per_shard=5)
    assert _tree_hashes(again) == _tree_hashes(celeb)


def test_different_seed_gives_a_different_celeb_world(celeb, tmp_path):
    other = tmp_path / "other"
    generate_celeb(str(other), people=5, images_per_person=3, seed=12)
    a, b = _tree_hashes(celeb), _tree_hashes(other)
    assert a[TSV_NAME] != b[TSV_NAME]
    assert set(a) != set(b)  # different people, different file names


def test_same_seed_gives_byte_identical_disfa_world(disfa, tmp_path):
    again = tmp_path / "again"
    generate_disfa(str(again), subjects=3, frames=FRAMES, seed=5, cameras="both")
    assert _tree_hashes(again) == _tree_hashes(disfa)


@pytest.mark.slow
def test_ray_shards_write_the_same_bytes_as_one_process(celeb, tmp_path, ray_local):
    parallel = tmp_path / "ray"
    generate_celeb(str(parallel), people=5, images_per_person=3, seed=11, people_per_shard=2,
                   use_ray=True)  # fmt: skip
    assert _tree_hashes(parallel) == _tree_hashes(celeb)


# --------------------------------------------------------------------------------------------
# Celeb world files parse as the real formats
# --------------------------------------------------------------------------------------------


def test_tsv_rows_have_msceleb_columns_jpeg_and_a_face_rectangle_around_the_face(celeb):
    detector = cv2.CascadeClassifier(HAAR)
    rows = _tsv_rows(celeb)
    assert len(rows) == 15
    found = 0
    for number, row in enumerate(rows):
        assert len(row) == 7, f"line {number + 1}: {len(row)} columns, expected 7"
        mid, rank, image_url, page_url, face_id, rectangle, data = row
        assert re.fullmatch(r"m\.0[0-9bcdfghjklmnpqrstvwxyz_]{5}", mid)
        assert int(rank) >= 1 and face_id == "0"
        assert image_url.startswith("http") and page_url.startswith("http")
        raw = base64.b64decode(rectangle, validate=True)
        assert len(raw) == 16
        left, top, right, bottom = struct.unpack("<4f", raw)
        assert 0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0
        image = _decode(data)
        h, w = image.shape[:2]
        assert (w, h) == (256, 256)
        box = (left * w, top * h, (right - left) * w, (bottom - top) * h)
        assert box[2] >= 128, "faces are rendered at >= 128 px"
        found += _detected(detector, image, box)
        record = parse_tsv_line(("\t".join(row)).encode(), f"line {number + 1}")
        assert record["reject_reason"] is None and record["identity"] == mid
    assert found >= 14


def test_openface_csvs_have_openface_columns_and_match_the_images(celeb, shared):
    real = (shared / "data/faces/video/OpenFace_Test.csv").read_text().splitlines()[0]
    real_columns = [c.strip() for c in real.split(",")]
    real_aus = [c for c in real_columns if re.fullmatch(r"AU\d\d_[rc]", c)]
    stems = {image_key(row[0] + "_" + row[1] + "-FaceId-" + row[4]) for row in _tsv_rows(celeb)}
    csvs = sorted((celeb / "openface").glob("*.csv"))
    assert {p.stem for p in csvs} == stems
    for path in csvs:
        text = path.read_text()
        assert ", " not in text.splitlines()[0], "OpenFace 2.2 headers have no space after commas"
        frame = pd.read_csv(path)
        assert list(frame.columns) == ["face", "confidence", *real_aus]
        assert len(frame) == 1
        assert set(frame.filter(like="_c").iloc[0]) <= {0.0, 1.0}
    table = read_openface_image_csvs(str(celeb / "openface"))
    assert table.num_rows == 15 and table["label_reject"].null_count == 15


def test_truth_csv_has_one_row_per_image_and_presence_means_intensity_at_least_two(celeb):
    truth = pd.read_csv(celeb / TRUTH_NAME)
    assert len(truth) == 15 and truth["image_name"].is_unique
    for au in RENDER_AUS:
        assert ((truth[f"{au}_intensity"] >= 2).astype(int) == truth[au]).all()
        assert truth[f"{au}_intensity"].between(0, 5).all()
    assert set(truth["region"]) <= set(REGIONS) - {"unknown"}


def test_biographies_give_back_each_persons_gender_and_region(celeb):
    truth = pd.read_csv(celeb / TRUTH_NAME).drop_duplicates("identity")
    assert len(list((celeb / "Bios").glob("*.json"))) == 5
    for person in truth.itertuples():
        path = celeb / "Bios" / f"{person.identity[2:]}.json"
        bio = parse_biography(person.identity, path.read_bytes(), str(path))
        assert (bio.gender, bio.region) == (person.gender, person.region), bio


def test_biographies_have_the_release_json_shape(celeb, shared):
    with zipfile.ZipFile(shared / "data/facs_release/Bios.zip") as archive:
        name = next(n for n in archive.namelist() if n.endswith(".json"))
        real = json.loads(archive.read(name))
    ours = json.loads(next((celeb / "Bios").glob("*.json")).read_text())
    assert ours.keys() == real.keys()
    real_result, our_result = (
        real["itemListElement"][0]["result"],
        ours["itemListElement"][0]["result"],
    )
    # pipeline.bios.write_biography_json leaves out the release's optional "image" entry
    assert {"name", "description", "detailedDescription", "@id", "@type"} <= set(our_result)
    assert set(our_result) <= set(real_result)
    assert set(real_result["detailedDescription"]) == set(our_result["detailedDescription"])


def test_fake_mids_are_distinct_and_depend_on_the_seed():
    mids = {fake_mid(3, i) for i in range(20000)}
    assert len(mids) == 20000
    assert fake_mid(3, 0) != fake_mid(4, 0)


# --------------------------------------------------------------------------------------------
# DISFA world layout
# --------------------------------------------------------------------------------------------


def test_disfa_world_uses_real_subject_ids_from_every_fold(disfa):
    subjects = sorted(p.name for p in (disfa / "ActionUnit_Labels").iterdir())
    assert len(subjects) == 3
    for fold in DISFA_FOLDS:
        assert len(set(fold) & set(subjects)) == 1


def test_disfa_label_files_have_one_line_per_frame(disfa):
    for subject in (p.name for p in (disfa / "ActionUnit_Labels").iterdir()):
        for au in DISFA_AUS:
            path = disfa / label_file_name(subject, au)
            lines = path.read_text().splitlines()
            assert len(lines) == FRAMES, path
            for number, line in enumerate(lines, start=1):
                frame, intensity = line.split(",")
                assert int(frame) == number and 0 <= int(intensity) <= 5, f"{path}:{number}"
    assert not (disfa / "ActionUnit_Labels/SN001/SN001_au7.txt").exists()


def test_disfa_videos_open_with_the_configured_frames_and_two_views(disfa):
    for subject in (p.name for p in (disfa / "ActionUnit_Labels").iterdir()):
        frames = {}
        for camera in ("Right", "Left"):
            path = disfa / f"Videos_{camera}Camera/{camera}Video{subject}_comp.avi"
            capture = cv2.VideoCapture(str(path))
            assert capture.isOpened(), path
            assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
            images = []
            while True:
                ok, image = capture.read()
                if not ok:
                    break
                images.append(image)
            capture.release()
            assert len(images) == FRAMES and images[0].shape == (288, 360, 3)
            frames[camera] = images
        difference = np.abs(frames["Right"][0].astype(int) - frames["Left"][0].astype(int))
        assert difference.mean() > 5, "the left camera must see the face from another viewpoint"


def test_disfa_truth_matches_the_label_files_and_openface_csv_reads(disfa):
    truth = pd.read_csv(disfa / "truth.csv")
    assert len(truth) == 3 * FRAMES
    first = truth[truth["video"] == "RightVideoSN001_comp"]
    labels = pd.read_csv(disfa / label_file_name("SN001", "AU25"), header=None)
    assert first["AU25"].tolist() == labels[1].tolist()
    # Frames are every DEFAULT_STRIDE-th frame of one session, not consecutive ones.
    assert first["session_frame"].tolist() == [DEFAULT_STRIDE * t for t in range(FRAMES)]
    for camera in ("Right", "Left"):
        table = read_openface_sequence_csv(
            str(disfa / f"OpenFace/{camera}VideoSN001_comp.csv"), video_stem=f"{camera}VideoSN001"
        )
        assert table.num_rows == FRAMES


def test_right_camera_only_by_default_with_the_labelers_csvs(tmp_path):
    summary = generate_disfa(str(tmp_path / "d"), subjects=1, frames=2, seed=1)
    assert summary.videos == 1 and summary.openface_dir
    assert (tmp_path / "d/Videos_RightCamera/RightVideoSN002_comp.avi").is_file()
    assert not (tmp_path / "d/Videos_LeftCamera").exists()
    assert (tmp_path / "d/OpenFace/RightVideoSN002_comp.csv").is_file()


def test_labeler_failures_are_written_as_openface_writes_them():
    labels = NoisyLabeler(seed=0).label(
        np.random.default_rng(0), "SN001", np.zeros((3, len(RENDER_AUS))), in_the_wild=False
    )
    text = openface_sequence_csv(labels, 20.0, failed=np.array([False, True, False]))
    rows = [line.split(",") for line in text.splitlines()]
    header = rows[0]
    assert [row[header.index("success")] for row in rows[1:]] == ["1", "0", "1"]
    assert rows[2][header.index("AU12_c")] == "0.0"


def test_demo_sized_disfa_world_gives_every_fold_ten_positives_of_each_paper_au():
    """Labels only (no rendering): the demo's world, its folds, its validation subjects."""
    from pipeline.disfa.folds import make_folds
    from tune.demo_config import SCALES, DemoConfig

    config = DemoConfig()
    scale = config.resolved()
    seed = config.seed + 1  # the demo's DISFA seed
    subjects = pick_subjects(scale.disfa_subjects)
    counts = presence_counts(seed, subjects, scale.disfa_frames, scale.disfa_stride)
    folds = make_folds(subjects, val_subjects_per_fold=2)
    assert scale is not SCALES["tiny"] and all(len(f.val_subjects) >= 2 for f in folds)
    for fold in folds:
        for part in ("train_subjects", "test_subjects"):
            for au in PAPER_COMPARISON_AUS:
                total = sum(counts[s][au] for s in getattr(fold, part))
                assert total >= 10, (fold.index, part, au, total)


def test_strided_frames_are_nearly_independent_samples_of_the_session():
    consecutive = subject_session(3, "SN001", frames=400, stride=1).track
    strided = subject_session(3, "SN001", frames=400, stride=DEFAULT_STRIDE).track
    column = AU_INDEX["AU12"]

    def lag1(track: np.ndarray) -> float:
        x = track[:, column]
        return float(np.corrcoef(x[:-1], x[1:])[0, 1])

    assert lag1(consecutive) > 0.95 and lag1(strided) < 0.3


# --------------------------------------------------------------------------------------------
# AU rates, co-occurrence and time
# --------------------------------------------------------------------------------------------


def _photo_levels(rates: str, people: int, images: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = IntensityScale.for_rates(rates)
    offsets = person_offsets(rng, people)
    return np.concatenate(
        [scale.levels(sample_photo_latents(rng, offsets[i], images)) for i in range(people)]
    )


@pytest.mark.parametrize("table", ["celeb", "disfa"])
def test_photo_presence_rates_match_the_configured_rates(table):
    levels = _photo_levels(table, people=500, images=8)
    rates = au_sampling.rate_table(table)
    for au in RENDER_AUS:
        observed = (levels[:, AU_INDEX[au]] >= 2).mean()
        sd = np.sqrt(rates[au] * (1 - rates[au]) / 4000 * 2.5)  # person effect inflates variance
        assert abs(observed - rates[au]) < 4 * sd + 0.005, (au, observed, rates[au])


def test_disfa_video_tracks_match_disfa_rates_and_are_smooth():
    rng = np.random.default_rng(1)
    scale = IntensityScale.for_rates("disfa")
    tracks = [
        scale.continuous(sample_video_latents(rng, person_offsets(rng, 1)[0], 1500))
        for _ in range(120)
    ]
    levels = np.floor(np.concatenate(tracks) + 0.5)
    for au in DISFA_AUS:
        observed = (levels[:, AU_INDEX[au]] >= 2).mean()
        assert abs(observed - DISFA_RATES[au]) < 0.35 * DISFA_RATES[au] + 0.004, au
    step = np.mean([np.abs(np.diff(t[:, AU_INDEX["AU12"]])).mean() for t in tracks])
    shuffled = np.mean(
        [np.abs(np.diff(rng.permutation(t[:, AU_INDEX["AU12"]]))).mean() for t in tracks]
    )
    assert step < 0.2 * shuffled, "intensity must change smoothly from frame to frame"


def test_related_aus_co_occur():
    levels = _photo_levels("celeb", people=400, images=10) >= 2

    def given(a: str, b: str) -> float:
        return levels[levels[:, AU_INDEX[b]], AU_INDEX[a]].mean()

    assert given("AU12", "AU06") > CELEB_PHOTO_RATES["AU12"] + 0.3
    assert given("AU02", "AU01") > 3 * CELEB_PHOTO_RATES["AU02"]
    assert given("AU25", "AU26") > 0.8
    assert given("AU15", "AU12") < CELEB_PHOTO_RATES["AU15"]


# --------------------------------------------------------------------------------------------
# The noisy labeler
# --------------------------------------------------------------------------------------------


def _labelled(rates: str, noise: float, wild: bool, people: int = 600, images: int = 10):
    rng = np.random.default_rng(2)
    scale = IntensityScale.for_rates(rates)
    labeler = NoisyLabeler(noise=noise, seed=4)
    offsets = person_offsets(rng, people)
    truth, read = [], []
    for i in range(people):
        levels = scale.levels(sample_photo_latents(rng, offsets[i], images))
        truth.append(levels)
        read.append(labeler.label(rng, f"m.0p{i}", levels, in_the_wild=wild).presence)
    return np.concatenate(truth), np.concatenate(read)


def _f1(truth: np.ndarray, read: np.ndarray) -> float:
    tp = (truth & read).sum()
    return 2 * tp / max(truth.sum() + read.sum(), 1)


def test_labeler_at_noise_zero_is_exactly_the_truth():
    levels, read = _labelled("celeb", noise=0.0, wild=True, people=100)
    assert np.array_equal(read, (levels >= 2).astype(np.int8))


def test_default_labeler_f1_on_a_disfa_like_world_is_openface_like():
    levels, read = _labelled("disfa", noise=1.0, wild=False)
    f1 = [_f1(levels[:, AU_INDEX[au]] >= 2, read[:, AU_INDEX[au]] == 1) for au in DISFA_AUS]
    assert 0.35 <= np.mean(f1) <= 0.7, f1


def test_demo_disfa_labeler_scores_openface_2s_f1_on_the_folds():
    """The calibration target: the labeler's 8-AU F1 (per fold, then averaged) on the demo's
    DISFA world is OpenFace 2.0's 53.6 +- 5, failures counting as absent."""
    from tune.demo_config import DemoConfig

    config = DemoConfig()
    scale = config.resolved()
    seed, fold_f1 = config.seed + 1, []
    for fold in DISFA_FOLDS:
        truth, read = [], []
        for subject in fold:
            session = subject_session(seed, subject, scale.disfa_frames, scale.disfa_stride)
            labels, failed = labeler_reading(seed, session, config.label_noise)
            truth.append(session.levels >= 2)
            read.append(np.where(failed[:, None], 0, labels.presence) == 1)
        t, r = np.concatenate(truth), np.concatenate(read)
        fold_f1.append([_f1(t[:, AU_INDEX[au]], r[:, AU_INDEX[au]]) for au in PAPER_COMPARISON_AUS])
    assert abs(100 * np.mean(fold_f1) - 53.6) <= 5, np.mean(fold_f1, axis=0)


def test_wild_noise_scales_only_the_false_alarms_of_photos_in_the_wild():
    levels = np.zeros((4000, len(RENDER_AUS)))
    full, half = NoisyLabeler(seed=1), NoisyLabeler(seed=1, wild_noise=0.5)
    wild = [m.label(np.random.default_rng(0), "m.0x", levels, in_the_wild=True).presence.mean()
            for m in (full, half)]  # fmt: skip
    lab = [m.label(np.random.default_rng(0), "m.0x", levels, in_the_wild=False).presence
           for m in (full, half)]  # fmt: skip
    assert wild[1] < 0.75 * wild[0]
    assert np.array_equal(lab[0], lab[1])


def test_labeler_in_the_wild_reproduces_openface_msceleb_rates():
    levels, read = _labelled("celeb", noise=1.0, wild=True)
    for au in RENDER_AUS:
        assert abs(read[:, AU_INDEX[au]].mean() - OPENFACE_MSCELEB_RATES[au]) < 0.04, au


def test_some_resting_faces_read_as_au04():
    labeler = NoisyLabeler(noise=1.0, seed=4)
    rest = np.zeros((400, len(RENDER_AUS)))
    rng = np.random.default_rng(0)
    rates = [labeler.label(rng, f"m.0q{i}", rest, in_the_wild=False).presence[:, AU_INDEX["AU04"]].mean()
             for i in range(40)]  # fmt: skip
    assert max(rates) > 0.3 and min(rates) < 0.05  # biased people and unbiased people


# --------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------

#: Where FACS says each AU acts, as rows of the face between landmarks (fractions of the
#: eye-to-mouth distance above/below them) and the face's width: written from the anatomy.
UPPER = ("brow_top", "nose_tip")
REGIONS_BY_AU = {
    "AU01": ("forehead", "eyes"), "AU02": ("forehead", "eyes"), "AU04": ("forehead", "eyes"),
    "AU05": ("brows", "below_eyes"), "AU07": ("brows", "below_eyes"),
    "AU45": ("brows", "below_eyes"), "AU06": ("brows", "nose_tip"),
    "AU09": ("brows", "upper_lip"),
    **dict.fromkeys(["AU10", "AU12", "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU28"],
                    ("nose", "chin")),
    "AU26": ("nose", "below_chin"),
}  # fmt: skip


def _row_of(name: str, marks: dict, step: float) -> float:
    eye_y = (marks["left_eye"][1] + marks["right_eye"][1]) / 2
    rows = {
        "forehead": eye_y - 1.6 * step,
        "brows": eye_y - 0.8 * step,
        "eyes": eye_y + 0.25 * step,
        "below_eyes": eye_y + 0.45 * step,
        "nose": marks["nose_tip"][1] - 0.45 * step,
        "nose_tip": marks["nose_tip"][1] + 0.2 * step,
        "upper_lip": marks["mouth_centre"][1] - 0.1 * step,
        "chin": marks["chin"][1] + 0.15 * step,
        "below_chin": marks["chin"][1] + 0.8 * step,
    }
    return rows[name]


@pytest.mark.parametrize("au", RENDER_AUS)
def test_each_au_changes_pixels_only_in_its_facial_region_and_is_visible_at_64(au):
    rng = np.random.default_rng(3)
    identity = sample_identity(rng, "female", "S. Asia")
    scene = dataclasses.replace(sample_scene(rng), roll=0.0, yaw=0.0, shift_x=0.0, shift_y=0.0)
    rest = render_face(identity, {}, scene)
    moved = render_face(identity, {au: 3.0}, scene)
    diff = np.abs(rest.image.astype(int) - moved.image.astype(int)).max(axis=2)
    ys, xs = np.nonzero(diff > 3)
    assert len(ys) > 0, f"{au} changed nothing"
    marks = rest.landmarks
    step = marks["mouth_centre"][1] - (marks["left_eye"][1] + marks["right_eye"][1]) / 2
    top, bottom = (_row_of(name, marks, step) for name in REGIONS_BY_AU[au])
    left, right = rest.face_box[0], rest.face_box[0] + rest.face_box[2]
    assert ys.min() >= top and ys.max() <= bottom, (au, ys.min(), ys.max(), top, bottom)
    assert xs.min() >= left and xs.max() <= right, (au, xs.min(), xs.max(), left, right)
    small_rest, small_moved = (
        crop_square_face(
            cv2.cvtColor(r.image, cv2.COLOR_BGR2GRAY), FaceBox(*r.face_box, 1.0), 0.2, 64
        ).astype(int)
        for r in (rest, moved)
    )
    assert (np.abs(small_rest - small_moved) >= 8).sum() >= 6, f"{au} not visible at 64x64"


def test_haar_cascade_finds_rendered_photo_faces():
    detector = cv2.CascadeClassifier(HAAR)
    rng = np.random.default_rng(9)
    scale = IntensityScale.for_rates("celeb")
    hits = 0
    for i in range(40):
        identity = sample_identity(rng, ("female", "male")[i % 2], REGIONS[i % 7])
        levels = scale.levels(rng.standard_normal(len(RENDER_AUS)))
        rendered = render_face(identity, levels.astype(float), sample_scene(rng))
        image = cv2.imdecode(np.frombuffer(cv2.imencode(".jpg", rendered.image)[1], np.uint8), 1)
        hits += _detected(detector, image, rendered.face_box)
    assert hits / 40 >= 0.95


def test_haar_cascade_finds_faces_in_disfa_video_frames(disfa):
    detector = cv2.CascadeClassifier(HAAR)
    truth = pd.read_csv(disfa / "truth.csv")
    hits = total = 0
    for video, rows in truth.groupby("video"):
        capture = cv2.VideoCapture(str(disfa / "Videos_RightCamera" / f"{video}.avi"))
        for row in rows.itertuples():
            ok, image = capture.read()
            assert ok
            hits += _detected(detector, image, (row.face_x, row.face_y, row.face_w, row.face_h))
            total += 1
        capture.release()
    assert hits / total >= 0.95


def test_render_rejects_unknown_aus():
    identity = sample_identity(np.random.default_rng(0), "male", "S. Asia")
    with pytest.raises(ValueError, match="AU99"):
        render_face(identity, {"AU99": 2.0}, Scene())


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [SynthCelebConfig, SynthDisfaConfig])
def test_every_config_option_has_help_text(config):
    for option in dataclasses.fields(config):
        assert option.metadata.get("help"), f"{config.__name__}.{option.name} has no help"


def test_noise_free_world_from_config_has_openface_labels_equal_to_the_truth(tmp_path):
    config = SynthCelebConfig(out=str(tmp_path), people=2, images_per_person=2, seed=3, noise=0.0)
    summary = generate_celeb_from_config(config)
    assert summary.images == 4
    labels = read_openface_image_csvs(summary.openface_dir).to_pandas()
    labels = labels.set_index(labels["image_name"] + ".jpg").sort_index()
    truth = pd.read_csv(summary.truth_csv).set_index("image_name").sort_index()
    aus = [au for au in RENDER_AUS if au != "AU45"]
    assert (labels[aus].to_numpy() == truth[aus].to_numpy()).all()


def test_disfa_world_from_config_and_bad_options(tmp_path):
    summary = generate_disfa_from_config(
        SynthDisfaConfig(out=str(tmp_path / "d"), subjects=1, frames=2, seed=1, cameras="both")
    )
    assert summary.subjects == ("SN002",) and summary.videos == 2
    with pytest.raises(ValueError, match="cameras"):
        SynthDisfaConfig(out="x", cameras="left")
    with pytest.raises(ValueError, match="subjects must be 1..27"):
        generate_disfa(str(tmp_path / "x"), subjects=28, seed=1)
    with pytest.raises(ValueError, match="people"):
        generate_celeb(str(tmp_path / "y"), people=0, images_per_person=1, seed=1)


@pytest.mark.slow
def test_worlds_can_be_written_to_s3(s3_bucket, celeb, tmp_path):
    from pipeline.storage import Location

    generate_celeb(f"s3://{s3_bucket}/celeb", people=5, images_per_person=3, seed=11,
                   people_per_shard=2)  # fmt: skip
    remote = Location.of(f"s3://{s3_bucket}/celeb")
    assert remote.join(TSV_NAME).read_bytes() == (celeb / TSV_NAME).read_bytes()
    assert not remote.join("_shards").exists()
    generate_disfa(f"s3://{s3_bucket}/disfa", subjects=1, frames=2, seed=1)
    local = tmp_path / "disfa"
    generate_disfa(str(local), subjects=1, frames=2, seed=1)
    video = "Videos_RightCamera/RightVideoSN002_comp.avi"
    assert (
        Location.of(f"s3://{s3_bucket}/disfa/{video}").read_bytes() == (local / video).read_bytes()
    )


def test_shards_of_a_long_tailed_world_hold_about_equal_images_and_every_person_once():
    counts = [100] * 30 + [20] * 90 + [5] * 280  # claims.py's tiers: 6,200 photos of 400 people
    bounds = shard_bounds(counts, people_per_shard=200)
    assert len(bounds) == 2
    assert [b[0] for b in bounds[1:]] == [b[1] for b in bounds[:-1]]  # contiguous
    assert bounds[0][0] == 0 and bounds[-1][1] == len(counts)
    sizes = [sum(counts[a:b]) for a, b in bounds]
    assert max(sizes) - min(sizes) <= max(counts)  # the people cut gave 5,200 vs 1,000
    assert shard_bounds([3] * 5, people_per_shard=2) == [(0, 2), (2, 4), (4, 5)]
    assert shard_bounds([7], people_per_shard=200) == [(0, 1)]
