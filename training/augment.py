"""Online face augmentation on the device: one random flip + affine warp per sample, batched."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(kw_only=True)
class AugmentConfig:
    """The training augmentation recipe. Magnitudes are those of the paper's own data reader."""

    enabled: bool = field(default=True, metadata={"help": "Augment training batches at all."})
    hflip_prob: float = field(
        default=0.5, metadata={"help": "Probability of a horizontal (left-right) flip."}
    )
    rotation_degrees: float = field(
        default=20.0, metadata={"help": "Rotation drawn uniformly from [-d, d] degrees."}
    )
    shift: float = field(
        default=0.08,
        metadata={"help": "Shift in x and y, each drawn from [-s, s] as a fraction of the side."},
    )
    scale_min: float = field(default=0.95, metadata={"help": "Lower bound of the zoom factor."})
    scale_max: float = field(default=1.05, metadata={"help": "Upper bound of the zoom factor."})
    skew: float = field(
        default=0.05, metadata={"help": "Shear factors in x and y, each drawn from [-k, k]."}
    )
    strength: float = field(
        default=1.0,
        metadata={
            "help": "Multiplier on all magnitudes (0 = identity); the flip probability is "
            "multiplied by min(strength, 1)."
        },
    )
    padding_mode: str = field(
        default="border",
        metadata={
            "help": "How pixels warped in from outside are filled: border, zeros, reflection."
        },
    )

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.hflip_prob <= 1.0, f"hflip_prob in [0, 1], got {self.hflip_prob}"),
            (self.rotation_degrees >= 0, f"rotation_degrees >= 0, got {self.rotation_degrees}"),
            (0.0 <= self.shift < 1.0, f"shift in [0, 1), got {self.shift}"),
            (
                0 < self.scale_min <= self.scale_max,
                f"0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}",
            ),
            (self.skew >= 0, f"skew >= 0, got {self.skew}"),
            (self.strength >= 0, f"strength >= 0, got {self.strength}"),
            (
                self.padding_mode in ("border", "zeros", "reflection"),
                f"padding_mode one of border/zeros/reflection, got {self.padding_mode!r}",
            ),
        ]
        for ok, expected in checks:
            if not ok:
                raise ValueError(f"AugmentConfig: expected {expected}")
        low, high = self.scale_range
        if low <= 0:
            raise ValueError(
                f"AugmentConfig: strength {self.strength} pushes the smallest zoom to {low:.3f}; "
                "expected it to stay > 0"
            )

    @property
    def scale_range(self) -> tuple[float, float]:
        """Zoom bounds after ``strength``: the distance from 1 is multiplied by it."""
        return (
            1.0 + (self.scale_min - 1.0) * self.strength,
            1.0 + (self.scale_max - 1.0) * self.strength,
        )

    @property
    def effective_hflip_prob(self) -> float:
        return self.hflip_prob * min(self.strength, 1.0)

    @property
    def warps(self) -> bool:
        """Whether any geometric (non-flip) transform is active."""
        low, high = self.scale_range
        magnitudes = (self.rotation_degrees, self.shift, self.skew)
        return self.strength > 0 and (any(m > 0 for m in magnitudes) or low != 1.0 or high != 1.0)


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
