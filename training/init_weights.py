"""Where a network's starting weights come from: an MLflow model URI, a checkpoint, or ``scratch``.

One resolver serves fine-tuning (``--pretrained``), prediction (``--model``) and the model-backed
labeler. A source is one of:

- ``scratch``: no weights (random initialisation, the fine-tuning baseline);
- ``models:/<name>/<version>`` (or ``models:/<name>@<alias>``) and ``runs:/<run id>/<path>``: a
  model logged by ``training.model_logging.log_model``, read through the given tracking URI;
- anything else: a checkpoint folder written by ``training.checkpoints.save_checkpoint`` (local
  path or ``s3://`` URI), as pre-training and fine-tuning leave them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from pipeline.vocabulary import DISFA_AUS, OPENFACE_AUS
from training.checkpoints import load_checkpoint
from training.model import (
    CONV_BLOCKS,
    DOWNSAMPLING,
    FC_UNITS,
    VGG13,
    ModelConfig,
    build_model,
    replace_head,
)

SCRATCH = "scratch"
MLFLOW_SCHEMES: tuple[str, ...] = ("models:/", "runs:/")
#: The AU order of a head with this many logits, when the model does not say.
AUS_BY_OUTPUTS: dict[int, tuple[str, ...]] = {
    len(OPENFACE_AUS): OPENFACE_AUS,
    len(DISFA_AUS): DISFA_AUS,
}


class InitError(ValueError):
    """A weight source that cannot be read or does not hold a facs VGG13."""


@dataclass
class InitWeights:
    """Weights and the facts needed to use them; ``state_dict`` is None for ``scratch``.

    Picklable (tensors and plain values), so it travels to Ray Train workers and Ray Data actors.
    """

    source: str
    state_dict: dict[str, torch.Tensor] | None = None
    model_config: dict[str, Any] | None = None
    #: Mean pixel on the [0, 1] scale the weights were trained with (None when unknown).
    pixel_mean: float | None = None
    #: The AU of each output logit, in order.
    au_names: tuple[str, ...] = ()

    @property
    def is_scratch(self) -> bool:
        return self.state_dict is None

    def config(self) -> ModelConfig:
        if self.model_config is None:
            raise InitError(f"{self.source}: no model configuration (scratch has none)")
        return model_config_from_dict(self.model_config, self.source)


def model_config_from_dict(values: dict[str, Any], source: str = "model") -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InitError(f"{source}: unknown model config keys {unknown}; expected {sorted(known)}")
    return ModelConfig(**values)


def au_names_for(num_outputs: int, declared: Any = None, source: str = "model") -> tuple[str, ...]:
    """The AU of each logit: as ``declared`` (a list or comma-separated text), else by head size."""
    if declared:
        names = tuple(declared.split(",") if isinstance(declared, str) else declared)
        if len(names) != num_outputs:
            raise InitError(
                f"{source}: declares {len(names)} AU names {list(names)} for {num_outputs} outputs"
            )
        return names
    if num_outputs not in AUS_BY_OUTPUTS:
        raise InitError(
            f"{source}: a head of {num_outputs} outputs matches no known AU list "
            f"(17 OpenFace AUs or 12 DISFA AUs) and the model declares no au_names"
        )
    return AUS_BY_OUTPUTS[num_outputs]


def is_mlflow_uri(source: str) -> bool:
    return source.startswith(MLFLOW_SCHEMES)


def infer_model_config(
    state_dict: dict[str, torch.Tensor], source: str = "model", base: ModelConfig | None = None
) -> ModelConfig:
    """The ``ModelConfig`` whose VGG13 has exactly these weight shapes.

    MLflow 3 saves PyTorch models with ``torch.export``, which loads back as a ``GraphModule``
    with the VGG13's parameter names but without its config. Dropout rates cannot be read from
    weights; they come from ``base`` (the defaults unless given).
    """
    base = base or ModelConfig()
    try:
        first = state_dict["conv_blocks.0.conv1.weight"]
        last = state_dict[f"conv_blocks.{len(CONV_BLOCKS) - 1}.conv1.weight"]
        fc1 = state_dict["classifier.fc1.weight"]
        head = state_dict["head.weight"]
    except KeyError as error:
        raise InitError(f"{source}: not a facs VGG13 state (missing {error})") from None
    side = math.isqrt(fc1.shape[1] // last.shape[0])
    candidates = [fc1.shape[0] / FC_UNITS, last.shape[0] / CONV_BLOCKS[-1][0], first.shape[0] / 64]
    batch_norm = any(".bn1." in key for key in state_dict)
    for width in candidates:
        try:
            config = replace(
                base,
                width=width,
                in_channels=int(first.shape[1]),
                num_outputs=int(head.shape[0]),
                input_size=side * DOWNSAMPLING,
                batch_norm=batch_norm,
            )
        except ValueError:  # shapes no ModelConfig can have
            continue
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in build_model(config).state_dict().items()}
        if shapes == {k: v.shape for k, v in state_dict.items()}:
            return config
    raise InitError(f"{source}: its weight shapes match no VGG13 configuration")


def _from_mlflow(source: str, tracking_uri: str | None) -> InitWeights:
    import mlflow

    from training.model_logging import process_uris
    from training.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    try:
        with process_uris(uri):
            info = mlflow.models.get_model_info(source)
            model = mlflow.pytorch.load_model(source, map_location="cpu")
    except Exception as error:  # MLflow raises many types (MlflowException, OSError, ...)
        raise InitError(f"{source}: cannot load the model from {uri}: {error}") from error
    if not isinstance(model, torch.nn.Module):
        raise InitError(f"{source}: expected a PyTorch model, found {type(model).__name__}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    metadata = info.metadata or {}
    if isinstance(model, VGG13):
        config = model.config
    elif isinstance(metadata.get("model_config"), dict):
        config = model_config_from_dict(dict(metadata["model_config"]), source)
    else:
        config = infer_model_config(state, source)
    mean = metadata.get("pixel_mean")
    return InitWeights(
        source=source,
        state_dict=state,
        model_config=asdict(config),
        pixel_mean=float(mean) if mean is not None else None,
        au_names=au_names_for(config.num_outputs, metadata.get("au_names"), source),
    )


def _from_checkpoint(source: str) -> InitWeights:
    try:
        state = load_checkpoint(source)
    except FileNotFoundError as error:
        raise InitError(
            f"{source}: not 'scratch', not an MLflow URI (models:/..., runs:/...) and not a "
            f"checkpoint folder ({error})"
        ) from error
    config = model_config_from_dict(dict(state.model_config), source)
    return InitWeights(
        source=source,
        state_dict=dict(state.model_state),
        model_config=asdict(config),
        pixel_mean=float(state.pixel_mean),
        au_names=au_names_for(config.num_outputs, None, source),
    )


def resolve_init(source: str, tracking_uri: str | None = None) -> InitWeights:
    """Read the weights ``source`` names (module docstring); ``scratch`` gives no weights."""
    source = str(source).strip()
    if not source:
        raise InitError("no weight source given: expected 'scratch', an MLflow URI or a checkpoint")
    if source == SCRATCH:
        return InitWeights(source=SCRATCH)
    if is_mlflow_uri(source):
        return _from_mlflow(source, tracking_uri)
    if "://" not in source:
        source = os.path.abspath(os.path.expanduser(source))
    return _from_checkpoint(source)


def initial_model(
    init: InitWeights,
    scratch_config: ModelConfig,
    num_outputs: int,
    *,
    replace: bool = True,
    head_rows_for: Sequence[str] | None = None,
) -> VGG13:
    """The network fine-tuning starts from: ``init``'s weights with a new ``num_outputs`` head
    (``replace``), or a fresh network of ``scratch_config`` with ``num_outputs`` logits.

    ``head_rows_for`` (the new head's AU names): start each new logit from the pre-trained
    head's row of the same AU instead of a fresh one (every DISFA AU is among OpenFace's 17).
    Call under ``torch.manual_seed`` for a reproducible head (and scratch) initialisation.
    """
    if init.is_scratch:
        config = ModelConfig(**{**asdict(scratch_config), "num_outputs": num_outputs})
        return build_model(config)
    model = build_model(init.config())
    try:
        model.load_state_dict(init.state_dict)
    except RuntimeError as error:
        raise InitError(
            f"{init.source}: weights do not fit its own model config: {error}"
        ) from error
    if replace:
        old_weight, old_bias = model.head.weight.detach().clone(), model.head.bias.detach().clone()
        replace_head(model, num_outputs)
        if head_rows_for is not None:
            copy_head_rows(model, old_weight, old_bias, init.au_names, head_rows_for, init.source)
    elif model.num_outputs != num_outputs:
        raise InitError(f"{init.source}: has {model.num_outputs} outputs, expected {num_outputs}")
    return model


def copy_head_rows(
    model: VGG13,
    weight: torch.Tensor,
    bias: torch.Tensor,
    from_aus: Sequence[str],
    to_aus: Sequence[str],
    source: str = "model",
) -> None:
    """Set the head's logit of each AU in ``to_aus`` to the row of that AU in ``from_aus``."""
    if len(to_aus) != model.num_outputs:
        raise InitError(f"{source}: {len(to_aus)} AU names for a head of {model.num_outputs}")
    missing = [au for au in to_aus if au not in from_aus]
    if missing:
        raise InitError(
            f"{source}: its head has no logit for {missing} (it predicts {list(from_aus)}); "
            "start those from a fresh head instead"
        )
    rows = [list(from_aus).index(au) for au in to_aus]
    with torch.no_grad():
        model.head.weight.copy_(weight[rows])
        model.head.bias.copy_(bias[rows])


def trained_model(init: InitWeights) -> VGG13:
    """The network exactly as saved (head included), in eval mode on the CPU, for inference."""
    if init.is_scratch:
        raise InitError("'scratch' has no trained weights to predict with")
    return initial_model(init, init.config(), init.config().num_outputs, replace=False).eval()
