"""`facs predict` on real videos and photos, bad files and a corpus; the model-backed Labeler."""

from __future__ import annotations

import pickle
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from corpus_fixture import make_corpus

from pipeline.faces import FaceConfig, FaceProcessor, crop_square_face
from pipeline.labels import NO_LABEL, LabelBatch
from pipeline.rejects import RejectReason
from pipeline.vocabulary import DISFA_AUS, FACE_SIZE, OPENFACE_AUS
from training.augment import to_model_input
from training.checkpoints import TrainingState, save_checkpoint
from training.init_weights import InitError, resolve_init
from training.model import ModelConfig, build_model
from training.model_labeler import ModelLabeler
from training.predict import run_predict
from training.predict_config import PredictConfig
from training.predict_plan import plan_inputs

SHARED = Path(__file__).resolve().parents[2] / "shared"
#: Smaller than single_face.mp4's 72 frames, so its frames come from several Ray tasks.
FRAMES_PER_TASK = 30
PIXEL_MEAN = 0.45


@pytest.fixture(scope="module")
def faces_data() -> Path:
    """../shared/data/faces next to the project root; skip when it is absent."""
    data = SHARED / "data" / "faces"
    if not data.is_dir():
        pytest.skip(
            f"real test data not found at {data} (the ../shared folder next to the project)"
        )
    return data


def write_model(folder: Path, num_outputs: int, seed: int) -> tuple[str, torch.nn.Module]:
    """A thin VGG13 with a non-trivial head (so probabilities vary), saved as a checkpoint."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(width=0.125, num_outputs=num_outputs))
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.5)
        model.head.bias.normal_(0.0, 0.5)
    state = TrainingState(
        epoch=1,
        model_state=model.state_dict(),
        model_config=asdict(model.config),
        pixel_mean=PIXEL_MEAN,
    )
    save_checkpoint(folder, state)
    return str(folder), model.eval()


def frame_count(path: Path) -> int:
    """Frames OpenCV decodes (the container's declared count can be off)."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count


def probabilities(model: torch.nn.Module, faces: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model(to_model_input(torch.from_numpy(faces), PIXEL_MEAN))
    return torch.sigmoid(logits).numpy()


@pytest.fixture(scope="module")
def disfa_model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("disfa-model"), len(DISFA_AUS), seed=1)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    files = {
        "corrupt_jpeg": folder / "corrupt.jpg",
        "corrupt_video": folder / "corrupt.mp4",
        "empty_image": folder / "empty.png",
    }
    files["corrupt_jpeg"].write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    files["corrupt_video"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    files["empty_image"].write_bytes(b"")
    return files


@pytest.fixture(scope="module")
def prediction(ray_local, faces_data, disfa_model, bad_files, tmp_path_factory):
    """One run over both videos, the photo folder, three bad files and a small corpus."""
    out = tmp_path_factory.mktemp("predict") / "preds.csv"
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"), images=12, identities=3, files=1)
    config = PredictConfig(
        inputs=[
            str(faces_data / "video" / "single_face.mp4"),
            str(faces_data / "video" / "no_face.mp4"),
            str(faces_data / "photos"),
            *map(str, bad_files.values()),
            corpus.uri,
        ],
        model=disfa_model[0],
        out=str(out),
        frames_per_task=FRAMES_PER_TASK,
        batch_size=64,
    )
    summary = run_predict(config)
    table = pd.read_csv(out)
    return summary, table, corpus


def rows_of(table: pd.DataFrame, path: Path | str) -> pd.DataFrame:
    return table[table["source"] == str(path)]


def test_single_face_video_gives_one_scored_row_per_frame(prediction, faces_data):
    _, table, _ = prediction
    video = faces_data / "video" / "single_face.mp4"
    rows = rows_of(table, video)
    count = frame_count(video)
    assert count > FRAMES_PER_TASK  # several tasks share the video
    assert sorted(rows["frame"]) == list(range(1, count + 1))
    assert (rows["success"] == 1).all() and rows["reject_reason"].isna().all()
    for au in DISFA_AUS:
        probs = rows[f"{au}_p"]
        assert probs.between(0, 1).all()
        assert ((probs >= 0.5).astype(int) == rows[f"{au}_c"]).all()
    assert set(rows.columns) >= {"face_x", "face_y", "face_w", "face_h", "timestamp"}


def test_a_frame_from_a_later_task_matches_scoring_that_frame_directly(
    prediction, faces_data, disfa_model
):
    """Frame numbering across task boundaries: the row of frame k is the face of frame k."""
    _, table, _ = prediction
    video = faces_data / "video" / "single_face.mp4"
    frame_number = FRAMES_PER_TASK + 2  # 1-based; decoded by the second task
    capture = cv2.VideoCapture(str(video))
    for _ in range(frame_number):
        ok, frame = capture.read()
        assert ok
    capture.release()
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    processor = FaceProcessor(FaceConfig())
    box = processor.detect_faces(gray)[0]
    crop = crop_square_face(gray, box, processor.config.margin, FACE_SIZE)
    expected = probabilities(disfa_model[1], crop[None])[0]
    row = rows_of(table, video).set_index("frame").loc[frame_number]
    assert (row["face_x"], row["face_y"], row["face_w"], row["face_h"]) == (
        box.x,
        box.y,
        box.w,
        box.h,
    )
    got = np.array([row[f"{au}_p"] for au in DISFA_AUS])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_no_face_video_counts_every_frame_as_a_no_face_reject(prediction, faces_data):
    summary, table, _ = prediction
    video = faces_data / "video" / "no_face.mp4"
    rows = rows_of(table, video)
    count = frame_count(video)
    assert sorted(rows["frame"]) == list(range(1, count + 1))
    assert (rows["reject_reason"] == RejectReason.NO_FACE.value).all()
    assert rows[[f"{au}_p" for au in DISFA_AUS]].isna().all().all()
    # The mountain photo is the only other face-less input.
    assert summary.rejects[RejectReason.NO_FACE.value] == count + 1


def test_bad_files_become_rejected_rows(prediction, bad_files):
    _, table, _ = prediction
    expected = {
        "corrupt_jpeg": RejectReason.UNDECODABLE,
        "corrupt_video": RejectReason.UNDECODABLE,
        "empty_image": RejectReason.EMPTY_FILE,
    }
    for name, reason in expected.items():
        rows = rows_of(table, bad_files[name])
        assert len(rows) == 1, name
        assert rows.iloc[0]["reject_reason"] == reason.value
        assert rows.iloc[0]["success"] == 0


def test_a_photo_folder_gives_a_row_per_face(prediction, faces_data):
    summary, table, _ = prediction
    photos = faces_data / "photos"
    multi = rows_of(table, photos / "multi_face.jpg")
    assert len(multi) >= 2  # "several people"
    assert sorted(multi["face_id"]) == list(range(len(multi)))
    areas = (
        multi.sort_values("face_id")["face_w"] * multi.sort_values("face_id")["face_h"]
    ).to_numpy()
    assert (np.diff(areas) <= 0).all()  # face 0 is the largest
    assert len(rows_of(table, photos / "single_face.jpg")) == 1
    photo_files = [p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    assert summary.images == len(photo_files) + 2  # + corrupt.jpg and empty.png


def test_corpus_faces_are_scored_as_stored(prediction, disfa_model):
    import pyarrow.parquet as pq

    summary, table, corpus = prediction
    rows = table[table["source"].str.startswith(corpus.uri + "#")]
    assert summary.corpus_faces == len(rows) == 12
    stored = pq.read_table(next(Path(corpus.uri).glob("v1/data/*.parquet"))).to_pandas()
    first = stored.iloc[0]
    face = np.frombuffer(first["face"], np.uint8).reshape(1, FACE_SIZE, FACE_SIZE).copy()
    expected = probabilities(disfa_model[1], face)[0]
    row = rows[rows["source"] == f"{corpus.uri}#{first['image_name']}"].iloc[0]
    np.testing.assert_allclose([row[f"{au}_p"] for au in DISFA_AUS], expected, atol=1e-5)


def test_a_missing_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        plan_inputs([str(tmp_path / "nowhere.mp4")], frames_per_task=10)


def test_scratch_is_not_a_model_to_predict_with(tmp_path):
    with pytest.raises(InitError, match="scratch"):
        run_predict(PredictConfig(inputs=[str(tmp_path)], model="scratch"))


# -- ModelLabeler ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained_model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("openface-model"), len(OPENFACE_AUS), seed=2)


def random_faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, FACE_SIZE, FACE_SIZE), dtype=np.uint8)


def test_model_labeler_labels_a_batch_with_the_model_presence(pretrained_model):
    source, model = pretrained_model
    labeler = ModelLabeler.from_source(source, threshold=0.5)
    faces = random_faces(5)
    faces[3] = 0  # a row the corpus build already rejected: no face pixels
    batch = labeler.label_batch([f"img{i}.jpg" for i in range(5)], faces)
    assert isinstance(batch, LabelBatch)
    expected = (probabilities(model, faces) >= 0.5).astype(np.int8)
    scored = [0, 1, 2, 4]
    np.testing.assert_array_equal(batch.au[scored], expected[scored])
    assert (batch.au[3] == NO_LABEL).all()
    assert batch.label_source == [f"model:{source}"] * 5
    assert batch.label_reject == [None] * 5


def test_a_disfa_model_labels_only_its_12_aus(disfa_model):
    labeler = ModelLabeler(resolve_init(disfa_model[0]))
    batch = labeler.label_batch(["a.jpg", "b.jpg"], random_faces(2, seed=3))
    for k, au in enumerate(OPENFACE_AUS):
        if au in DISFA_AUS:
            assert set(batch.au[:, k]) <= {0, 1}, au
        else:
            assert (batch.au[:, k] == NO_LABEL).all(), au


def test_model_labeler_pickles_without_its_built_network(pretrained_model):
    labeler = ModelLabeler.from_source(pretrained_model[0])
    faces = random_faces(4, seed=5)
    before = labeler.label_batch(["x"] * 4, faces)  # builds the network in this process
    assert labeler._model is not None
    copy = pickle.loads(pickle.dumps(labeler))
    assert copy._model is None
    after = copy.label_batch(["x"] * 4, faces)
    np.testing.assert_array_equal(after.au, before.au)
    assert copy.name == labeler.name
