"""Per-AU metrics, threshold tuning, fold pooling and the results table."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from pipeline.vocabulary import PAPER_COMPARISON_AUS
from training.metrics import (
    au_metrics,
    markdown_table,
    pool,
    table_csv,
    tune_thresholds,
    write_table_csv,
)

AUS = ("AU01", "AU02", "AU04")
# Columns: AU01 (mixed), AU02 (no positives), AU04 (perfectly ranked).
Y_TRUE = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0], [0, 0, 1], [1, 0, 0]])
Y_PROB = np.array(
    [[0.9, 0.1, 0.2], [0.4, 0.2, 0.8], [0.6, 0.3, 0.3], [0.1, 0.4, 0.6], [0.7, 0.1, 0.55]]
)


def test_hand_computed_example() -> None:
    metrics = au_metrics(Y_TRUE, Y_PROB, AUS)
    # AU01 at 0.5 predicts [1,0,1,0,1] against [1,1,0,0,1]: TP 2, FP 1, FN 1 -> F1 = 4/6.
    assert metrics.f1["AU01"] == pytest.approx(4 / 6)
    # Positive scores {0.9, 0.4, 0.7} vs negatives {0.6, 0.1}: 5 of 6 pairs ordered right.
    assert metrics.roc_auc["AU01"] == pytest.approx(5 / 6)
    # Ranked 0.9 P, 0.7 P, 0.6 N, 0.4 P, 0.1 N: precision at each positive 1, 1, 3/4.
    assert metrics.pr_auc["AU01"] == pytest.approx((1 + 1 + 0.75) / 3)
    # AU04 predicts [0,1,0,1,1] against [0,1,0,1,0]: TP 2, FP 1, FN 0 -> F1 = 4/5; ranking perfect.
    assert metrics.f1["AU04"] == pytest.approx(0.8)
    assert metrics.roc_auc["AU04"] == pytest.approx(1.0)
    assert metrics.pr_auc["AU04"] == pytest.approx(1.0)
    assert metrics.positives == {"AU01": 3, "AU02": 0, "AU04": 2}
    assert metrics.num_samples == 5


def test_au_without_positives_is_not_applicable_and_left_out_of_every_mean() -> None:
    metrics = au_metrics(Y_TRUE, Y_PROB, AUS)
    assert math.isnan(metrics.roc_auc["AU02"]) and math.isnan(metrics.pr_auc["AU02"])
    assert math.isnan(metrics.f1["AU02"])  # n/a, never a 0
    assert metrics.not_applicable("f1") == ["AU02"]
    mean = metrics.mean()
    assert mean["roc_auc"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert mean["f1"] == pytest.approx((4 / 6 + 0.8) / 2)
    assert metrics.mean(["AU01", "AU02"])["roc_auc"] == pytest.approx(5 / 6)
    assert math.isnan(metrics.mean(["AU02"])["roc_auc"])


def test_au_with_only_positives_has_nan_auc() -> None:
    y_true = np.array([[1], [1], [1]])
    metrics = au_metrics(y_true, np.array([[0.2], [0.7], [0.9]]), ["AU25"])
    assert math.isnan(metrics.roc_auc["AU25"])
    assert metrics.f1["AU25"] == pytest.approx(2 * 2 / (2 * 2 + 1))  # TP 2, FN 1


def test_per_au_thresholds() -> None:
    metrics = au_metrics(Y_TRUE, Y_PROB, AUS, thresholds=np.array([0.35, 0.5, 0.5]))
    # AU01 at 0.35 predicts [1,1,1,0,1]: TP 3, FP 1 -> F1 = 6/7.
    assert metrics.f1["AU01"] == pytest.approx(6 / 7)
    assert metrics.thresholds["AU01"] == 0.35
    with pytest.raises(ValueError, match="one threshold or 3"):
        au_metrics(Y_TRUE, Y_PROB, AUS, thresholds=np.array([0.5, 0.5]))


def test_flat_dict_for_mlflow() -> None:
    flat = au_metrics(Y_TRUE, Y_PROB, AUS).as_flat_dict("val", subsets={"pair": ["AU01", "AU04"]})
    assert flat["val_f1_AU01"] == pytest.approx(4 / 6)
    assert flat["val_roc_auc_mean"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert flat["val_f1_mean_pair"] == pytest.approx((4 / 6 + 0.8) / 2)
    assert {f"val_{m}_{au}" for m in ("f1", "pr_auc", "roc_auc") for au in AUS} <= set(flat)


def test_mean_over_unknown_aus_names_them() -> None:
    metrics = au_metrics(Y_TRUE, Y_PROB, AUS)
    with pytest.raises(KeyError, match="AU06"):
        metrics.mean(PAPER_COMPARISON_AUS)


def test_bad_inputs_are_rejected_with_position() -> None:
    with pytest.raises(ValueError, match="expected 2 AU columns"):
        au_metrics(Y_TRUE, Y_PROB, ["AU01", "AU02"])
    bad = Y_TRUE.copy()
    bad[3, 2] = 2
    with pytest.raises(ValueError, match="row 3, column 2"):
        au_metrics(bad, Y_PROB, AUS)


def test_tuned_thresholds_on_hand_example() -> None:
    thresholds = tune_thresholds(Y_TRUE, Y_PROB)
    # AU01: predicting >= 0.4 gives the best F1 (6/7); halfway to the next lower score (0.1).
    assert thresholds[0] == pytest.approx(0.25)
    assert thresholds[1] == 0.5  # no positives: the default stays
    # AU04: >= 0.6 separates perfectly; halfway to the next lower score (0.55).
    assert thresholds[2] == pytest.approx(0.575)
    tuned = au_metrics(Y_TRUE, Y_PROB, AUS, thresholds=thresholds)
    assert tuned.f1["AU01"] == pytest.approx(6 / 7) and tuned.f1["AU04"] == pytest.approx(1.0)


def test_tuned_thresholds_never_lose_to_one_half_on_the_same_data() -> None:
    rng = np.random.default_rng(0)
    rates = np.array([0.05, 0.15, 0.3, 0.5, 0.9])
    y_true = (rng.random((400, 5)) < rates).astype(int)
    # Informative but noisy, badly calibrated scores.
    y_prob = 1 / (1 + np.exp(-(2.0 * y_true - 1.5 + rng.normal(0, 1.2, y_true.shape))))
    names = [f"AU{i:02d}" for i in range(1, 6)]
    at_half = au_metrics(y_true, y_prob, names)
    tuned = au_metrics(y_true, y_prob, names, thresholds=tune_thresholds(y_true, y_prob))
    for au in names:
        assert tuned.f1[au] >= at_half.f1[au] - 1e-12, au
    assert tuned.mean()["f1"] > at_half.mean()["f1"]


def test_pool_concatenates_folds() -> None:
    y_true, y_prob = pool([(Y_TRUE, Y_PROB), (Y_TRUE[:2], Y_PROB[:2])])
    assert y_true.shape == (7, 3) and y_prob.shape == (7, 3)
    assert np.array_equal(y_true[5:], Y_TRUE[:2])
    with pytest.raises(ValueError, match="different AU counts"):
        pool([(Y_TRUE, Y_PROB), (Y_TRUE[:, :2], Y_PROB[:, :2])])


ROWS = {
    "OpenFace 2.0": {"AU01": 0.30, "AU02": 0.41, "Avg": 0.50},
    "LP-Net": {"AU01": 0.60, "AU02": 0.20, "Avg": math.nan},
    "Ours": {"AU01": 0.60, "Avg": 0.45},
}


def test_markdown_bolds_the_best_of_each_column() -> None:
    lines = markdown_table(ROWS, ["AU01", "AU02", "Avg"]).splitlines()
    assert lines[0] == "| Method | AU01 | AU02 | Avg |"
    assert lines[2] == "| OpenFace 2.0 | 0.30 | **0.41** | **0.50** |"
    assert lines[3] == "| LP-Net | **0.60** | 0.20 | n/a |"
    assert lines[4] == "| Ours | **0.60** | - | 0.45 |"


def test_markdown_bolds_no_winner_in_a_column_of_zeros_and_shows_na() -> None:
    rows = {"A": {"AU01": 0.0, "AU02": math.nan}, "B": {"AU01": 0.0, "AU02": 0.5}}
    lines = markdown_table(rows, ["AU01", "AU02"]).splitlines()
    assert lines[2] == "| A | 0.00 | n/a |"
    assert lines[3] == "| B | 0.00 | **0.50** |"


def test_markdown_without_bold() -> None:
    assert "**" not in markdown_table(ROWS, ["AU01", "Avg"], bold_best=False)


def test_csv_round_trips(tmp_path) -> None:
    path = tmp_path / "tables" / "table3.csv"
    write_table_csv(path, ROWS, ["AU01", "AU02", "Avg"])
    with open(path, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [r["method"] for r in read] == list(ROWS)
    assert float(read[0]["AU02"]) == 0.41
    assert read[1]["Avg"] == "" and read[2]["AU02"] == ""
    assert path.read_text() == table_csv(ROWS, ["AU01", "AU02", "Avg"])
