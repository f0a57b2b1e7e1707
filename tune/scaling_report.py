"""The scaling experiment's report: Tables IV and V (markdown + CSV), Figures 3 and 4, scaling.json."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.vocabulary import DISFA_AUS, PAPER_COMPARISON_AUS
from training.evaluate import json_ready
from training.metrics import markdown_table, table_csv
from training.paper_results import AVERAGE_COLUMN, TABLE_III, TABLE_IV, TABLE_V, paper_rows

if TYPE_CHECKING:
    from tune.scaling import ScalingResult
    from tune.scaling_point import PointResult

#: The paper's comparison methods drawn as reference rows and lines (F1 over its 8 AUs, in %).
REFERENCES: tuple[str, ...] = ("OpenFace 2.0", "LP-Net")
AVERAGE_12 = "Avg (12 AUs)"
#: Per axis: table number, figure number, row header, x-axis label, file stem.
AXIS_FACTS: dict[str, dict[str, str]] = {
    "images": {
        "table": "IV",
        "figure": "3",
        "header": "Pre-training images",
        "xlabel": "pre-training images (log scale)",
        "stem": "images",
    },
    "identities": {
        "table": "V",
        "figure": "4",
        "header": "People in pre-training",
        "xlabel": "distinct people in pre-training (log scale)",
        "stem": "people",
    },
}
FOOTNOTE = (
    "F1 (%) at threshold 0.5 per fold on that fold's DISFA test subjects, averaged over the folds "
    "(an AU with no positive test frame in a fold is left out of its mean), after pre-training on "
    "the row's subset and fine-tuning with the same protocol. Avg is the mean over the paper's 8 "
    "AUs (the columns); {avg12} over DISFA's 12. Sizes count training images/people (gender-"
    "balanced; 'all' = every labelled training row of the corpus version). Rows marked (paper) "
    "are the paper's own Table {table} and its {refs} rows of Table III, as printed. Best value "
    "per column in bold."
)


def table_columns() -> list[str]:
    return [*PAPER_COMPARISON_AUS, AVERAGE_COLUMN, AVERAGE_12]


def row_label(point: PointResult, axis: str) -> str:
    """``"1,000 images"``, ``"12 people"``, or ``"all (1,203 images)"``."""
    unit = "images" if axis == "images" else "people"
    count = f"{point.x(axis):,} {unit}"
    return f"all ({count})" if point.subset is None else count


def table_rows(points: Sequence[PointResult], axis: str) -> dict[str, dict[str, float]]:
    """The paper's rows (its own table for this axis, and its reference methods), then one row
    per point of this run, smallest first (F1 in %)."""
    rows = paper_rows(AXIS_FACTS[axis]["table"])
    rows.update({f"{name} (paper)": dict(TABLE_III[name]) for name in REFERENCES})
    for point in sorted(points, key=lambda p: p.x(axis)):
        row = {au: 100.0 * point.per_au[au]["f1"] for au in PAPER_COMPARISON_AUS}
        row[AVERAGE_COLUMN] = 100.0 * point.mean("f1", paper8=True)
        row[AVERAGE_12] = 100.0 * point.mean("f1", paper8=False)
        rows[row_label(point, axis)] = row
    return rows


PROBE_NOTE = (
    " Declared cheaper evaluation (--point-eval probe): each row's figures are a linear probe of "
    "the frozen pre-trained features (class-balanced logistic regression per AU on each fold's "
    "training subjects), not a fine-tune; compare rows with each other, not with the paper's."
)


def table_markdown(points: Sequence[PointResult], axis: str, point_eval: str = "finetune") -> str:
    facts = AXIS_FACTS[axis]
    what = "pre-training images" if axis == "images" else "distinct people in pre-training"
    title = f"Table {facts['table']}: F1 (%) on DISFA against the number of {what}\n\n"
    table = markdown_table(
        table_rows(points, axis), table_columns(), row_header=facts["header"], fmt="{:.1f}"
    )
    note = FOOTNOTE.format(avg12=AVERAGE_12, refs=" and ".join(REFERENCES), table=facts["table"])
    if point_eval == "probe":
        note += PROBE_NOTE
    return title + table + "\n" + note + "\n"


def figure_png(points: Sequence[PointResult], axis: str) -> bytes:
    """ROC-AUC, PR-AUC and F1 (8-AU means, %) against size, with the paper's F1 reference lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    facts = AXIS_FACTS[axis]
    ordered = sorted(points, key=lambda p: p.x(axis))
    xs = [p.x(axis) for p in ordered]
    figure = Figure(figsize=(7.0, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    styles = (("roc_auc", "ROC-AUC", "o-"), ("pr_auc", "PR-AUC", "s-"), ("f1", "F1", "D-"))
    for metric, label, style in styles:
        ys = [100.0 * p.mean(metric) for p in ordered]
        ax.plot(xs, [y if math.isfinite(y) else math.nan for y in ys], style, label=label)
    # OpenFace's label goes under its line, LP-Net's over it: the two lines are 3 points apart.
    for name, line, offset in zip(REFERENCES, ("--", ":"), (-11, 3), strict=True):
        value = TABLE_III[name][AVERAGE_COLUMN]
        ax.axhline(value, color="grey", linestyle=line, linewidth=1.2)
        ax.annotate(
            f"{name} F1 {value:.1f} (paper)",
            (0.01, value),
            xycoords=("axes fraction", "data"),
            textcoords="offset points",
            xytext=(0, offset),
            fontsize=8,
            color="dimgrey",
        )
    paper = TABLE_IV if axis == "images" else TABLE_V
    paper_sizes = [size for size in paper if size > 0 and paper[size][AVERAGE_COLUMN] > 0]
    ax.plot(
        paper_sizes,
        [paper[size][AVERAGE_COLUMN] for size in paper_sizes],
        "x--",
        color="grey",
        label=f"F1, the paper's Table {facts['table']} (real data)",
    )
    if xs and max(xs) > 2 * min(xs):
        ax.set_xscale("log")
    ax.set_xticks(
        xs,
        [
            f"{x:,}" + ("\n(all)" if p.subset is None else "")
            for x, p in zip(xs, ordered, strict=True)
        ],
    )
    ax.minorticks_off()
    ax.set_ylim(0, 100)
    ax.set_xlabel(facts["xlabel"])
    ax.set_ylabel("% (mean of the paper's 8 AUs, per fold then averaged)")
    ax.set_title(
        f"Figure {facts['figure']}: DISFA AU detection vs. {facts['xlabel'].split(' (')[0]}"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def point_summary(point: PointResult) -> dict[str, Any]:
    return {
        "key": point.key,
        "axes": point.axes,
        "subset": point.subset,
        "images": point.images,
        "people": point.people,
        "val_images": point.val_images,
        "f1_mean_12": point.mean("f1", paper8=False),
        "f1_mean_paper8": point.mean("f1"),
        "pr_auc_mean_12": point.mean("pr_auc", paper8=False),
        "pr_auc_mean_paper8": point.mean("pr_auc"),
        "roc_auc_mean_12": point.mean("roc_auc", paper8=False),
        "roc_auc_mean_paper8": point.mean("roc_auc"),
        "per_au_f1": {au: point.per_au[au]["f1"] for au in DISFA_AUS if au in point.per_au},
        "per_au": point.per_au,
        "pretrain_epochs": point.pretrain_epochs,
        "pretrain_best_val_loss": point.pretrain_best_val_loss,
        "mlflow_run_ids": {
            "point": point.mlflow_run_id,
            "pretrain": point.pretrain_run_id,
            "finetune": point.finetune_run_id,
        },
        "pretrain_checkpoint": point.pretrain_checkpoint,
        "finetune_report": point.finetune_report,
        "seconds": round(point.seconds, 1),
    }


def summary(result: ScalingResult, facts: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: the shared protocol, every point, and each axis's points in order."""
    return json_ready(
        {
            **facts,
            "run_name": result.run_name,
            "points": [point_summary(p) for p in result.points],
            "axes": {axis: [p.key for p in result.axis(axis)] for axis in AXIS_FACTS},
            "references_f1_paper8": {n: TABLE_III[n][AVERAGE_COLUMN] for n in REFERENCES},
        }
    )


def write_scaling_report(out: str, result: ScalingResult, facts: dict[str, Any]) -> list[str]:
    """Tables IV/V (``table4.md``/``.csv``, ``table5.*``), ``figure3_images.png``,
    ``figure4_people.png`` and ``scaling.json`` into local folder ``out``; the paths written.
    An axis without points writes no table or figure."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def put(name: str, data: str | bytes) -> None:
        path = folder / name
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
        written.append(str(path))

    for axis, facts_of_axis in AXIS_FACTS.items():
        points = result.axis(axis)
        if not points:
            continue
        number = {"IV": "4", "V": "5"}[facts_of_axis["table"]]
        put(
            f"table{number}.md",
            table_markdown(points, axis, facts.get("point_eval", "finetune")),
        )
        put(
            f"table{number}.csv",
            table_csv(
                table_rows(points, axis), table_columns(), row_header=facts_of_axis["header"]
            ),
        )
        put(
            f"figure{facts_of_axis['figure']}_{facts_of_axis['stem']}.png", figure_png(points, axis)
        )
    put("scaling.json", json.dumps(summary(result, facts), indent=2) + "\n")
    return written
