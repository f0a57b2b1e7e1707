"""Pre-training checkpoints: what one holds, how it is written and read back (local or s3://)."""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.storage import Location
from training.model import VGG13, ModelConfig, build_model, strip_wrapper_prefixes

#: The full training state (weights, optimiser, counters), read with ``torch.load``.
STATE_FILE = "training_state.pt"
#: The same facts minus tensors, for people and for tools that do not load torch.
SUMMARY_FILE = "checkpoint.json"


@dataclass
class TrainingState:
    """Everything a worker needs to continue training, and inference needs to use the model."""

    epoch: int  # epochs completed
    model_state: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    #: Mean pixel on the [0, 1] scale subtracted from every input: inference must use it too.
    pixel_mean: float
    optimizer_state: dict[str, Any] | None = None
    #: The value early stopping minimises, at its best epoch: the val loss in pre-training, the
    #: negated monitored score (e.g. -F1) in fine-tuning.
    best_score: float = math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "pixel_mean": self.pixel_mean,
            "model_config": self.model_config,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.epochs_without_improvement,
            "metrics": self.metrics,
        }


def unwrapped_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights on the CPU, without DDP's ``module.`` or compile's ``_orig_mod.``."""
    return {
        strip_wrapper_prefixes(key): value.detach().cpu()
        for key, value in model.state_dict().items()
    }


def save_checkpoint(directory: str | os.PathLike, state: TrainingState) -> Path:
    """Write ``state`` into a local ``directory`` (Ray Train then uploads it to the run's storage)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(asdict(state), directory / STATE_FILE)
    (directory / SUMMARY_FILE).write_text(json.dumps(state.summary(), indent=2, default=float))
    return directory


def load_checkpoint(uri: str | os.PathLike) -> TrainingState:
    """Read a checkpoint folder written by ``save_checkpoint``: a local path or an ``s3://`` URI."""
    location = Location.of(uri).join(STATE_FILE)
    if not location.exists():
        raise FileNotFoundError(
            f"{location.uri}: no {STATE_FILE}; is {uri} a pre-training checkpoint?"
        )
    raw = torch.load(io.BytesIO(location.read_bytes()), map_location="cpu", weights_only=True)
    if "best_val_loss" in raw:  # checkpoints written before the field was named for what it holds
        raw["best_score"] = raw.pop("best_val_loss")
    try:
        return TrainingState(**raw)
    except TypeError as error:
        raise ValueError(f"{location.uri}: unexpected checkpoint contents: {error}") from error


def model_from_state(state: TrainingState) -> VGG13:
    """The checkpoint's network, weights loaded, in eval mode on the CPU."""
    model = build_model(ModelConfig(**state.model_config))
    model.load_state_dict(state.model_state)
    return model.eval()


def load_pretrained(uri: str | os.PathLike) -> tuple[VGG13, float]:
    """``(model, pixel_mean)`` from a pre-training checkpoint, for fine-tuning or inference."""
    state = load_checkpoint(uri)
    return model_from_state(state), state.pixel_mean
