"""The training stages through the `facs` command line: finetune, predict, and self-labelling adds."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from cluster.cli import main
from pipeline.corpus.read import version_files
from pipeline.synth.disfa_world import generate_disfa
from pipeline.vocabulary import FACE_SIZE, OPENFACE_AUS
from training.augment import to_model_input
from training.checkpoints import TrainingState, save_checkpoint
from training.model import ModelConfig, build_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
PIXEL_MEAN = 0.4


@pytest.fixture(scope="module")
def photos() -> Path:
    folder = SHARED / "data" / "faces" / "celebrities"
    if not folder.is_dir():
        pytest.skip(f"real test photos not found at {folder}")
    return folder


@pytest.fixture(scope="module")
def model_17(tmp_path_factory) -> tuple[str, torch.nn.Module]:
    """A thin 17-AU network with a spread-out head, saved as a pre-training checkpoint."""
    torch.manual_seed(5)
    model = build_model(ModelConfig(width=0.125))
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.5)
        model.head.bias.normal_(0.0, 0.5)
    folder = tmp_path_factory.mktemp("model17")
    save_checkpoint(
        folder,
        TrainingState(
            epoch=1,
            model_state=model.state_dict(),
            model_config=asdict(model.config),
            pixel_mean=PIXEL_MEAN,
        ),
    )
    return str(folder), model.eval()


def person_folder(photos: Path, target: Path, names: list[str]) -> Path:
    for name in names:
        (target / "person00").mkdir(parents=True, exist_ok=True)
        shutil.copy(photos / name, target / "person00" / name)
    return target


def test_corpus_add_with_a_label_model_stores_the_model_presence(
    ray_local, photos, model_17, tmp_path, capsys
):
    names = sorted(p.name for p in photos.glob("*.jpg"))
    first = person_folder(photos, tmp_path / "first", names[:3])
    second = person_folder(photos, tmp_path / "second", names[3:7])
    corpus = str(tmp_path / "corpus")
    assert main(["corpus", "build", "--corpus", corpus, "--images", str(first)]) == 0
    code = main(
        ["corpus", "add", "--corpus", corpus, "--images", str(second), "--label-model", model_17[0]]
    )
    assert code == 0, capsys.readouterr().err
    root, files = version_files(corpus, 2)  # every version's shards up to 2
    table = pq.ParquetDataset(files, filesystem=root.fs).read()
    rows = table.to_pandas()
    earlier = rows[rows["image_name"].isin(names[:3])]
    rows = rows[rows["image_name"].isin(names[3:7])]
    assert len(rows) >= 3  # the photos are real faces; Haar finds almost all
    assert set(rows["label_source"]) == {f"model:{model_17[0]}"}
    faces = np.stack(
        [np.frombuffer(b, np.uint8).reshape(FACE_SIZE, FACE_SIZE) for b in rows["face"]]
    )
    with torch.no_grad():
        probs = torch.sigmoid(model_17[1](to_model_input(torch.from_numpy(faces), PIXEL_MEAN)))
    expected = (probs.numpy() >= 0.5).astype(np.int8)
    np.testing.assert_array_equal(rows[list(OPENFACE_AUS)].to_numpy(np.int8), expected)
    # The first version's rows keep their own (absent) labels.
    assert len(earlier) >= 2 and not earlier["label_source"].str.startswith("model:").any()


def test_label_files_and_a_label_model_together_are_refused(ray_local, model_17, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    labels = tmp_path / "labels.csv"
    labels.write_text("")
    code = main(
        [
            "corpus",
            "build",
            "--corpus",
            str(corpus),
            "--images",
            str(tmp_path),
            "--labels-release-csv",
            str(labels),
            "--label-model",
            model_17[0],
        ]
    )
    assert code == 2
    assert "not both" in capsys.readouterr().err


def test_predict_takes_positional_inputs_and_writes_a_row_per_frame(
    ray_local, model_17, tmp_path, capsys
):
    video = SHARED / "data" / "faces" / "video" / "single_face.mp4"
    if not video.is_file():
        pytest.skip(f"{video} not found")
    out = tmp_path / "preds.csv"
    code = main(["predict", str(video), "--model", model_17[0], "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = pd.read_csv(out)
    assert rows["frame"].is_unique and len(rows) > 50
    assert {f"{au}_p" for au in OPENFACE_AUS} <= set(rows.columns)
    assert "faces scored" in capsys.readouterr().out


def test_finetune_from_the_command_line_prints_table3_and_registers(ray_local, tmp_path, capsys):
    world = generate_disfa(str(tmp_path / "disfa"), subjects=6, frames=20, seed=3)
    args = [
        "finetune",
        "--disfa",
        world.out,
        "--disfa-cache",
        str(tmp_path / "cache"),
        "--init",
        "scratch",
        "--val-subjects",
        "1",
        "--only-folds",
        "1",
        "--model-width",
        "0.125",
        "--max-epochs",
        "1",
        "--batches-per-epoch",
        "1",
        "--batch-size",
        "8",
        "--no-plots",
        "--storage-path",
        str(tmp_path / "runs"),
        "--mlflow-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "OpenFace 2.0" in out and "LP-Net" in out
    assert "models:/facs-vgg13-disfa/1" in out


def test_finetune_needs_weights_for_a_pretrained_init(tmp_path, capsys):
    code = main(["finetune", "--disfa", str(tmp_path), "--init", "pretrained"])
    assert code == 2
    assert "--pretrained" in capsys.readouterr().err
