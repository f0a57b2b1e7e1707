"""The paper's modified VGG13 (Table I): four conv blocks, two FC layers, a replaceable head."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from typing import NamedTuple

import torch
from torch import nn

from training.model_config import CONV_BLOCKS, DOWNSAMPLING, FC_UNITS, ModelConfig


def scaled(units: int, width: float) -> int:
    """``units * width`` rounded, never below one."""
    return max(1, round(units * width))


class VGG13(nn.Module):
    """Conv blocks -> two FC-ReLU-dropout layers -> ``head`` (logits; apply sigmoid at inference).

    ``conv_blocks[i]`` is block ``i`` (conv-ReLU pairs, 2x2 max-pool, dropout) so that the first
    ``k`` can be frozen; ``head`` is a plain ``nn.Linear`` so fine-tuning can swap it.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        config = config or ModelConfig()
        if config.width <= 0:
            raise ValueError(f"ModelConfig.width: expected > 0, got {config.width}")
        if config.input_size <= 0 or config.input_size % DOWNSAMPLING:
            raise ValueError(
                f"ModelConfig.input_size: expected a positive multiple of {DOWNSAMPLING}, "
                f"got {config.input_size}"
            )
        self.config = replace(config)  # a copy: replace_head updates num_outputs
        #: How many leading conv blocks ``freeze_conv_blocks`` froze (their BatchNorm stays in eval).
        self.frozen_blocks = 0
        #: Whether ``freeze_classifier`` froze the FC layers (their dropout then stays off).
        self.frozen_classifier = False

        blocks = []
        channels = config.in_channels
        for channel_counts in CONV_BLOCKS:
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            for i, out_units in enumerate(channel_counts, start=1):
                out_channels = scaled(out_units, config.width)
                layers[f"conv{i}"] = nn.Conv2d(
                    channels, out_channels, kernel_size=3, padding=1, bias=not config.batch_norm
                )
                if config.batch_norm:
                    layers[f"bn{i}"] = nn.BatchNorm2d(out_channels)
                layers[f"relu{i}"] = nn.ReLU(inplace=True)
                channels = out_channels
            layers["pool"] = nn.MaxPool2d(kernel_size=2, stride=2)
            layers["dropout"] = nn.Dropout(config.dropout_conv)
            blocks.append(nn.Sequential(layers))
        self.conv_blocks = nn.ModuleList(blocks)

        side = config.input_size // DOWNSAMPLING
        fc_units = scaled(FC_UNITS, config.width)
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(channels * side * side, fc_units),
                relu1=nn.ReLU(inplace=True),
                dropout1=nn.Dropout(config.dropout_fc),
                fc2=nn.Linear(fc_units, fc_units),
                relu2=nn.ReLU(inplace=True),
                dropout2=nn.Dropout(config.dropout_fc),
            )
        )
        self.head = nn.Linear(fc_units, config.num_outputs)
        self.apply(init_weights)

    @property
    def num_outputs(self) -> int:
        return self.head.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate representation (after the second FC layer), before the head."""
        for block in self.conv_blocks:
            x = block(x)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> VGG13:
        super().train(mode)
        # Frozen blocks must not keep updating BatchNorm running statistics; their dropout stays
        # on while layers above them learn. A frozen classifier means a linear probe: everything
        # frozen then runs as in inference (no dropout), so the head sees fixed features.
        for block in self.conv_blocks[: self.frozen_blocks]:
            for module in block.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) or self.frozen_classifier:
                    module.eval()
        if self.frozen_classifier:
            self.classifier.eval()
        return self


def init_weights(module: nn.Module) -> None:
    """He initialisation for convs (ReLU follows), small normal for linears, zero biases.

    The scheme torchvision uses for its VGGs: a 10-conv net without BatchNorm trains poorly from
    PyTorch's default (uniform, gain for leaky ReLU a=sqrt(5)).
    """
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.01)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_model(config: ModelConfig | None = None) -> VGG13:
    return VGG13(config or ModelConfig())


def replace_head(model: VGG13, num_outputs: int) -> None:
    """Swap the output layer for a freshly initialised one with ``num_outputs`` logits (in place)."""
    if num_outputs < 1:
        raise ValueError(f"replace_head: expected num_outputs >= 1, got {num_outputs}")
    old = model.head
    head = nn.Linear(old.in_features, num_outputs)
    init_weights(head)
    model.head = head.to(device=old.weight.device, dtype=old.weight.dtype)
    model.config.num_outputs = num_outputs


def freeze_conv_blocks(model: VGG13, k: int) -> None:
    """Freeze the first ``k`` conv blocks (0-4) and make the remaining ones trainable.

    Frozen parameters get ``requires_grad=False`` (leave them out of the optimiser, or let it skip
    them: they never receive a gradient), and BatchNorm layers in frozen blocks stay in eval mode.
    The FC layers and head are not touched.
    """
    n = len(model.conv_blocks)
    if not 0 <= k <= n:
        raise ValueError(f"freeze_conv_blocks: expected 0 <= k <= {n}, got {k}")
    for i, block in enumerate(model.conv_blocks):
        for param in block.parameters():
            param.requires_grad_(i >= k)
    model.frozen_blocks = k
    model.train(model.training)


def freeze_classifier(model: VGG13, frozen: bool = True) -> None:
    """Freeze (or unfreeze) the two FC layers; frozen, their dropout is off as in inference.

    With all four conv blocks frozen too, only the head learns: a linear probe of the
    pre-trained features.
    """
    for param in model.classifier.parameters():
        param.requires_grad_(not frozen)
    model.frozen_classifier = frozen
    model.train(model.training)


class BackboneLoad(NamedTuple):
    """What ``load_backbone`` did: keys it could not fill, keys it ignored, head keys it skipped."""

    missing: list[str]
    unexpected: list[str]
    skipped_head: list[str]


#: Prefixes that wrappers add to state-dict keys: DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def load_backbone(
    model: VGG13,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "state_dict",
) -> BackboneLoad:
    """Load every weight except the head's (whose shape may differ: 17 AUs -> 12 AUs).

    Keys wrapped by DDP (``module.``) or ``torch.compile`` (``_orig_mod.``) are unwrapped. With
    ``strict`` (the default) any missing or unexpected backbone key, or a shape mismatch, raises
    ``ValueError`` listing them and naming ``source`` (e.g. the checkpoint's path); otherwise the
    lists come back in the result. Shape mismatches always raise: they mean a different ``width``.
    """
    own = model.state_dict()
    backbone: dict[str, torch.Tensor] = {}
    skipped_head: list[str] = []
    unexpected: list[str] = []
    mismatched: list[str] = []
    for raw_key, tensor in state_dict.items():
        key = strip_wrapper_prefixes(raw_key)
        if key.startswith("head."):
            skipped_head.append(key)
        elif key not in own:
            unexpected.append(key)
        elif own[key].shape != tensor.shape:
            mismatched.append(
                f"{key}: {tuple(tensor.shape)} in {source}, model expects {tuple(own[key].shape)}"
            )
        else:
            backbone[key] = tensor
    if mismatched:
        raise ValueError(
            f"load_backbone: shape mismatch between {source} and the model "
            f"(was it trained at another width or with other in_channels?):\n  "
            + "\n  ".join(mismatched)
        )
    missing = sorted(k for k in own if not k.startswith("head.") and k not in backbone)
    if strict and (missing or unexpected):
        raise ValueError(
            f"load_backbone: {source} does not match the model's backbone; "
            f"missing keys {missing or 'none'}; unexpected keys {sorted(unexpected) or 'none'}"
        )
    model.load_state_dict(backbone, strict=False)
    return BackboneLoad(missing=missing, unexpected=sorted(unexpected), skipped_head=skipped_head)
