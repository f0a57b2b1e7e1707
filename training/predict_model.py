"""`facs predict`'s model stage: trained weights loaded for inference, and the actor that scores faces."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline.vocabulary import FACE_SIZE
from training.augment import to_model_input
from training.data import faces_from_arrow
from training.init_weights import InitError, InitWeights, resolve_init, trained_model


def load_predictor_weights(model: str, tracking_uri: str | None) -> InitWeights:
    if not model:
        raise ValueError(
            "PredictConfig.model: expected a model (models:/..., runs:/..., checkpoint)"
        )
    init = resolve_init(model, tracking_uri)
    if init.is_scratch:
        raise InitError(
            "'scratch' is not a trained model; give models:/..., runs:/... or a checkpoint"
        )
    if init.pixel_mean is None:
        raise InitError(
            f"{model}: no pixel_mean in its metadata; inference needs the training mean"
        )
    return init


def au_columns(au_names: tuple[str, ...]) -> list[str]:
    return [f"{au}_p" for au in au_names] + [f"{au}_c" for au in au_names]


def predict_probabilities(
    model: torch.nn.Module, faces: np.ndarray, pixel_mean: float, device: torch.device
) -> np.ndarray:
    """``(N, 64, 64)`` uint8 faces -> ``(N, K)`` float32 sigmoid probabilities."""
    if len(faces) == 0:
        return np.zeros((0, model.num_outputs), np.float32)
    with torch.no_grad():
        batch = torch.from_numpy(np.ascontiguousarray(faces)).to(device)
        logits = model(to_model_input(batch, pixel_mean))
        return torch.sigmoid(logits.float()).cpu().numpy()


class AUPredictor:
    """One actor's model: scores the rows that carry a face, drops the pixels."""

    def __init__(self, init: InitWeights, threshold: float) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = trained_model(init).to(self.device)
        self.pixel_mean = float(init.pixel_mean)
        self.au_names = tuple(init.au_names)
        self.threshold = threshold

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        with_face = pc.equal(pc.binary_length(batch.column("face")), FACE_SIZE * FACE_SIZE)
        mask = with_face.to_numpy(zero_copy_only=False).astype(bool) if n else np.zeros(0, bool)
        faces = faces_from_arrow(batch.column("face").filter(with_face), where="predict batch")
        probs = np.zeros((n, len(self.au_names)), np.float32)
        probs[mask] = predict_probabilities(self.model, faces, self.pixel_mean, self.device)
        out = batch.drop_columns(["face"])
        missing = ~mask
        for k, au in enumerate(self.au_names):
            out = out.append_column(f"{au}_p", pa.array(probs[:, k], pa.float32(), mask=missing))
        for k, au in enumerate(self.au_names):
            present = (probs[:, k] >= self.threshold).astype(np.int8)
            out = out.append_column(f"{au}_c", pa.array(present, pa.int8(), mask=missing))
        return out
