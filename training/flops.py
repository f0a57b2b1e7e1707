"""Parameter and FLOP counts of a model, for throughput (samples/s -> FLOP/s) and scaling reports."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.vocabulary import FACE_SIZE


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_sample(
    model: nn.Module,
    input_shape: Sequence[int] = (1, FACE_SIZE, FACE_SIZE),
    training: bool = True,
) -> int:
    """FLOPs for one sample of ``input_shape`` (C, H, W), as ``torch.utils.flop_counter`` counts.

    The counter counts a multiply-add as 2 FLOPs and covers matmuls and convolutions only (ReLU,
    pooling, dropout, the loss and the optimiser step are not counted). With ``training`` it adds
    the backward pass, about twice the forward: a gradient for each layer's weights and for its
    input, except the input of the first layer, which needs none. Frozen parameters
    (``requires_grad=False``) get no weight gradient and are not counted, as in real training.

    The model's ``.grad`` fields and train/eval mode are left as they were.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros((1, *input_shape), device=device, dtype=dtype)
    was_training = model.training
    model.train(training)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            if training:
                out = model(x)
                params = [p for p in model.parameters() if p.requires_grad]
                # autograd.grad, not backward(): counts the same work without touching .grad.
                torch.autograd.grad(out.sum(), params, allow_unused=True)
            else:
                with torch.no_grad():
                    model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
