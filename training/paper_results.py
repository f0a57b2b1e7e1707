"""The paper's published DISFA figures (Fung & McDuff, Tables III-V), to print beside a run's rows.

F1 (%) at threshold 0.5, subject-independent 3-fold cross-validation on DISFA, per AU for the 8
AUs the paper compares and their average ("Avg"), as printed in the paper. The paper's model also
reports a mean PR-AUC of 0.45 and ROC-AUC of 0.86 over those AUs. The tests check these against
the copy in ``../shared/data/paper/tables.csv`` when it is present.
"""

from __future__ import annotations

from pipeline.vocabulary import PAPER_COMPARISON_AUS

AVERAGE_COLUMN = "Avg"


def _row(*values: float) -> dict[str, float]:
    if len(values) != len(PAPER_COMPARISON_AUS) + 1:
        raise ValueError(f"expected {len(PAPER_COMPARISON_AUS)} AU figures and the average")
    return dict(zip([*PAPER_COMPARISON_AUS, AVERAGE_COLUMN], values, strict=True))


#: Table III: the comparison methods and the paper's pre-trained VGG13.
TABLE_III: dict[str, dict[str, float]] = {
    "OpenFace 2.0": _row(41.9, 34.7, 66.7, 42.6, 36.3, 60.8, 90.3, 55.8, 53.6),
    "LP-Net": _row(29.9, 24.7, 72.7, 46.8, 49.6, 72.9, 93.8, 65.0, 56.9),
    "Fung & McDuff": _row(41.5, 49.5, 70.2, 46.2, 47.9, 75.6, 90.7, 57.6, 59.9),
}
#: Table IV: F1 against the number of pre-training images.
TABLE_IV: dict[int, dict[str, float]] = {
    1_000: _row(0.0, 0.1, 35.4, 33.7, 0.4, 69.3, 71.8, 13.5, 28.0),
    2_000: _row(19.8, 20.7, 54.1, 41.0, 11.7, 73.0, 79.6, 17.9, 39.7),
    10_000: _row(8.5, 35.9, 61.6, 46.7, 34.7, 73.7, 83.0, 12.9, 44.6),
    160_000: _row(41.5, 49.5, 70.2, 46.2, 47.9, 75.6, 90.7, 57.6, 59.9),
}
#: Table V: F1 against the number of distinct people in pre-training (2,000 = all, ~1,995).
TABLE_V: dict[int, dict[str, float]] = {
    12: _row(0, 0, 0, 0, 0, 0, 0, 0, 0),
    200: _row(19.0, 38.8, 64.6, 41.3, 23.4, 74.9, 84.5, 18.8, 45.7),
    600: _row(27.9, 21.8, 68.5, 50.2, 43.8, 74.2, 89.0, 19.2, 49.3),
    1_000: _row(48.0, 54.6, 70.8, 49.2, 45.2, 73.9, 88.9, 37.4, 58.5),
    2_000: _row(41.5, 49.5, 70.2, 46.2, 47.9, 75.6, 90.7, 57.6, 59.9),
}
#: The paper's own model, mean over the 8 AUs (fractions).
PAPER_PR_AUC, PAPER_ROC_AUC = 0.45, 0.86


def paper_rows(table: str) -> dict[str, dict[str, float]]:
    """Table ``"III"``, ``"IV"`` or ``"V"`` as ``{row label: {AU..., Avg}}``, labelled "(paper)"."""
    if table == "III":
        return {f"{name} (paper)": dict(row) for name, row in TABLE_III.items()}
    if table == "IV":
        return {f"{size:,} images (paper)": dict(row) for size, row in TABLE_IV.items()}
    if table == "V":
        return {f"{size:,} people (paper)": dict(row) for size, row in TABLE_V.items()}
    raise ValueError(f"paper table: expected III, IV or V, got {table!r}")
