"""A trainer-free linear probe: how good a pre-trained network's frozen features are for DISFA.

The declared cheaper evaluation of a scaling point (``facs experiment scaling --point-eval
probe``). Per fold, the frozen network (conv blocks and both FC layers, in inference mode)
embeds that fold's frames once, mean-normalised with the fold's training frames' pixel mean as
fine-tuning does; per AU, a class-balanced logistic regression on the standardised embeddings of
the training subjects scores the test subjects' frames. The validation subjects are not used
(nothing is selected). Metrics are then exactly fine-tuning's: per fold, per AU, averaged.

Why not the frozen fine-tune it replaces: three Ray Train runs per point (about 20 s of start-up
each) plus epochs of the same fixed features; this is one forward pass per fold and 36 small
convex fits, seconds on a CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pipeline.disfa import DisfaFrames, Fold
from pipeline.vocabulary import DISFA_AUS
from training.augment import to_model_input
from training.data import FACE_COLUMN, faces_from_arrow, labels_from_arrow
from training.evaluate import CVMetrics, FoldPredictions, evaluate_folds
from training.model import VGG13

#: Inverse regularisation strength of every per-AU fit (standardised features).
PROBE_C = 1.0
EMBED_BATCH = 256


@dataclass
class FrameSet:
    """Frames of some subjects in memory: faces ``(N, 64, 64)`` uint8, labels ``(N, 12)``."""

    faces: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    frames: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table) -> FrameSet:
        return cls(
            faces=faces_from_arrow(table.column(FACE_COLUMN), where="DISFA frames"),
            labels=labels_from_arrow(table, "DISFA frames", DISFA_AUS),
            subjects=np.asarray(table.column("subject").to_pylist(), dtype=str),
            frames=table.column("frame").to_numpy(zero_copy_only=False).astype(np.int64),
        )

    def of(self, subjects: Sequence[str]) -> FrameSet:
        keep = np.isin(self.subjects, list(subjects))
        return FrameSet(self.faces[keep], self.labels[keep], self.subjects[keep], self.frames[keep])


@torch.no_grad()
def embed(model: VGG13, faces: np.ndarray, pixel_mean: float) -> np.ndarray:
    """The network's penultimate features of every face, in inference mode, on the CPU."""
    model.eval()
    parts = [
        model.features(to_model_input(torch.from_numpy(faces[i : i + EMBED_BATCH]), pixel_mean))
        for i in range(0, len(faces), EMBED_BATCH)
    ]
    width = model.head.in_features
    return torch.cat(parts).numpy() if parts else np.zeros((0, width), np.float32)


def fit_and_score(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, c: float = PROBE_C
) -> np.ndarray:
    """Per AU column, a class-balanced logistic regression fit on ``train``; test probabilities.

    An AU with a single class among the training frames gets that class's constant probability
    (no boundary can be learnt from it).
    """
    scaler = StandardScaler().fit(train_x)
    train_z, test_z = scaler.transform(train_x), scaler.transform(test_x)
    probs = np.zeros((len(test_x), train_y.shape[1]), np.float32)
    for k in range(train_y.shape[1]):
        column = train_y[:, k]
        if column.min() == column.max():
            probs[:, k] = float(column[0]) if len(column) else 0.0
            continue
        fit = LogisticRegression(C=c, class_weight="balanced", max_iter=500)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit.fit(train_z, column)
        probs[:, k] = fit.predict_proba(test_z)[:, 1]
    return probs


def probe_fold(model: VGG13, everyone: FrameSet, fold: Fold, c: float = PROBE_C) -> FoldPredictions:
    """One fold: fit on its training subjects' frames, predict its test subjects' frames."""
    train, test = everyone.of(fold.train_subjects), everyone.of(fold.test_subjects)
    if not len(train.faces) or not len(test.faces):
        raise ValueError(
            f"fold {fold.index}: the probe needs training and test frames; got "
            f"{len(train.faces)} and {len(test.faces)}"
        )
    mean = float(train.faces.mean(dtype=np.float64)) / 255.0
    probs = fit_and_score(embed(model, train.faces, mean), train.labels,
                          embed(model, test.faces, mean), c)  # fmt: skip
    return FoldPredictions(fold.index, test.subjects, test.frames, test.labels, probs, DISFA_AUS)


def probe_cross_validation(
    model: VGG13,
    frames: DisfaFrames,
    folds: Sequence[Fold],
    threshold: float = 0.5,
    c: float = PROBE_C,
) -> CVMetrics:
    """Every fold's probe, evaluated per fold and per AU as fine-tuning is."""
    columns = [FACE_COLUMN, "subject", "frame", *DISFA_AUS]
    everyone = FrameSet.from_table(frames.table(columns=columns))
    return evaluate_folds([probe_fold(model, everyone, fold, c) for fold in folds], threshold)
