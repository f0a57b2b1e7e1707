"""Per-AU detection metrics (F1, PR-AUC, ROC-AUC), threshold tuning, and the paper's results table."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

from pipeline.storage import Location

#: The metrics ``AUMetrics`` holds, in the order ``as_flat_dict`` writes them.
METRIC_NAMES: tuple[str, ...] = ("f1", "pr_auc", "roc_auc")


def check_labels_and_scores(
    y_true: np.ndarray, y_prob: np.ndarray, num_aus: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(N, K)`` 0/1 labels and float scores."""
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_prob.shape:
        raise ValueError(
            f"expected y_true and y_prob of the same shape (N, K), got {y_true.shape} and {y_prob.shape}"
        )
    if num_aus is not None and y_true.shape[1] != num_aus:
        raise ValueError(f"expected {num_aus} AU columns (one per AU name), got {y_true.shape[1]}")
    bad = ~np.isin(y_true, (0, 1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"y_true must be 0/1; row {row}, column {col} holds {y_true[row, col]!r}")
    if not np.isfinite(y_prob).all():
        row, col = np.argwhere(~np.isfinite(y_prob))[0]
        raise ValueError(f"y_prob must be finite; row {row}, column {col} holds {y_prob[row, col]}")
    return y_true.astype(np.int64), y_prob


@dataclass(frozen=True)
class AUMetrics:
    """Per-AU metrics of one evaluation; NaN marks a metric that is not defined (*n/a*).

    As the AU literature reports it: an AU with no positive frames has no F1, PR-AUC or ROC-AUC
    (n/a, not 0), and an AU whose frames are all positive has no AUCs. A NaN is left out of its
    mean (the mean is NaN only when every AU in the subset is NaN); ``not_applicable`` lists them.
    """

    au_names: tuple[str, ...]
    f1: dict[str, float]
    pr_auc: dict[str, float]
    roc_auc: dict[str, float]
    thresholds: dict[str, float]
    positives: dict[str, int]
    num_samples: int

    def metric(self, name: str) -> dict[str, float]:
        if name not in METRIC_NAMES:
            raise KeyError(f"unknown metric {name!r}; expected one of {METRIC_NAMES}")
        return getattr(self, name)

    def mean(self, subset: Sequence[str] | None = None) -> dict[str, float]:
        """``{"f1": ..., "pr_auc": ..., "roc_auc": ...}`` averaged over ``subset`` (default: all AUs).

        E.g. ``mean(PAPER_COMPARISON_AUS)`` for the paper's 8 AUs.
        """
        aus = self.au_names if subset is None else tuple(subset)
        unknown = [au for au in aus if au not in self.au_names]
        if unknown:
            raise KeyError(
                f"AUs {unknown} were not evaluated; evaluated AUs: {list(self.au_names)}"
            )
        return {name: nan_mean([self.metric(name)[au] for au in aus]) for name in METRIC_NAMES}

    def not_applicable(self, metric: str = "f1") -> list[str]:
        """The AUs whose ``metric`` is undefined here (no positive frames, or for AUCs one class)."""
        return [au for au in self.au_names if math.isnan(self.metric(metric)[au])]

    def as_flat_dict(
        self, prefix: str = "val", subsets: Mapping[str, Sequence[str]] | None = None
    ) -> dict[str, float]:
        """Flat keys for MLflow: ``val_f1_AU01``, ..., ``val_f1_mean``, and ``val_f1_mean_<subset>``."""
        head = f"{prefix}_" if prefix else ""
        flat: dict[str, float] = {}
        for name in METRIC_NAMES:
            for au in self.au_names:
                flat[f"{head}{name}_{au}"] = self.metric(name)[au]
        for name, value in self.mean().items():
            flat[f"{head}{name}_mean"] = value
        for subset_name, aus in (subsets or {}).items():
            for name, value in self.mean(aus).items():
                flat[f"{head}{name}_mean_{subset_name}"] = value
        return flat


def nan_mean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none (without numpy's warning)."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def per_au_thresholds(thresholds: float | np.ndarray, num_aus: int) -> np.ndarray:
    array = np.asarray(thresholds, dtype=np.float64)
    if array.shape not in ((), (1,), (num_aus,)):
        raise ValueError(f"expected one threshold or {num_aus}, got shape {array.shape}")
    return np.broadcast_to(array, (num_aus,))


def au_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    au_names: Sequence[str],
    thresholds: float | np.ndarray = 0.5,
) -> AUMetrics:
    """Metrics per AU column; an AU is predicted present when its probability >= its threshold."""
    au_names = tuple(au_names)
    y_true, y_prob = check_labels_and_scores(y_true, y_prob, len(au_names))
    cutoffs = per_au_thresholds(thresholds, len(au_names))
    f1, pr_auc, roc_auc, positives = {}, {}, {}, {}
    for k, au in enumerate(au_names):
        labels, scores = y_true[:, k], y_prob[:, k]
        n_pos = int(labels.sum())
        positives[au] = n_pos
        f1[au] = (
            float(f1_score(labels, scores >= cutoffs[k], zero_division=0)) if n_pos else math.nan
        )
        both_classes = 0 < n_pos < len(labels)
        pr_auc[au] = float(average_precision_score(labels, scores)) if both_classes else math.nan
        roc_auc[au] = float(roc_auc_score(labels, scores)) if both_classes else math.nan
    return AUMetrics(
        au_names=au_names,
        f1=f1,
        pr_auc=pr_auc,
        roc_auc=roc_auc,
        thresholds={au: float(t) for au, t in zip(au_names, cutoffs, strict=True)},
        positives=positives,
        num_samples=len(y_true),
    )


def tune_thresholds(y_true: np.ndarray, y_prob: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-AU thresholds maximising F1 on ``(y_true, y_prob)`` (validation data, not test data).

    Each threshold sits halfway between the lowest score predicted present and the next lower
    score, so it gives the best F1 on these data and leaves a margin on new ones. An AU with no
    positives keeps ``default`` (every threshold gives F1 0 there).
    """
    y_true, y_prob = check_labels_and_scores(y_true, y_prob)
    tuned = np.full(y_true.shape[1], default, dtype=np.float64)
    for k in range(y_true.shape[1]):
        labels, scores = y_true[:, k], y_prob[:, k]
        if labels.sum() == 0:
            continue
        precision, recall, cutoffs = precision_recall_curve(labels, scores)
        # The last (precision 1, recall 0) point has no threshold.
        precision, recall = precision[:-1], recall[:-1]
        denominator = precision + recall
        f1 = np.divide(
            2 * precision * recall,
            denominator,
            out=np.zeros_like(denominator),
            where=denominator > 0,
        )
        best = cutoffs[int(np.argmax(f1))]
        below = scores[scores < best]
        midpoint = (best + below.max()) / 2 if below.size else best
        # Guard against adjacent floats, whose midpoint may round down onto the lower score.
        tuned[k] = midpoint if below.size and midpoint > below.max() else best
    return tuned


def pool(folds: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``(y_true, y_prob)`` of several folds, to compute metrics over all of them."""
    if not folds:
        raise ValueError("pool: expected at least one (y_true, y_prob) fold, got none")
    checked = []
    for i, (y_true, y_prob) in enumerate(folds):
        try:
            checked.append(check_labels_and_scores(y_true, y_prob))
        except ValueError as error:
            raise ValueError(f"pool: fold {i}: {error}") from error
    widths = {y_true.shape[1] for y_true, _ in checked}
    if len(widths) != 1:
        raise ValueError(f"pool: folds have different AU counts {[t.shape[1] for t, _ in checked]}")
    return (
        np.concatenate([y_true for y_true, _ in checked]),
        np.concatenate([y_prob for _, y_prob in checked]),
    )


def format_value(value: float | None, fmt: str) -> str:
    """``-`` for a cell with no figure, ``n/a`` for an undefined one (NaN), else ``fmt``."""
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return fmt.format(value)


def best_per_column(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> dict:
    """For each column, the highest non-NaN value across rows, where it marks a winner.

    A column has no best when it has no value, or when its highest value is shared and not above
    zero (a column of 0.0s has no winner).
    """
    best = {}
    for column in columns:
        values = [r[column] for r in rows.values() if r.get(column) is not None]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            continue
        top = max(values)
        if top > 0 or values.count(top) == 1:
            best[column] = top
    return best


def markdown_table(
    rows: Mapping[str, Mapping[str, float]],
    columns: Sequence[str],
    bold_best: bool = True,
    *,
    row_header: str = "Method",
    fmt: str = "{:.2f}",
) -> str:
    """A Markdown table like the paper's Table III: one row per method, one column per AU (+ Avg).

    With ``bold_best`` the highest value of each column is bold (every one, on a tie above zero;
    see ``best_per_column``). Missing cells show ``-``, NaN (n/a) cells ``n/a``.
    """
    best = best_per_column(rows, columns) if bold_best else {}
    lines = [
        "| " + " | ".join([row_header, *columns]) + " |",
        "|" + "---|" + "---:|" * len(columns),
    ]
    for method, values in rows.items():
        cells = [method]
        for column in columns:
            value = values.get(column)
            text = format_value(value, fmt)
            if column in best and value is not None and value == best[column]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(
    rows: Mapping[str, Mapping[str, float]], columns: Sequence[str], *, row_header: str = "method"
) -> str:
    """The same table as CSV text, full precision, empty cells for missing or NaN values."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([row_header, *columns])
    for method, values in rows.items():
        cells = [values.get(column) for column in columns]
        writer.writerow(
            [method, *("" if v is None or math.isnan(v) else repr(float(v)) for v in cells)]
        )
    return buffer.getvalue()


def write_table_csv(
    uri: str | os.PathLike,
    rows: Mapping[str, Mapping[str, float]],
    columns: Sequence[str],
    *,
    row_header: str = "method",
) -> None:
    """Write ``table_csv`` to a local path or ``s3://`` URI (atomically where local)."""
    Location.of(uri).write_text_atomic(table_csv(rows, columns, row_header=row_header))
