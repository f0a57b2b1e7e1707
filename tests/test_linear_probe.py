"""The scaling points' linear probe: fits on training subjects only, scores what the features hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.disfa import Fold
from pipeline.vocabulary import DISFA_AUS
from training.linear_probe import FrameSet, fit_and_score, probe_fold
from training.metrics import au_metrics
from training.model import ModelConfig, build_model

AUS = len(DISFA_AUS)


def test_features_that_carry_the_label_score_high_and_noise_scores_chance() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((1200, AUS)) < 0.2).astype(np.uint8)
    informative = labels + 0.2 * rng.standard_normal(labels.shape)
    noise = rng.standard_normal((1200, 16))
    train, test = slice(0, 800), slice(800, None)

    good = fit_and_score(informative[train], labels[train], informative[test])
    bad = fit_and_score(noise[train], labels[train], noise[test])

    good_metrics = au_metrics(labels[test], good, DISFA_AUS, 0.5)
    bad_metrics = au_metrics(labels[test], bad, DISFA_AUS, 0.5)
    assert good_metrics.mean()["f1"] > 0.9
    assert 0.4 < bad_metrics.mean()["roc_auc"] < 0.6
    assert bad_metrics.mean()["f1"] < 0.45


def test_an_au_without_training_positives_gets_a_constant_probability() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random((100, AUS)) < 0.3).astype(np.uint8)
    labels[:, 3] = 0
    probs = fit_and_score(rng.standard_normal((100, 8)), labels, rng.standard_normal((20, 8)))
    assert np.all(probs[:, 3] == 0.0)
    assert probs[:, 0].std() > 0


def frame_set(subjects: list[str], per_subject: int, seed: int) -> FrameSet:
    rng = np.random.default_rng(seed)
    n = len(subjects) * per_subject
    return FrameSet(
        faces=rng.integers(0, 256, (n, 64, 64), dtype=np.uint8),
        labels=(rng.random((n, AUS)) < 0.3).astype(np.uint8),
        subjects=np.repeat(np.array(subjects, dtype=str), per_subject),
        frames=np.tile(np.arange(per_subject, dtype=np.int64), len(subjects)),
    )


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(width=0.0625, num_outputs=17, batch_norm=True))


def test_a_fold_fits_on_its_training_subjects_and_predicts_only_its_test_subjects(
    tiny_model,
) -> None:
    frames = frame_set(["SN001", "SN002", "SN003", "SN004", "SN005"], 40, seed=2)
    fold = Fold(1, test_subjects=("SN005",), train_subjects=("SN001", "SN002", "SN003"),
                val_subjects=("SN004",))  # fmt: skip
    first = probe_fold(tiny_model, frames, fold)
    assert set(first.subjects) == {"SN005"} and len(first.y_prob) == 40

    # The test subject's (and validation subject's) labels are never fitted on ...
    unseen = frame_set(["SN001", "SN002", "SN003", "SN004", "SN005"], 40, seed=2)
    unseen.labels[120:] = 1 - unseen.labels[120:]
    again = probe_fold(tiny_model, unseen, fold)
    np.testing.assert_allclose(again.y_prob, first.y_prob)
    np.testing.assert_array_equal(again.y_true, 1 - first.y_true)

    # ... the training subjects' labels are.
    trained = frame_set(["SN001", "SN002", "SN003", "SN004", "SN005"], 40, seed=2)
    trained.labels[:120] = 1 - trained.labels[:120]
    assert np.abs(probe_fold(tiny_model, trained, fold).y_prob - first.y_prob).max() > 1e-3


def test_a_fold_without_test_frames_is_an_error(tiny_model) -> None:
    frames = frame_set(["SN001", "SN002"], 10, seed=3)
    fold = Fold(2, test_subjects=("SN009",), train_subjects=("SN001",), val_subjects=("SN002",))
    with pytest.raises(ValueError, match="fold 2: the probe needs training and test frames"):
        probe_fold(tiny_model, frames, fold)
