"""Fine-tuning on a tiny synthetic DISFA: 3-fold CV on Ray Train, MLflow runs, Table III, no leakage."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from sklearn.metrics import f1_score

from pipeline.disfa import DisfaConfig, Fold, make_folds, prepare_disfa
from pipeline.synth.disfa_world import generate_disfa
from pipeline.vocabulary import DISFA_AUS, OPENFACE_AUS, PAPER_COMPARISON_AUS
from training.augment import AugmentConfig
from training.checkpoints import TrainingState, load_checkpoint, save_checkpoint
from training.evaluate import (
    LABELER_ROW,
    FoldPredictions,
    evaluate_folds,
    table3_markdown,
    table3_rows,
)
from training.fault_injection import FAULT_MARKER
from training.finetune import arm_inits, run_cross_validation
from training.finetune_config import FinetuneConfig
from training.finetune_data import class_weights
from training.finetune_results import FoldResult, check_no_leakage
from training.fold_trainer import snapshot
from training.init_weights import InitError, initial_model, resolve_init
from training.model import ModelConfig, build_model, freeze_classifier, freeze_conv_blocks

WIDTH = 0.125
SUBJECTS, FRAMES = 6, 30


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    """A 17-AU network saved as a pre-training checkpoint (its weights stand in for training)."""
    torch.manual_seed(123)
    model = build_model(ModelConfig(width=WIDTH))
    folder = tmp_path_factory.mktemp("pretrained")
    state = TrainingState(
        epoch=3,
        model_state={k: v.clone() for k, v in model.state_dict().items()},
        model_config=asdict(model.config),
        pixel_mean=0.42,
    )
    save_checkpoint(folder, state)
    return str(folder), state.model_state


@pytest.fixture(scope="module")
def disfa(tmp_path_factory) -> DisfaConfig:
    root = tmp_path_factory.mktemp("disfa")
    world = generate_disfa(str(root / "world"), subjects=SUBJECTS, frames=FRAMES, seed=11)
    return DisfaConfig(root=world.out, cache=str(root / "cache"))


def small_config(disfa: DisfaConfig, pretrained: str, folder: Path, **overrides) -> FinetuneConfig:
    values = dict(
        disfa=disfa,
        pretrained=pretrained,
        init="pretrained",
        val_subjects=1,
        model=ModelConfig(width=WIDTH),
        augment=AugmentConfig(strength=0.5),
        max_epochs=2,
        batches_per_epoch=2,
        batch_size=16,
        cpus_per_worker=0.5,
        shuffle_buffer=32,
        prefetch_batches=1,
        freeze_blocks=2,
        class_weighting=True,
        labeler_openface=str(Path(disfa.root) / "OpenFace"),
        storage_path=str(folder / "runs"),
        mlflow_uri=f"sqlite:///{folder / 'mlflow.db'}",
        run_name="cv",
    )
    values.update(overrides)
    return FinetuneConfig(**values)


@pytest.fixture(scope="module")
def cv(ray_local, disfa, pretrained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finetune")
    # One trainer steps the arm's three folds in lock-step (the demo's way on few cores).
    config = small_config(disfa, pretrained[0], folder, folds_per_trainer=0)
    result = run_cross_validation(config)
    return result, config, prepare_disfa(disfa)  # the second call is a cache hit


def child_runs(client: MlflowClient, parent_id: str):
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], max_results=100)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


def test_cross_validation_logs_a_parent_run_and_a_nested_run_per_fold(cv):
    result, _, frames = cv
    arm = result.arms["pretrained"]
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(arm.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["facs.init"] == "pretrained"
    assert 0.0 <= parent.data.metrics["test_pooled_f1_mean"] <= 1.0
    children = child_runs(client, arm.mlflow_run_id)
    assert sorted(int(r.data.tags["facs.fold"]) for r in children) == [1, 2, 3]
    for run in children:
        assert run.info.status == "FINISHED"
        fold = arm.folds[int(run.data.tags["facs.fold"]) - 1].fold
        assert run.data.params["test_subjects"] == ",".join(fold.test_subjects)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert sorted(steps) == [1, 2]
        assert "test_f1_mean" in run.data.metrics
        assert "system/node0/cpu_utilization_percentage" in run.data.metrics  # each fold's node
        (used,) = run.inputs.dataset_inputs
        assert used.dataset.name == f"disfa-{frames.manifest.key}-fold{fold.index}"
        profile = json.loads(used.dataset.profile)
        assert profile["test_subjects"] == len(fold.test_subjects)
        assert profile["test_frames"] == sum(
            frames.manifest.accepted_per_subject[s] for s in fold.test_subjects
        )
        assert profile["train_frames"] + profile["val_frames"] + profile["test_frames"] == (
            frames.manifest.accepted
        )
    (used,) = parent.inputs.dataset_inputs
    assert used.dataset.digest == frames.manifest.key
    assert used.dataset.name == f"disfa-{frames.manifest.key}"
    assert json.loads(used.dataset.source)["uri"] == frames.uri
    assert {t.key: t.value for t in used.tags}["mlflow.data.context"] == "training"
    artifacts = {a.path for a in client.list_artifacts(arm.mlflow_run_id, "report")}
    assert {"report/table3.md", "report/table3.csv"} <= artifacts

    assert result.registered_model == "facs-vgg13-disfa"
    version = client.get_model_version(result.registered_model, result.registered_version)
    assert version.run_id == arm.mlflow_run_id
    assert int(version.tags["fold"]) == result.final_fold
    logged_model = client.get_logged_model(version.source.removeprefix("models:/"))
    scores = {m.key: m for m in logged_model.metrics}
    assert scores["cv_test_f1_mean_paper8"].value == pytest.approx(arm.mean_f1_paper8)
    assert scores["cv_test_f1_mean_paper8"].dataset_digest == frames.manifest.key


def test_table3_holds_the_paper_rows_per_au_and_this_run(cv):
    result, _, _ = cv
    report = Path(result.report_uri)
    markdown = (report / "table3.md").read_text()
    lines = {line.split("|")[1].strip(): line for line in markdown.splitlines() if "|" in line}
    assert (
        "| 41.9 | 34.7 | 66.7 | 42.6 | 36.3 | 60.8 | 90.3 | 55.8 | 53.6 |"
        in (lines["OpenFace 2.0 (paper)"])
    )
    assert "56.9" in lines["LP-Net (paper)"] and "59.9" in lines["Fung & McDuff (paper)"]
    assert "VGG13 pre-trained (this run)" in lines
    with open(report / "table3.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["method", *PAPER_COMPARISON_AUS, "Avg"]
    by_name = {row[0]: row[1:] for row in rows[1:]}
    assert float(by_name["OpenFace 2.0 (paper)"][0]) == 41.9
    ours = [float(v) if v else np.nan for v in by_name["VGG13 pre-trained (this run)"]]
    assert ours[-1] == pytest.approx(np.nanmean(ours[:-1]))  # Avg: the mean of the AU cells
    assert ours[-1] == pytest.approx(100 * result.arms["pretrained"].mean_f1_paper8)
    for kind in ("pr", "roc"):
        png = report / f"{kind}-curves-vgg13-pre-trained-this-run.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_labeler_row_is_its_own_csvs_scored_on_each_folds_test_frames(cv):
    result, config, frames = cv
    labeler = result.labeler
    assert labeler is not None and set(labeler.per_fold) == {1, 2, 3}
    for fold, metrics in labeler.per_fold.items():
        test = frames.table(
            result.arms["pretrained"].folds[fold - 1].fold.test_subjects,
            columns=["subject", "frame", *DISFA_AUS],
        ).to_pandas()
        read = []
        for subject in sorted(test["subject"].unique()):
            csv_frame = pd.read_csv(Path(config.labeler_openface) / f"RightVideo{subject}_comp.csv")
            csv_frame["subject"], csv_frame["frame"] = subject, csv_frame["frame"] - 1
            read.append(csv_frame)
        joined = test.merge(pd.concat(read), on=["subject", "frame"], how="left")
        assert len(joined) == len(test)
        for au in DISFA_AUS:
            predicted = (joined["success"] == 1) & (joined[f"{au}_c"] == 1)
            if joined[au].sum() == 0:
                assert np.isnan(metrics.f1[au]), (fold, au)
            else:
                expected = f1_score(joined[au], predicted, zero_division=0)
                assert metrics.f1[au] == pytest.approx(expected), (fold, au)
    lines = {line.split("|")[1].strip(): line for line in result.table3.splitlines() if "|" in line}
    assert LABELER_ROW in lines and "OpenFace 2.0 (paper)" in lines


def test_no_test_subject_ever_reaches_training_or_validation(cv):
    result, _, frames = cv
    folds = result.arms["pretrained"].folds
    for fold_result in folds:
        fold, seen = fold_result.fold, fold_result.subjects_seen
        # What the workers were actually fed, per split, equals the fold's subjects.
        assert seen["train"] == sorted(fold.train_subjects)
        assert seen["val"] == sorted(fold.val_subjects)
        assert seen["test"] == sorted(fold.test_subjects)
        assert not set(seen["test"]) & (set(seen["train"]) | set(seen["val"]))
        rows = fold_result.predictions
        assert set(rows.subjects) == set(fold.test_subjects)
        expected = sum(frames.manifest.accepted_per_subject[s] for s in fold.test_subjects)
        assert len(rows.subjects) == expected
    tested = [s for f in folds for s in f.fold.test_subjects]
    assert sorted(tested) == frames.subjects()  # every subject is tested exactly once


def test_one_trainer_steps_every_fold_and_keeps_each_folds_results_apart(cv):
    result, config, _ = cv
    folds = result.arms["pretrained"].folds
    trainer_dir = Path(config.storage_path) / "cv" / "pretrained-folds1-2-3"
    assert sorted(p.name for p in trainer_dir.iterdir() if p.name.startswith("final")) != []
    for fold_result in folds:
        # Each fold's results are its own part of the one trainer's final checkpoint.
        part = Path(fold_result.checkpoint)
        assert part.name == f"fold{fold_result.fold.index}"
        assert part.parent.parent == trainer_dir and part.parent.name.startswith("final")
        assert load_checkpoint(fold_result.checkpoint).epoch == config.max_epochs
    # Three folds, three models: their kept weights differ.
    heads = [load_checkpoint(f.checkpoint).model_state["head.weight"] for f in folds]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])


def test_test_labels_are_the_cached_labels_of_each_frame(cv):
    result, _, frames = cv
    table = frames.table(columns=["subject", "frame", *DISFA_AUS]).to_pylist()
    truth = {(r["subject"], r["frame"]): [r[au] for au in DISFA_AUS] for r in table}
    for fold_result in result.arms["pretrained"].folds:
        p = fold_result.predictions
        for subject, frame, labels in zip(p.subjects, p.frames, p.y_true, strict=True):
            assert list(labels) == truth[(str(subject), int(frame))]
        assert ((p.y_prob >= 0) & (p.y_prob <= 1)).all()


def test_fold_models_keep_frozen_pretrained_blocks_under_a_12_au_head(cv, pretrained):
    result, config, _ = cv
    _, original = pretrained
    for fold_result in result.arms["pretrained"].folds:
        state = load_checkpoint(fold_result.checkpoint).model_state
        assert state["head.weight"].shape[0] == len(DISFA_AUS)
        for key, tensor in original.items():
            if key.startswith("head."):
                continue
            block = int(key.split(".")[1]) if key.startswith("conv_blocks.") else None
            frozen = block is not None and block < config.freeze_blocks
            assert torch.equal(state[key], tensor) == frozen, key


def test_the_registered_model_reads_back_as_a_disfa_model(cv):
    result, _, _ = cv
    uri = f"models:/{result.registered_model}/{result.registered_version}"
    init = resolve_init(uri, result.tracking_uri)
    assert init.au_names == DISFA_AUS
    final = result.arms["pretrained"].folds[result.final_fold - 1]
    assert init.pixel_mean == pytest.approx(final.pixel_mean)
    saved = load_checkpoint(final.checkpoint).model_state
    for key, tensor in saved.items():
        assert torch.equal(init.state_dict[key], tensor), key


# -- Without Ray ------------------------------------------------------------------------------


def test_init_from_a_checkpoint_loads_the_backbone_and_replaces_the_head(pretrained):
    path, original = pretrained
    init = resolve_init(path)
    assert init.au_names == OPENFACE_AUS
    torch.manual_seed(0)
    model = initial_model(init, ModelConfig(), len(DISFA_AUS))
    assert model.head.out_features == len(DISFA_AUS)
    for key, tensor in model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(tensor, original[key]), key
    scratch = initial_model(resolve_init("scratch"), ModelConfig(width=WIDTH), len(DISFA_AUS))
    assert not torch.equal(
        scratch.conv_blocks[0].conv1.weight, original["conv_blocks.0.conv1.weight"]
    )


def test_a_head_from_the_pretrained_rows_starts_each_disfa_au_at_its_own_logit(pretrained):
    path, original = pretrained
    init = resolve_init(path)
    model = initial_model(init, ModelConfig(), len(DISFA_AUS), head_rows_for=DISFA_AUS)
    for k, au in enumerate(DISFA_AUS):
        row = OPENFACE_AUS.index(au)
        assert torch.equal(model.head.weight[k], original["head.weight"][row]), au
        assert model.head.bias[k] == original["head.bias"][row]
    fresh = initial_model(init, ModelConfig(), len(DISFA_AUS))
    assert not torch.equal(fresh.head.weight, model.head.weight)
    with pytest.raises(InitError, match="AU99"):
        initial_model(init, ModelConfig(), 1, head_rows_for=("AU99",))


def test_a_linear_probe_trains_only_the_head_with_its_dropout_off():
    model = build_model(ModelConfig(width=WIDTH))
    freeze_conv_blocks(model, 4)
    freeze_classifier(model)
    model.train()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    assert not model.classifier.training and model.head.training
    x = torch.randn(4, 1, 64, 64)
    assert torch.equal(model.features(x), model.features(x))  # no dropout in the features


def test_a_scratch_arm_gets_the_pretrained_architecture(pretrained, disfa, tmp_path):
    config = small_config(
        disfa, pretrained[0], tmp_path, compare_init=True, model=ModelConfig(width=1.0)
    )
    inits, scratch_model = arm_inits(config)
    assert list(inits) == ["scratch", "pretrained"]
    assert inits["scratch"].is_scratch and not inits["pretrained"].is_scratch
    assert scratch_model.width == WIDTH  # the checkpoint's, not config.model's 1.0


def test_kept_best_weights_do_not_follow_later_training():
    model = build_model(ModelConfig(width=WIDTH))
    kept = snapshot(model)
    with torch.no_grad():
        model.head.weight.add_(1.0)  # what a later optimiser step does, in place
    assert not torch.equal(kept["head.weight"], model.head.weight)


def test_an_unknown_weight_source_is_named(tmp_path):
    with pytest.raises(InitError, match="no-such-checkpoint"):
        resolve_init(str(tmp_path / "no-such-checkpoint"))


def test_pretrained_init_without_weights_is_refused_before_any_work(disfa, tmp_path):
    config = small_config(disfa, "", tmp_path)
    with pytest.raises(ValueError, match="--pretrained"):
        run_cross_validation(config)


def test_config_rejects_freezing_more_blocks_than_exist():
    with pytest.raises(ValueError, match="freeze_blocks"):
        FinetuneConfig(freeze_blocks=5)


def predictions(fold: int, y_true: list[int], y_prob: list[float]) -> FoldPredictions:
    """A fold whose 12 AU columns all hold the same labels and scores."""
    labels = np.repeat(np.array(y_true, np.uint8)[:, None], len(DISFA_AUS), axis=1)
    probs = np.repeat(np.array(y_prob, np.float32)[:, None], len(DISFA_AUS), axis=1)
    n = len(y_true)
    return FoldPredictions(fold, np.array(["SN001"] * n), np.arange(n), labels, probs)


def test_metrics_per_fold_then_averaged_by_hand():
    # Fold 1: TP, FN, FP, TN -> F1 = 2/(2+1+1) = 0.5. Fold 2: TP, TN -> F1 = 1.
    # Headline per AU: the mean over folds, (0.5 + 1) / 2. Pooled: TP 2, FN 1, FP 1 -> F1 = 4/6.
    metrics = evaluate_folds(
        [predictions(1, [1, 1, 0, 0], [0.9, 0.2, 0.6, 0.1]), predictions(2, [1, 0], [0.7, 0.3])]
    )
    assert metrics.per_fold[1].f1["AU01"] == pytest.approx(0.5)
    assert metrics.per_fold[2].f1["AU26"] == pytest.approx(1.0)
    assert metrics.per_au("f1")["AU12"] == pytest.approx(0.75)
    assert metrics.mean("f1") == pytest.approx(0.75)
    assert metrics.pooled.f1["AU12"] == pytest.approx(4 / 6)
    # Pooled ROC-AUC: positives {0.9, 0.2, 0.7} vs negatives {0.6, 0.1, 0.3}: 7 of 9 pairs.
    assert metrics.pooled.roc_auc["AU01"] == pytest.approx(7 / 9)
    rows = table3_rows({"run": metrics})
    assert rows["run"]["AU01"] == pytest.approx(75.0)
    assert rows["run"]["Avg"] == pytest.approx(75.0)
    text = table3_markdown(rows)
    assert "| OpenFace 2.0 (paper) | 41.9 | 34.7 |" in text and "**75.0**" in text


def test_per_fold_roc_auc_differs_from_pooled_where_folds_are_calibrated_apart():
    # Each fold ranks its one positive first (ROC-AUC 1.0 in both), but fold 2's model outputs
    # lower scores overall. Pooled, fold 2's positive (0.3) sits below fold 1's negatives
    # (0.8, 0.7, 0.6): it beats 3 of the 6 negatives, fold 1's beats 6 -> (6 + 3) / 12 = 0.75.
    metrics = evaluate_folds(
        [
            predictions(1, [1, 0, 0, 0], [0.9, 0.8, 0.7, 0.6]),
            predictions(2, [1, 0, 0, 0], [0.3, 0.2, 0.1, 0.05]),
        ]
    )
    assert metrics.per_fold[1].roc_auc["AU01"] == pytest.approx(1.0)
    assert metrics.per_fold[2].roc_auc["AU01"] == pytest.approx(1.0)
    assert metrics.mean("roc_auc") == pytest.approx(1.0)
    assert metrics.pooled.roc_auc["AU01"] == pytest.approx(0.75)
    # F1 at 0.5: fold 1 predicts all four present (TP 1, FP 3): 2/(2+3) = 0.4; fold 2 none: 0.
    assert metrics.mean("f1") == pytest.approx(0.2)
    # Pooled: TP 1, FP 3, FN 1 -> 2/(2+3+1).
    assert metrics.pooled.f1["AU01"] == pytest.approx(2 / 6)


def test_an_au_without_test_positives_in_a_fold_is_na_there_not_zero():
    positives_in_both = predictions(1, [1, 0], [0.9, 0.1])
    labels = positives_in_both.y_true.copy()
    probs = positives_in_both.y_prob.copy()
    fold2_labels = np.array([[1] * len(DISFA_AUS), [0] * len(DISFA_AUS)], np.uint8)
    fold2_labels[:, DISFA_AUS.index("AU09")] = 0  # no AU09 positive in fold 2's test frames
    fold2 = FoldPredictions(2, np.array(["SN002"] * 2), np.arange(2), fold2_labels, probs)
    metrics = evaluate_folds(
        [FoldPredictions(1, np.array(["SN001"] * 2), np.arange(2), labels, probs), fold2]
    )
    assert metrics.not_applicable("f1") == [(2, "AU09")]
    assert metrics.per_au("f1")["AU09"] == pytest.approx(1.0)  # fold 1's alone, not (1 + 0) / 2
    text = table3_markdown(table3_rows({"run": metrics}), 2, {"run": metrics})
    assert "fold 2 AU09" in text


def test_leakage_check_names_a_trained_on_test_subject():
    fold = Fold(1, ("SN002",), ("SN001", "SN003"), ("SN004",))
    leaked = FoldResult(
        arm="pretrained",
        fold=fold,
        mlflow_run_id="x",
        checkpoint="x",
        epochs=1,
        best_epoch=1,
        best_monitor=0.5,
        stopped_early=False,
        pixel_mean=0.5,
        subjects_seen={"train": ["SN001", "SN002"], "val": ["SN004"], "test": ["SN002"]},
        predictions=predictions(1, [1], [0.5]),
        seconds=0.0,
    )
    with pytest.raises(RuntimeError, match="SN002"):
        check_no_leakage(leaked)


def test_class_weights_are_negatives_over_positives_capped(cv):
    _, _, frames = cv
    fold = make_folds(frames.subjects(), scheme="paper", val_subjects_per_fold=1)[0]
    table = frames.table(fold.train_subjects, columns=list(DISFA_AUS)).to_pandas()
    weights = class_weights(frames, fold.train_subjects, cap=5.0)
    for au, weight in zip(DISFA_AUS, weights, strict=True):
        positives = int(table[au].sum())
        negatives = len(table) - positives
        expected = 5.0 if positives == 0 else min(5.0, max(1.0, negatives / positives))
        assert weight == pytest.approx(expected), au


@pytest.mark.slow
def test_a_lock_step_trainer_killed_mid_run_resumes_every_fold_from_its_checkpoint(
    ray_local, disfa, tmp_path
):
    config = small_config(
        disfa,
        "",
        tmp_path,
        init="scratch",
        folds_per_trainer=0,
        max_epochs=3,
        max_failures=1,
        labeler_openface="",
        run_name="fault",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FACS_FINETUNE_FAIL_AT_EPOCH", "2")
        patch.setenv("FACS_FINETUNE_FAIL_RANK", "0")
        result = run_cross_validation(config)
    trainer_dir = Path(config.storage_path) / "fault" / "scratch-folds1-2-3"
    assert (trainer_dir / FAULT_MARKER).is_file()  # the worker did exit at the start of epoch 2
    client = MlflowClient(result.tracking_uri)
    for fold_result in result.arms["scratch"].folds:
        assert fold_result.epochs == 3
        # Restarting from scratch would have trained (and logged) epoch 1 twice; restarting
        # every fold from the checkpoint of epoch 1, once.
        steps = sorted(
            m.step for m in client.get_metric_history(fold_result.mlflow_run_id, "train_loss")
        )
        assert steps == [1, 2, 3]
