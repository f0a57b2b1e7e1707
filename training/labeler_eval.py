"""Scores a labeler (OpenFace 2.0's own outputs) on exactly each fold's test frames.

The paper compares its model with "the F1 score performance of the OpenFace 2.0 classifier ...
calculated on the DISFA dataset"; here the labeler's per-video CSVs are joined to the cached test
frames of every fold by frame name, so the labeler and the fine-tuned models are scored on the
same frames with the same metrics. Frames the labeler did not track count as predicted absent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline.disfa import DisfaFrames, Fold
from pipeline.disfa.labeler_outputs import SCORED_COLUMN, read_labeler_outputs
from pipeline.vocabulary import DISFA_AUS
from training.evaluate import CVMetrics, FoldPredictions, evaluate_folds

_FRAME_COLUMNS = ["image_name", "subject", "frame", *DISFA_AUS]


def labeler_fold_predictions(
    frames: DisfaFrames, folds: Sequence[Fold], outputs: pa.Table
) -> tuple[list[FoldPredictions], int]:
    """Each fold's test frames with the labeler's 0/1 outputs as probabilities, and how many
    test frames it left unscored (no CSV row, or a tracking failure)."""
    predicted = {
        name: i for i, name in enumerate(outputs["image_name"].to_pylist())
    }  # frame name -> row
    scored = np.asarray(outputs[SCORED_COLUMN].to_numpy(zero_copy_only=False), bool)
    presence = np.stack(
        [outputs[au].to_numpy(zero_copy_only=False) for au in DISFA_AUS], axis=1
    ).astype(np.float64)
    result, unscored = [], 0
    for fold in folds:
        table = frames.table(fold.test_subjects, columns=_FRAME_COLUMNS)
        rows = np.array([predicted.get(name, -1) for name in table["image_name"].to_pylist()])
        covered = rows >= 0
        y_prob = np.zeros((table.num_rows, len(DISFA_AUS)))
        y_prob[covered] = presence[rows[covered]]
        ok = covered.copy()
        ok[covered] = scored[rows[covered]]
        unscored += int((~ok).sum())
        y_true = np.stack(
            [table[au].to_numpy(zero_copy_only=False) for au in DISFA_AUS], axis=1
        ).astype(np.int64)
        result.append(
            FoldPredictions(
                fold=fold.index,
                subjects=np.asarray(table["subject"].to_pylist(), dtype=str),
                frames=table["frame"].to_numpy(zero_copy_only=False).astype(np.int64),
                y_true=y_true,
                y_prob=y_prob,
            )
        )
    return result, unscored


def evaluate_labeler(
    frames: DisfaFrames,
    folds: Sequence[Fold],
    folder: str,
    *,
    camera: str = "right",
    threshold: float = 0.5,
) -> tuple[CVMetrics, list[FoldPredictions]]:
    """The labeler's CSVs under ``folder`` scored on every fold's test frames."""
    subjects = sorted({s for fold in folds for s in fold.test_subjects})
    outputs = read_labeler_outputs(folder, subjects, camera)
    predictions, unscored = labeler_fold_predictions(frames, folds, outputs)
    return evaluate_folds(predictions, threshold, unscored_frames=unscored), predictions
