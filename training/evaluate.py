"""Cross-validation evaluation as the AU literature reports it, Table III, PR/ROC plots.

Per fold and per AU: F1 at the threshold, PR-AUC, ROC-AUC on that fold's test frames. The headline
figure of an AU is the mean over the folds where it is defined; an AU with no positive test frame
in a fold is *n/a* there (excluded, counted and shown; never a 0). A run's average is the mean of
those per-AU figures over the AUs asked for (the paper's 8, or DISFA's 12). Pooling every fold's
frames into one ranking is kept as a secondary figure only: each fold's model is calibrated to its
own training prevalence, so a pooled ranking mixes scales (a predictor that outputs only each
fold's training prevalence scores a pooled ROC-AUC far below chance).
"""

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
from training.metrics import (
    METRIC_NAMES,
    AUMetrics,
    au_metrics,
    markdown_table,
    nan_mean,
    pool,
    table_csv,
)
from training.paper_results import AVERAGE_COLUMN, paper_rows

#: Scopes of a metrics table besides the folds: their mean (the headline) and all frames pooled.
FOLD_MEAN = "fold_mean"
POOLED = "pooled"
#: The Table III row of a labeler scored on the same test frames (``facs finetune --labeler-...``).
LABELER_ROW = "OpenFace 2.0 (measured here)"
TABLE3_FOOTNOTE = (
    "F1 (%) at threshold 0.5, computed per fold on that fold's test subjects, then averaged over "
    "the folds; Avg is the mean of the 8 AU columns. `n/a`: the AU has no positive test frame "
    "in any fold. Rows marked (paper) are the paper's Table III as printed. Best value per "
    "column in bold."
)
LABELER_FOOTNOTE = (
    "{row}: the labeler's own presence outputs (`AUxx_c`) on exactly each fold's test frames; "
    "frames it failed to track (`success` 0) or did not cover count as predicted absent "
    "({failed} of {frames} test frames)."
)


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
    """Per-fold metrics of one cross-validation (one arm or labeler), their means, and pooled."""

    per_fold: dict[int, AUMetrics]
    pooled: AUMetrics
    threshold: float = 0.5
    subjects: dict[int, list[str]] = field(default_factory=dict)  # test subjects per fold
    #: Test frames a labeler could not score (tracking failures, frames it did not cover).
    unscored_frames: int = 0

    @property
    def au_names(self) -> tuple[str, ...]:
        return self.pooled.au_names

    def per_au(self, metric: str = "f1") -> dict[str, float]:
        """Each AU's ``metric`` averaged over the folds where it is defined (NaN: n/a in all)."""
        return {
            au: nan_mean([m.metric(metric)[au] for m in self.per_fold.values()])
            for au in self.au_names
        }

    def mean(self, metric: str = "f1", subset: Sequence[str] | None = None) -> float:
        """The headline: :meth:`per_au` averaged over ``subset`` (default: every AU)."""
        per_au = self.per_au(metric)
        aus = self.au_names if subset is None else tuple(subset)
        return nan_mean([per_au[au] for au in aus])

    def fold_means(
        self, metric: str = "f1", subset: Sequence[str] | None = None
    ) -> dict[int, float]:
        """Each fold's ``metric`` averaged over its defined AUs of ``subset``."""
        return {k: m.mean(subset)[metric] for k, m in sorted(self.per_fold.items())}

    def not_applicable(
        self, metric: str = "f1", subset: Sequence[str] | None = None
    ) -> list[tuple[int, str]]:
        """The (fold, AU) cells where ``metric`` is n/a (no positive test frame there)."""
        aus = set(self.au_names if subset is None else subset)
        return [
            (k, au)
            for k, m in sorted(self.per_fold.items())
            for au in m.not_applicable(metric)
            if au in aus
        ]

    def summary(self) -> dict:
        """JSON-ready: headline means (12 AUs and the paper's 8), per AU and fold, n/a cells."""

        def averages(metrics: AUMetrics) -> dict[str, float]:
            out = {f"{name}_mean": v for name, v in metrics.mean().items()}
            out.update(
                {f"{n}_mean_paper8": v for n, v in metrics.mean(PAPER_COMPARISON_AUS).items()}
            )
            out["frames"] = metrics.num_samples
            return out

        return {
            "threshold": self.threshold,
            "evaluation": "per fold, per AU, then the mean over folds (n/a cells excluded)",
            FOLD_MEAN: {
                **{f"{name}_mean": self.mean(name) for name in METRIC_NAMES},
                **{
                    f"{name}_mean_paper8": self.mean(name, PAPER_COMPARISON_AUS)
                    for name in METRIC_NAMES
                },
                "per_au": {
                    au: {name: self.per_au(name)[au] for name in METRIC_NAMES}
                    for au in self.au_names
                },
                "not_applicable_f1": [f"fold{k}:{au}" for k, au in self.not_applicable("f1")],
            },
            "folds": {
                str(k): {
                    **averages(m),
                    "test_subjects": self.subjects.get(k, []),
                    "per_au": {
                        au: {
                            **{name: m.metric(name)[au] for name in METRIC_NAMES},
                            "positives": m.positives[au],
                        }
                        for au in m.au_names
                    },
                }
                for k, m in sorted(self.per_fold.items())
            },
            POOLED: averages(self.pooled),
            "unscored_frames": self.unscored_frames,
        }


def evaluate_folds(
    predictions: Sequence[FoldPredictions], threshold: float = 0.5, unscored_frames: int = 0
) -> CVMetrics:
    """Metrics of each fold's test frames (and, secondary, of all folds' frames pooled)."""
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
        unscored_frames=unscored_frames,
    )


def table3_columns() -> list[str]:
    return [*PAPER_COMPARISON_AUS, AVERAGE_COLUMN]


def metric_row(metrics: CVMetrics, metric: str = "f1") -> dict[str, float]:
    """One table row in %: the fold-mean of each of the paper's 8 AUs, and their average."""
    per_au = metrics.per_au(metric)
    row = {au: 100.0 * per_au[au] for au in PAPER_COMPARISON_AUS}
    row[AVERAGE_COLUMN] = 100.0 * metrics.mean(metric, PAPER_COMPARISON_AUS)
    return row


def table3_rows(
    results: Mapping[str, CVMetrics], *, include_paper: bool = True
) -> dict[str, dict[str, float]]:
    """Table III: the paper's rows (per AU, as printed), then one row per run (fold-mean F1 %)."""
    rows: dict[str, dict[str, float]] = paper_rows("III") if include_paper else {}
    rows.update({name: metric_row(metrics) for name, metrics in results.items()})
    return rows


def not_applicable_note(results: Mapping[str, CVMetrics]) -> str:
    """One line naming the (fold, AU) cells left out as n/a, or that there were none."""
    cells = sorted({cell for m in results.values() for cell in m.not_applicable("f1")})
    if not cells:
        return "Every fold has positive test frames of every AU (no n/a cell)."
    named = ", ".join(f"fold {k} {au}" for k, au in cells)
    return f"n/a (no positive test frame; left out of that AU's mean over folds): {named}."


def table3_markdown(
    rows: Mapping[str, Mapping[str, float]],
    folds: int = 3,
    results: Mapping[str, CVMetrics] | None = None,
) -> str:
    title = f"Table III: F1 (%) on DISFA, subject-independent {folds}-fold cross-validation\n\n"
    table = markdown_table(rows, table3_columns(), bold_best=True, fmt="{:.1f}")
    notes = [TABLE3_FOOTNOTE]
    if results:
        notes.append(not_applicable_note(results))
        labeler = results.get(LABELER_ROW)
        if labeler is not None:
            frames = sum(m.num_samples for m in labeler.per_fold.values())
            notes.append(
                LABELER_FOOTNOTE.format(
                    row=LABELER_ROW, failed=labeler.unscored_frames, frames=frames
                )
            )
    return title + table + "\n" + "\n".join(notes) + "\n"


def metrics_csv(metrics: CVMetrics) -> str:
    """Every metric per AU: per fold, their mean (the headline), and pooled (secondary).

    ``scope,metric,<AUs>,mean,mean_paper8``; an n/a cell is empty.
    """
    au_names = metrics.au_names
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["scope", "metric", *au_names, "mean", "mean_paper8"])

    def cells(values: Sequence[float]) -> list[str]:
        return ["" if math.isnan(v) else f"{v:.6f}" for v in values]

    scopes: list[tuple[str, AUMetrics]] = [
        (f"fold{k}", m) for k, m in sorted(metrics.per_fold.items())
    ]
    for scope, values in scopes:
        for name in METRIC_NAMES:
            per_au = values.metric(name)
            row = [per_au[au] for au in au_names]
            row += [values.mean()[name], values.mean(PAPER_COMPARISON_AUS)[name]]
            writer.writerow([scope, name, *cells(row)])
        writer.writerow([scope, "positives", *(values.positives[au] for au in au_names), "", ""])
    for name in METRIC_NAMES:
        per_au = metrics.per_au(name)
        row = [per_au[au] for au in au_names]
        row += [metrics.mean(name), metrics.mean(name, PAPER_COMPARISON_AUS)]
        writer.writerow([FOLD_MEAN, name, *cells(row)])
    for name in METRIC_NAMES:
        per_au = metrics.pooled.metric(name)
        row = [per_au[au] for au in au_names]
        row += [metrics.pooled.mean()[name], metrics.pooled.mean(PAPER_COMPARISON_AUS)[name]]
        writer.writerow([POOLED, name, *cells(row)])
    return buffer.getvalue()


def _curve_figure(
    folds: Sequence[FoldPredictions], au_names: Sequence[str], kind: str, title: str
) -> bytes:
    """A grid of per-AU PR or ROC curves, one line per fold, as PNG bytes (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = 4
    rows = math.ceil(len(au_names) / columns)
    figure = Figure(figsize=(3.2 * columns, 3.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for k, au in enumerate(au_names):
        axis = axes[k // columns][k % columns]
        drawn = []
        for fold in folds:
            labels, scores = fold.y_true[:, k], fold.y_prob[:, k]
            positives = int(labels.sum())
            if not 0 < positives < len(labels):
                continue
            name = f"fold {fold.fold} ({positives})"
            if kind == "pr":
                precision, recall, _ = precision_recall_curve(labels, scores)
                axis.plot(recall, precision, label=name)
            else:
                fpr, tpr, _ = roc_curve(labels, scores)
                axis.plot(fpr, tpr, label=name)
            drawn.append(name)
        if kind == "pr":
            axis.set_xlabel("recall")
            axis.set_ylabel("precision")
        else:
            axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            axis.set_xlabel("false positive rate")
            axis.set_ylabel("true positive rate")
        if drawn:
            axis.legend(fontsize=6, loc="lower right" if kind == "roc" else "upper right")
        else:
            axis.text(0.5, 0.5, "n/a in every fold", ha="center", va="center")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.set_title(au, fontsize=9)
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
    fold_count = max((len(m.per_fold) for m in results.values()), default=0)
    put("table3.md", table3_markdown(rows, fold_count, results))
    put("table3.csv", table_csv(rows, table3_columns()))
    for name, metrics in results.items():
        put(f"metrics-{slug(name)}.csv", metrics_csv(metrics))
        if plots and predictions and name in predictions:
            folds = predictions[name]
            for kind, label in (("pr", "precision-recall"), ("roc", "ROC")):
                title = f"{name}: per-AU {label} curves per fold (test positives)"
                put(
                    f"{kind}-curves-{slug(name)}.png",
                    _curve_figure(folds, folds[0].au_names, kind, title),
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
