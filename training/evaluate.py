"""Cross-validation evaluation: per-fold and pooled AU metrics, the paper's Table III, PR/ROC plots."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from pipeline.storage import Location
from pipeline.vocabulary import DISFA_AUS, PAPER_COMPARISON_AUS
from training.metrics import AUMetrics, au_metrics, markdown_table, nan_mean, pool, table_csv

#: Table III's comparison rows: F1 (%) on DISFA averaged over the paper's 8 AUs, as the paper
#: prints them (OpenFace 2.0, LP-Net, and the paper's own pre-trained VGG13).
AVERAGE_COLUMN = "Avg"
PAPER_ROWS: dict[str, dict[str, float]] = {
    "OpenFace 2.0": {AVERAGE_COLUMN: 53.6},
    "LP-Net": {AVERAGE_COLUMN: 56.9},
    "Fung & McDuff (paper)": {AVERAGE_COLUMN: 59.9},
}
TABLE3_FOOTNOTE = (
    "Rows OpenFace 2.0, LP-Net and Fung & McDuff (paper) are the averages over the 8 AUs as "
    "printed in the paper (Table III); their per-AU F1 figures were not available when this "
    "table was built, so those cells are left empty (`-`) rather than guessed. This run's rows "
    "are F1 (%) at threshold 0.5 on the test frames of all folds pooled. Best value per column "
    "in bold."
)
#: Scopes of a metrics table: the folds by index, then ``pooled``.
POOLED = "pooled"


@dataclass
class FoldPredictions:
    """One fold's test frames: who and which frame each row is, labels and probabilities."""

    fold: int
    subjects: np.ndarray  # (N,) str
    frames: np.ndarray  # (N,) int
    y_true: np.ndarray  # (N, K) 0/1
    y_prob: np.ndarray  # (N, K) float in [0, 1]
    au_names: tuple[str, ...] = DISFA_AUS

    def __post_init__(self) -> None:
        n = len(self.y_true)
        shapes = {len(self.subjects), len(self.frames), len(self.y_prob)}
        if shapes != {n} or self.y_true.shape[1:] != (len(self.au_names),):
            raise ValueError(
                f"fold {self.fold}: expected {n} subjects, frames and probabilities and "
                f"{len(self.au_names)} AU columns; got subjects {len(self.subjects)}, frames "
                f"{len(self.frames)}, labels {self.y_true.shape}, probabilities {self.y_prob.shape}"
            )


@dataclass
class CVMetrics:
    """Per-fold and pooled metrics of one cross-validation (one arm of a comparison)."""

    per_fold: dict[int, AUMetrics]
    pooled: AUMetrics
    threshold: float = 0.5
    subjects: dict[int, list[str]] = field(default_factory=dict)  # test subjects per fold

    def fold_mean(self, metric: str = "f1", subset: Sequence[str] | None = None) -> float:
        """The mean over folds of each fold's AU average (the other common way to report CV)."""
        return nan_mean([m.mean(subset)[metric] for m in self.per_fold.values()])

    def summary(self) -> dict:
        """JSON-ready figures: AU averages (12 and the paper's 8) per fold and pooled, per-AU pooled."""

        def averages(metrics: AUMetrics) -> dict[str, float]:
            out = {}
            for name, value in metrics.mean().items():
                out[f"{name}_mean"] = value
            for name, value in metrics.mean(PAPER_COMPARISON_AUS).items():
                out[f"{name}_mean_paper8"] = value
            out["frames"] = metrics.num_samples
            return out

        return {
            "threshold": self.threshold,
            "folds": {
                str(k): {**averages(m), "test_subjects": self.subjects.get(k, [])}
                for k, m in sorted(self.per_fold.items())
            },
            POOLED: averages(self.pooled),
            "fold_mean_f1_mean": self.fold_mean("f1"),
            "fold_mean_f1_mean_paper8": self.fold_mean("f1", PAPER_COMPARISON_AUS),
            "per_au_pooled": {
                au: {
                    "f1": self.pooled.f1[au],
                    "pr_auc": self.pooled.pr_auc[au],
                    "roc_auc": self.pooled.roc_auc[au],
                    "positives": self.pooled.positives[au],
                }
                for au in self.pooled.au_names
            },
        }


def evaluate_folds(predictions: Sequence[FoldPredictions], threshold: float = 0.5) -> CVMetrics:
    """Metrics of each fold's test frames and of all folds' test frames pooled."""
    if not predictions:
        raise ValueError("evaluate_folds: expected the predictions of at least one fold")
    names = {p.au_names for p in predictions}
    if len(names) != 1:
        raise ValueError(f"evaluate_folds: folds disagree on the AU columns: {sorted(names)}")
    au_names = predictions[0].au_names
    per_fold = {
        p.fold: au_metrics(p.y_true, p.y_prob, au_names, threshold)
        for p in sorted(predictions, key=lambda p: p.fold)
    }
    y_true, y_prob = pool([(p.y_true, p.y_prob) for p in predictions])
    return CVMetrics(
        per_fold=per_fold,
        pooled=au_metrics(y_true, y_prob, au_names, threshold),
        threshold=threshold,
        subjects={p.fold: sorted(set(map(str, p.subjects))) for p in predictions},
    )


def table3_columns() -> list[str]:
    return [*PAPER_COMPARISON_AUS, AVERAGE_COLUMN]


def table3_rows(
    results: Mapping[str, CVMetrics], *, include_paper: bool = True
) -> dict[str, dict[str, float]]:
    """Table III's rows: the paper's comparison rows, then one per run (pooled F1, in %)."""
    rows: dict[str, dict[str, float]] = {}
    if include_paper:
        rows.update({name: dict(values) for name, values in PAPER_ROWS.items()})
    for name, metrics in results.items():
        pooled = metrics.pooled
        row = {au: 100.0 * pooled.f1[au] for au in PAPER_COMPARISON_AUS}
        row[AVERAGE_COLUMN] = 100.0 * pooled.mean(PAPER_COMPARISON_AUS)["f1"]
        rows[name] = row
    return rows


def table3_markdown(rows: Mapping[str, Mapping[str, float]], folds: int = 3) -> str:
    title = f"Table III: F1 (%) on DISFA, subject-independent {folds}-fold cross-validation\n\n"
    table = markdown_table(rows, table3_columns(), bold_best=True, fmt="{:.1f}")
    return title + table + "\n" + TABLE3_FOOTNOTE + "\n"


def metrics_csv(metrics: CVMetrics) -> str:
    """Every metric per AU, per fold and pooled: ``scope,metric,<AUs>,mean,mean_paper8``."""
    au_names = metrics.pooled.au_names
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["scope", "metric", *au_names, "mean", "mean_paper8"])
    scopes: list[tuple[str, AUMetrics]] = [
        (f"fold{k}", m) for k, m in sorted(metrics.per_fold.items())
    ]
    scopes.append((POOLED, metrics.pooled))
    for scope, values in scopes:
        for name in ("f1", "pr_auc", "roc_auc"):
            per_au = values.metric(name)
            cells = [per_au[au] for au in au_names]
            cells += [values.mean()[name], values.mean(PAPER_COMPARISON_AUS)[name]]
            writer.writerow([scope, name, *("" if math.isnan(v) else f"{v:.6f}" for v in cells)])
        writer.writerow([scope, "positives", *(values.positives[au] for au in au_names), "", ""])
    return buffer.getvalue()


def _curve_figure(
    y_true: np.ndarray, y_prob: np.ndarray, au_names: Sequence[str], kind: str, title: str
) -> bytes:
    """A grid of per-AU PR or ROC curves, as PNG bytes (Agg canvas: no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = 4
    rows = math.ceil(len(au_names) / columns)
    figure = Figure(figsize=(3.2 * columns, 3.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for k, au in enumerate(au_names):
        axis = axes[k // columns][k % columns]
        labels, scores = y_true[:, k], y_prob[:, k]
        positives = int(labels.sum())
        if 0 < positives < len(labels):
            if kind == "pr":
                precision, recall, _ = precision_recall_curve(labels, scores)
                axis.plot(recall, precision)
                axis.axhline(positives / len(labels), color="grey", linestyle=":", linewidth=1)
                axis.set_xlabel("recall")
                axis.set_ylabel("precision")
            else:
                fpr, tpr, _ = roc_curve(labels, scores)
                axis.plot(fpr, tpr)
                axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
                axis.set_xlabel("false positive rate")
                axis.set_ylabel("true positive rate")
        else:
            axis.text(0.5, 0.5, "one class only", ha="center", va="center")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.set_title(f"{au} ({positives} positives)", fontsize=9)
    for k in range(len(au_names), rows * columns):
        axes[k // columns][k % columns].set_visible(False)
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def slug(name: str) -> str:
    """A file-name-safe version of a row name: ``"VGG13 scratch"`` -> ``"vgg13-scratch"``."""
    kept = "".join(c.lower() if c.isalnum() else "-" for c in name)
    return "-".join(part for part in kept.split("-") if part)


def write_report(
    out: str,
    results: Mapping[str, CVMetrics],
    predictions: Mapping[str, Sequence[FoldPredictions]] | None = None,
    *,
    plots: bool = True,
) -> list[str]:
    """Write Table III (markdown + CSV), per-run metric CSVs, PR/ROC plots and ``summary.json``
    under ``out`` (local folder or ``s3://``); returns the URIs written."""
    root = Location.of(out)
    written: list[str] = []

    def put(name: str, data: str | bytes) -> None:
        target = root.join(name)
        if isinstance(data, str):
            target.write_text_atomic(data)
        else:
            target.write_bytes(data)
        written.append(target.uri)

    rows = table3_rows(results)
    folds = max((len(m.per_fold) for m in results.values()), default=0)
    put("table3.md", table3_markdown(rows, folds))
    put("table3.csv", table_csv(rows, table3_columns()))
    for name, metrics in results.items():
        put(f"metrics-{slug(name)}.csv", metrics_csv(metrics))
        if plots and predictions and name in predictions:
            folds = predictions[name]
            y_true, y_prob = pool([(p.y_true, p.y_prob) for p in folds])
            au_names = folds[0].au_names
            for kind, label in (("pr", "precision-recall"), ("roc", "ROC")):
                title = f"{name}: per-AU {label} curves, test folds pooled"
                put(
                    f"{kind}-curves-{slug(name)}.png",
                    _curve_figure(y_true, y_prob, au_names, kind, title),
                )
    summary = {name: metrics.summary() for name, metrics in results.items()}
    put("summary.json", json.dumps(json_ready(summary), indent=2))
    return written


def json_ready(value):
    """NaN and infinities (an AUC of a one-class AU) -> null, numpy scalars -> Python, recursively."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value
