"""Online face augmentation on the device: one random flip + affine warp per sample, batched."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.augment_config import AugmentConfig


class FaceAugment(nn.Module):
    """Random flip, rotation, shift, zoom and shear, with parameters drawn per sample.

    Apply to a float batch ``(N, C, H, W)`` on any device, in training only: like dropout it is
    the identity in eval mode (``augment.eval()`` / ``augment.train(False)``), so a validation
    loop may call it unchanged. Randomness comes from the default generator of the batch's
    device, so ``torch.manual_seed`` makes it reproducible.

    The warp uses bilinear sampling and, by default, replicates border pixels into the corners:
    then it commutes with mean subtraction, and may run before or after ``to_model_input``'s
    normalisation.
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        super().__init__()
        self.config = config or AugmentConfig()

    def extra_repr(self) -> str:
        return repr(self.config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(
                "FaceAugment: expected a float batch (N, C, H, W), "
                f"got {images.dtype} of shape {tuple(images.shape)}"
            )
        config = self.config
        if not (self.training and config.enabled) or images.shape[0] == 0:
            return images
        out = images
        p = config.effective_hflip_prob
        if p > 0:
            flip = torch.rand(images.shape[0], device=images.device) < p
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        if config.warps:
            theta = self.random_sampling_matrices(images.shape[0], images.shape[-2:], images.device)
            grid = F.affine_grid(theta.to(images.dtype), list(out.shape), align_corners=False)
            out = F.grid_sample(
                out, grid, mode="bilinear", padding_mode=config.padding_mode, align_corners=False
            )
            if images.is_contiguous(memory_format=torch.channels_last):
                out = out.contiguous(memory_format=torch.channels_last)
        return out

    def random_sampling_matrices(
        self, n: int, size: torch.Size | tuple[int, int], device: torch.device
    ) -> torch.Tensor:
        """``(n, 2, 3)`` matrices for ``F.affine_grid``: output -> input, normalised coordinates.

        Each sample's forward transform, in pixels about the image centre, is
        ``shift @ rotate @ shear @ zoom``; ``affine_grid`` needs its inverse, expressed in the
        [-1, 1] coordinates of ``align_corners=False``.
        """
        config = self.config
        height, width = size

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, device=device, dtype=torch.float32)

        s = config.strength
        angle = uniform(-1.0, 1.0) * math.radians(config.rotation_degrees) * s
        shift_x = uniform(-1.0, 1.0) * config.shift * s * width
        shift_y = uniform(-1.0, 1.0) * config.shift * s * height
        zoom = uniform(*config.scale_range)
        shear_x = uniform(-1.0, 1.0) * config.skew * s
        shear_y = uniform(-1.0, 1.0) * config.skew * s

        def matrices() -> torch.Tensor:
            return torch.eye(3, device=device).repeat(n, 1, 1)

        rotate = matrices()
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotate[:, 0, 0], rotate[:, 0, 1], rotate[:, 1, 0], rotate[:, 1, 1] = cos, -sin, sin, cos
        shear = matrices()
        shear[:, 0, 1], shear[:, 1, 0] = shear_x, shear_y
        zoom_m = matrices()
        zoom_m[:, 0, 0], zoom_m[:, 1, 1] = zoom, zoom
        shift = matrices()
        shift[:, 0, 2], shift[:, 1, 2] = shift_x, shift_y
        forward = shift @ rotate @ shear @ zoom_m

        to_normalised = torch.diag(torch.tensor([2.0 / width, 2.0 / height, 1.0], device=device))
        to_pixels = torch.diag(torch.tensor([width / 2.0, height / 2.0, 1.0], device=device))
        theta = to_normalised @ torch.linalg.inv(forward) @ to_pixels
        return theta[:, :2, :]


def to_model_input(
    uint8_batch: torch.Tensor,
    mean: float | torch.Tensor,
    *,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 faces ``(N, H, W)`` or ``(N, 1, H, W)`` -> float ``(N, 1, H, W)`` in [0, 1] minus ``mean``.

    ``mean`` is the corpus pixel mean on the same [0, 1] scale (the paper's mean normalisation).
    Call it on the device, after the uint8 batch is moved there: a quarter of the bytes travel.
    """
    if uint8_batch.dtype != torch.uint8:
        raise ValueError(f"to_model_input: expected a uint8 batch, got {uint8_batch.dtype}")
    if uint8_batch.dim() == 3:
        uint8_batch = uint8_batch.unsqueeze(1)
    elif uint8_batch.dim() != 4 or uint8_batch.shape[1] != 1:
        raise ValueError(
            "to_model_input: expected shape (N, H, W) or (N, 1, H, W), "
            f"got {tuple(uint8_batch.shape)}"
        )
    if isinstance(mean, torch.Tensor):
        mean = mean.to(device=uint8_batch.device, dtype=dtype)
    images = uint8_batch.to(dtype) / 255.0 - mean
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images
