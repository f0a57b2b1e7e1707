"""A `pipeline.labels.Labeler` backed by a trained model, so `facs corpus add` can self-train."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.labels import NO_LABEL, LabelBatch, Labeler
from pipeline.vocabulary import FACE_SIZE, OPENFACE_AUS
from training.init_weights import InitWeights, trained_model
from training.model import VGG13
from training.predict_model import load_predictor_weights, predict_probabilities


class ModelLabeler(Labeler):
    """Labels faces with a model's presence predictions (probability >= ``threshold``).

    The corpus stores the 17 OpenFace AUs: a model that predicts all of them (a pre-trained one)
    fills every column; one that predicts fewer (a DISFA model: 12) leaves the others as
    ``fill_missing`` (``NO_LABEL`` by default, stored as null). An all-black face (the corpus build
    passes zeros for rows it already rejected) is not scored and gets ``NO_LABEL``.

    Picklable and cheap to ship to Ray workers: it carries the weights as tensors and builds the
    network on first use in each process.
    """

    def __init__(
        self,
        weights: InitWeights,
        *,
        threshold: float = 0.5,
        name: str | None = None,
        batch_size: int = 256,
        fill_missing: int = NO_LABEL,
    ) -> None:
        if weights.is_scratch or weights.pixel_mean is None:
            raise ValueError(
                f"ModelLabeler: {weights.source} is not a trained model with a pixel mean"
            )
        if not 0 < threshold < 1:
            raise ValueError(f"ModelLabeler: expected threshold in (0, 1), got {threshold}")
        if fill_missing not in (NO_LABEL, 0, 1):
            raise ValueError(f"ModelLabeler: fill_missing must be -1, 0 or 1, got {fill_missing}")
        self.weights = weights
        self.threshold = threshold
        self.batch_size = batch_size
        self.fill_missing = fill_missing
        self.name = name or f"model:{weights.source}"
        #: Column of each model output in OPENFACE_AUS order; outputs for other AUs are dropped.
        self._columns = [
            (k, OPENFACE_AUS.index(au))
            for k, au in enumerate(weights.au_names)
            if au in OPENFACE_AUS
        ]
        self._model: VGG13 | None = None

    @classmethod
    def from_source(cls, source: str, tracking_uri: str | None = None, **kwargs) -> ModelLabeler:
        """``models:/...``, ``runs:/...`` or a checkpoint folder (see ``training.init_weights``)."""
        return cls(load_predictor_weights(source, tracking_uri), **kwargs)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_model"] = None  # rebuilt from the weights in the receiving process
        return state

    @property
    def model(self) -> VGG13:
        if self._model is None:
            self._model = trained_model(self.weights)
        return self._model

    def probabilities(self, faces: np.ndarray) -> np.ndarray:
        """``(N, 64, 64)`` uint8 -> ``(N, K)`` probabilities of the model's AUs."""
        faces = np.asarray(faces)
        if faces.dtype != np.uint8 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE):
            raise ValueError(
                f"ModelLabeler: expected (N, {FACE_SIZE}, {FACE_SIZE}) uint8 faces, got "
                f"{faces.shape} {faces.dtype}"
            )
        parts = [
            predict_probabilities(
                self.model,
                faces[i : i + self.batch_size],
                float(self.weights.pixel_mean),
                torch.device("cpu"),
            )
            for i in range(0, len(faces), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.weights.au_names)))

    def label_batch(self, image_names: Sequence[str], faces: np.ndarray) -> LabelBatch:
        n = len(image_names)
        if len(faces) != n:
            raise ValueError(f"ModelLabeler: {n} image names but {len(faces)} faces")
        au = np.full((n, len(OPENFACE_AUS)), self.fill_missing, dtype=np.int8)
        blank = ~np.asarray(faces).reshape(n, -1).any(axis=1) if n else np.zeros(0, bool)
        scored = np.flatnonzero(~blank)
        if len(scored):
            probs = self.probabilities(np.asarray(faces)[scored])
            for k, column in self._columns:
                au[scored, column] = (probs[:, k] >= self.threshold).astype(np.int8)
        au[blank] = NO_LABEL
        return LabelBatch(
            au=au,
            gender=[None] * n,
            label_source=[self.name] * n,
            label_reject=[None] * n,
        )
