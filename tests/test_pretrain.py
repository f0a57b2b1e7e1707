"""Pre-training on Ray Train: 2-worker DDP runs, resume, fault recovery, and the input pipeline."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
import ray.train
import torch
from corpus_fixture import band_rows, make_corpus
from mlflow.tracking import MlflowClient
from ray.data import DataContext

from pipeline.corpus.manifest import load_manifest
from pipeline.vocabulary import FACE_SIZE, OPENFACE_AUS
from training.augment import AugmentConfig
from training.checkpoints import load_checkpoint, load_pretrained
from training.data import (
    BatchOptions,
    FaceBatchCollate,
    epoch_batches,
    faces_from_arrow,
    ingest_config,
    labels_from_arrow,
    pixel_mean,
)
from training.fault_injection import FAULT_MARKER
from training.model import ModelConfig
from training.model_logging import process_uris
from training.pretrain import FAIL_ENV, run_pretraining, storage_root
from training.pretrain_config import PretrainConfig, lr_factor, lr_per_step
from training.pretrain_inputs import RUN_INFO, CorpusFacts, check_same_corpus, choose_run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), images=320, identities=40)


def small_config(corpus, folder: Path, **overrides) -> PretrainConfig:
    """Two thin workers on half a CPU each (Ray Data keeps the rest), a few hundred images."""
    values = dict(
        corpus=corpus.uri,
        workers=2,
        cpus_per_worker=0.5,
        batch_size=16,
        lr=0.001,
        # Without BatchNorm: its running statistics after 24 steps of batch 16 make the
        # eval-mode validation loss a poor measure of what the pipeline learned.
        model=ModelConfig(width=0.125, batch_norm=False),
        augment=AugmentConfig(strength=0.5),
        patience=0,
        storage_path=str(folder / "runs"),
        mlflow_uri=f"sqlite:///{folder / 'mlflow.db'}",
        cache_data=True,
        shuffle_buffer=64,
        prefetch_batches=2,
    )
    values.update(overrides)
    return PretrainConfig(**values)


def metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def resumed_run(ray_local, corpus, tmp_path_factory):
    """One run, started twice (two Ray Train fits keep the file's run time down).

    First up to 2 epochs, during which worker 1 exits mid-way through epoch 2 (the env var's
    fault injection, first attempt only); then resumed (``resume=True``) up to epoch 3.
    """
    folder = tmp_path_factory.mktemp("resumed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAIL_ENV, "2")
        first = run_pretraining(
            small_config(corpus, folder, max_epochs=2, max_failures=1, run_name="bands")
        )
    config = small_config(corpus, folder, max_epochs=3, resume=True)  # newest run: "bands"
    second = run_pretraining(config)
    return first, second, config


@pytest.mark.slow
def test_two_worker_run_logs_params_metrics_and_the_registered_model(resumed_run, corpus):
    _, result, config = resumed_run
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["workers"] == "2"
    assert params["corpus_uri"] == corpus.uri
    assert params["corpus_version"] == "1"
    assert params["corpus_manifest_hash"] == load_manifest(corpus.uri).content_hash(1)
    assert params["model.width"] == "0.125"
    assert run.data.tags["corpus.version"] == "1"
    (used,) = run.inputs.dataset_inputs
    assert used.dataset.name == "corpus-v1"
    assert used.dataset.digest == params["corpus_manifest_hash"][:36]
    assert json.loads(used.dataset.source)["uri"] == corpus.uri
    assert json.loads(used.dataset.profile)["train_rows"] > 0
    # The fixture computed the train split's mean itself, from the pixels it drew.
    assert float(params["pixel_mean"]) == pytest.approx(corpus.train_pixel_mean, abs=1e-9)
    for key in ("val_f1_mean", "val_roc_auc_AU01", "val_pr_auc_AU28", "samples_per_s"):
        assert metric_steps(client, result.mlflow_run_id, key) == [1, 2, 3], key
    wait = client.get_metric_history(result.mlflow_run_id, "data_wait_fraction")
    assert all(0.0 <= m.value <= 1.0 for m in wait)

    version = client.get_model_version(result.registered_model, result.registered_version)
    assert result.registered_model == "facs-vgg13-pretrained"
    assert version.run_id == result.mlflow_run_id
    assert version.tags["corpus.version"] == "1"
    assert version.tags["corpus.subset"] == ""
    assert float(version.tags["pixel_mean"]) == pytest.approx(corpus.train_pixel_mean)


@pytest.mark.slow
def test_logged_model_predicts_17_aus_like_the_best_checkpoint(resumed_run):
    import mlflow

    _, result, _ = resumed_run
    model, mean = load_pretrained(result.best_checkpoint)
    assert mean == pytest.approx(result.pixel_mean)
    batch = np.random.default_rng(0).normal(0, 0.2, (3, 1, FACE_SIZE, FACE_SIZE)).astype("f4")
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    with process_uris(result.tracking_uri):
        logged = mlflow.pyfunc.load_model(
            f"models:/{result.registered_model}/{result.registered_version}"
        )
        predicted = np.asarray(logged.predict(batch))
    assert predicted.shape == (3, len(OPENFACE_AUS))
    np.testing.assert_allclose(predicted, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_training_loss_decreases_and_beats_a_fair_coin(resumed_run):
    _, result, _ = resumed_run
    client = MlflowClient(result.tracking_uri)
    train = {m.step: m.value for m in client.get_metric_history(result.mlflow_run_id, "train_loss")}
    assert train[3] < train[1]
    # Predicting 0.5 for every AU scores ln 2; the labels follow the images, so a net that
    # learned anything does better on unseen identities.
    assert result.best_val_loss < math.log(2) - 0.02
    assert result.best_val_loss == pytest.approx(
        min(m.value for m in client.get_metric_history(result.mlflow_run_id, "val_loss"))
    )


@pytest.mark.slow
def test_resume_continues_the_same_run_to_the_same_epoch_count(resumed_run):
    first, second, _ = resumed_run
    assert (first.epochs, second.epochs) == (2, 3)
    assert second.run_name == first.run_name == "bands"
    assert second.mlflow_run_id == first.mlflow_run_id
    assert second.pixel_mean == first.pixel_mean
    client = MlflowClient(second.tracking_uri)
    # Epochs 1 and 2 are not trained again after the resume: each step is logged once.
    assert metric_steps(client, second.mlflow_run_id, "train_loss") == [1, 2, 3]
    state = load_checkpoint(second.best_checkpoint)
    assert state.epoch == second.best_epoch
    assert state.optimizer_state is not None


@pytest.mark.slow
def test_a_worker_killed_mid_epoch_is_recovered_from_the_last_checkpoint(resumed_run):
    first, _, _ = resumed_run
    assert (Path(first.run_uri) / FAULT_MARKER).is_file()  # worker 1 did exit in epoch 2
    assert first.epochs == 2
    client = MlflowClient(first.tracking_uri)
    # Restarting from scratch would have trained (and logged) epoch 1 twice; restarting from
    # the checkpoint of epoch 1, once. Epoch 2 was cut short before it logged anything.
    assert metric_steps(client, first.mlflow_run_id, "train_loss") == [1, 2, 3]
    assert metric_steps(client, first.mlflow_run_id, "final_epochs") == [2, 3]


def test_a_new_run_refuses_an_existing_name_and_resume_needs_a_run(corpus, tmp_path):
    config = small_config(corpus, tmp_path, run_name="taken")
    root = storage_root(config)
    with pytest.raises(ValueError, match="nothing to resume|no run to resume"):
        choose_run(small_config(corpus, tmp_path, resume=True), root)
    root.join("taken", RUN_INFO).write_text_atomic('{"created": "2026-01-01T00:00:00+00:00"}')
    with pytest.raises(ValueError, match="already exists.*--resume"):
        choose_run(config, root)
    name, record = choose_run(small_config(corpus, tmp_path, resume=True), root)
    assert name == "taken" and record is not None


def test_resume_with_another_corpus_version_is_refused():
    record = {"corpus": {"uri": "/c", "version": 1, "subset": None, "manifest_hash": "aa"}}
    with pytest.raises(ValueError, match="version"):
        check_same_corpus(record, CorpusFacts("/c", 2, None, "bb"), "facs_run.json")


def test_step_schedule_halves_after_20_and_tenths_after_40_epochs():
    assert {lr_factor(PretrainConfig(), e) for e in (0, 20, 499)} == {1.0}  # constant default
    config = PretrainConfig(schedule="step")
    assert [lr_factor(config, e) for e in (0, 19, 20, 39, 40, 499)] == [1, 1, 0.5, 0.5, 0.1, 0.1]
    cosine = PretrainConfig(schedule="cosine", max_epochs=10)
    assert lr_factor(cosine, 0) == 1.0
    assert lr_factor(cosine, 5) == pytest.approx(0.5)
    assert lr_factor(cosine, 9) < 0.05
    assert not lr_per_step(cosine)


def test_cosine_under_a_step_budget_decays_over_the_steps_not_the_epochs():
    config = PretrainConfig(schedule="cosine", max_epochs=10_000, max_steps=2000)
    assert lr_per_step(config)
    assert lr_factor(config, epoch=0, step=0) == 1.0
    assert lr_factor(config, epoch=3, step=1000) == pytest.approx(0.5)
    assert lr_factor(config, epoch=40, step=2000) == pytest.approx(0.0)
    assert lr_factor(config, epoch=40, step=2500) == pytest.approx(0.0)  # never negative
    assert not lr_per_step(PretrainConfig(max_steps=2000))  # constant stays constant


def test_config_rejects_a_global_batch_that_does_not_split_over_workers():
    assert PretrainConfig(workers=4, global_batch_size=256).worker_batch_size == 64
    with pytest.raises(ValueError, match="global_batch_size"):
        PretrainConfig(workers=3, global_batch_size=256)
    with pytest.raises(ValueError, match="step_factors"):
        PretrainConfig(step_epochs=[10], step_factors=[0.5, 0.1])


def test_collate_turns_arrow_rows_into_uint8_faces_and_labels(corpus):
    import pyarrow.parquet as pq

    files = sorted(Path(corpus.uri).rglob("*.parquet"))
    table = pq.read_table(files[0], columns=["face", *OPENFACE_AUS]).slice(3, 5)
    batch = FaceBatchCollate()(table)
    faces, labels = batch["faces"], batch["labels"]
    assert faces.dtype == torch.uint8 and faces.shape == (5, FACE_SIZE, FACE_SIZE)
    assert labels.dtype == torch.uint8 and labels.shape == (5, len(OPENFACE_AUS))
    expected = np.frombuffer(table.column("face")[2].as_py(), np.uint8).reshape(64, 64)
    np.testing.assert_array_equal(faces[2].numpy(), expected)
    # The fixture draws AU k as a band 40 grey levels brighter than the rest of the face.
    for k in range(len(OPENFACE_AUS)):
        band = faces[:, band_rows(k), :].float().mean(dim=(1, 2))
        other = faces[:, 60:, :].float().mean(dim=(1, 2))
        present = labels[:, k].bool()
        assert torch.all((band - other)[present] > 20) and torch.all((band - other)[~present] < 20)


def test_bad_face_bytes_and_labels_name_the_row():
    faces = pa.array([bytes(FACE_SIZE * FACE_SIZE), bytes(10)], pa.binary())
    with pytest.raises(ValueError, match="row 1 has a face of 10 bytes"):
        faces_from_arrow(faces)
    labels = pa.table({au: pa.array([0, 1], pa.int8()) for au in OPENFACE_AUS})
    labels = labels.set_column(2, "AU04", pa.array([0, 2], pa.int8()))
    with pytest.raises(ValueError, match="row 1 has AU04 = 2"):
        labels_from_arrow(labels)


@pytest.mark.slow
def test_pixel_mean_of_the_train_split_matches_the_pixels(ray_local, corpus):
    from training.data import corpus_splits

    assert pixel_mean(corpus_splits(corpus.uri)["train"]) == pytest.approx(
        corpus.train_pixel_mean, abs=1e-12
    )


def test_checkpoints_and_run_records_work_on_s3(s3_bucket, tmp_path, corpus):
    import pyarrow.fs as pafs

    from pipeline.storage import Location
    from training.checkpoints import TrainingState, save_checkpoint
    from training.model import build_model

    model = build_model(ModelConfig(width=0.125))
    state = TrainingState(
        epoch=4,
        model_state={k: v.clone() for k, v in model.state_dict().items()},
        model_config={"width": 0.125},
        pixel_mean=0.42,
        best_score=0.61,
        best_epoch=3,
    )
    local = save_checkpoint(tmp_path / "epoch-0004", state)
    uri = f"s3://{s3_bucket}/runs/r1/epoch-0004"
    target = Location.of(uri)
    pafs.copy_files(str(local), target.path, destination_filesystem=target.fs)
    loaded, mean = load_pretrained(uri)
    assert mean == 0.42 and load_checkpoint(uri).best_epoch == 3
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    config = small_config(corpus, tmp_path, storage_path=f"s3://{s3_bucket}/runs", resume=True)
    root = storage_root(config)
    for name, created in (
        ("old", "2026-01-01T00:00:00+00:00"),
        ("new", "2026-02-01T00:00:00+00:00"),
    ):
        root.join(name, RUN_INFO).write_text_atomic(json.dumps({"created": created}))
    assert choose_run(config, root)[0] == "new"


def test_ray_train_ingest_options_carry_the_data_context_without_the_deprecated_exclusion():
    with pytest.warns(DeprecationWarning, match="exclude_resources"):  # Ray's own default does
        ray.train.DataConfig(["train"])._resolve_execution_options("train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        options = ingest_config(["train"])._resolve_execution_options("train")
    current = DataContext.get_current().execution_options
    assert options.resource_limits == current.resource_limits
    assert options.preserve_order == current.preserve_order
    assert not any(options.exclude_resources.to_resource_dict().values())


def test_the_training_ingest_holds_a_bounded_share_of_the_object_store():
    bounded = ingest_config(["train"], store_bytes=512 * 2**20)._resolve_execution_options("train")
    assert bounded.resource_limits.object_store_memory == 512 * 2**20
    current = DataContext.get_current().execution_options.resource_limits
    assert bounded.resource_limits.cpu == current.cpu  # the other limits are the context's


def test_an_epoch_repeats_reshuffled_passes_until_its_minimum_steps_within_the_limit():
    rows = 100  # face i is filled with grey level i: the order of a pass can be read back
    table = pa.table(
        {
            "face": pa.array([bytes([i]) * FACE_SIZE * FACE_SIZE for i in range(rows)]),
            **{au: pa.array(np.zeros(rows, np.int8)) for au in OPENFACE_AUS},
        }
    )
    shard = ray.data.from_arrow(table).iterator()
    options = BatchOptions(batch_size=32, shuffle_buffer=100, drop_last=True, seed=3)

    def order(**kwargs) -> list[list[int]]:
        batches = epoch_batches(shard, options, **kwargs)
        return [batch["faces"][:, 0, 0].tolist() for batch in batches]

    assert len(order()) == 3  # one pass: 100 rows -> 3 full batches
    nine = order(min_steps=7)  # three passes of 3 batches
    assert len(nine) == 9
    passes = [sorted(sum(nine[k : k + 3], [])) for k in (0, 3, 6)]
    assert all(len(set(p)) == 96 for p in passes)  # each pass draws rows once
    assert sum(nine[0:3], []) != sum(nine[3:6], [])  # ... in a new order
    assert len(order(min_steps=7, limit=5)) == 5


def test_a_checkpoint_written_with_the_old_field_name_still_loads(tmp_path):
    from dataclasses import asdict

    from training.checkpoints import STATE_FILE, TrainingState, load_checkpoint

    state = asdict(TrainingState(epoch=2, model_state={}, model_config={}, pixel_mean=0.5))
    state["best_val_loss"] = state.pop("best_score")
    state["best_val_loss"] = -0.47  # fine-tuning stored its negated F1 under this name
    torch.save(state, tmp_path / STATE_FILE)
    assert load_checkpoint(tmp_path).best_score == -0.47
