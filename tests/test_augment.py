"""Batched face augmentation and uint8 -> model input conversion."""

from __future__ import annotations

import math
import time

import pytest
import torch

from training.augment import AugmentConfig, FaceAugment, to_model_input

SIDE = 64
CENTRE = (SIDE - 1) / 2  # pixel centres run 0..63, so the image centre is at 31.5
NO_WARP = {"rotation_degrees": 0.0, "shift": 0.0, "scale_min": 1.0, "scale_max": 1.0, "skew": 0.0}


def blobs(n: int, dx: float, dy: float, sigma: float = 1.5) -> torch.Tensor:
    """``n`` identical images with one Gaussian dot at ``(CENTRE + dx, CENTRE + dy)``."""
    coords = torch.arange(SIDE, dtype=torch.float64)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    dot = torch.exp(-((x - CENTRE - dx) ** 2 + (y - CENTRE - dy) ** 2) / (2 * sigma**2))
    return dot.expand(n, 1, SIDE, SIDE).clone()


def centroids(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity-weighted (x, y) of each image, relative to the image centre."""
    coords = torch.arange(SIDE, dtype=images.dtype)
    mass = images.sum(dim=(1, 2, 3))
    x = (images.sum(dim=(1, 2)) * coords).sum(-1) / mass - CENTRE
    y = (images.sum(dim=(1, 3)) * coords).sum(-1) / mass - CENTRE
    return x, y


def faces(n: int = 8) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(n, 1, SIDE, SIDE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype_are_preserved(dtype: torch.dtype) -> None:
    batch = faces().to(dtype)
    out = FaceAugment(AugmentConfig())(batch)
    assert out.shape == batch.shape and out.dtype == dtype
    rgb = torch.rand(4, 3, SIDE, SIDE, dtype=dtype)
    assert FaceAugment()(rgb).shape == rgb.shape


@pytest.mark.parametrize(
    "augment",
    [
        FaceAugment(AugmentConfig(strength=0.0)),
        FaceAugment(AugmentConfig(enabled=False)),
        FaceAugment(AugmentConfig()).eval(),
    ],
    ids=["strength-0", "disabled", "eval-mode"],
)
def test_identity_when_off(augment: FaceAugment) -> None:
    batch = faces()
    assert torch.equal(augment(batch), batch)


def test_flip_only_with_probability_one_is_torch_flip() -> None:
    batch = faces()
    out = FaceAugment(AugmentConfig(hflip_prob=1.0, **NO_WARP))(batch)
    assert torch.equal(out, torch.flip(batch, dims=[-1]))


def test_flip_probability_half_flips_some_and_keeps_others() -> None:
    torch.manual_seed(0)
    batch = faces(64)
    out = FaceAugment(AugmentConfig(hflip_prob=0.5, **NO_WARP))(batch)
    flipped = [torch.equal(o, b.flip(-1)) for o, b in zip(out, batch, strict=True)]
    kept = [torch.equal(o, b) for o, b in zip(out, batch, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 16 < sum(flipped) < 48  # Binomial(64, 0.5): outside this range with p < 1e-4


def test_identical_images_get_different_parameters() -> None:
    torch.manual_seed(0)
    batch = faces(1).expand(4, 1, SIDE, SIDE).clone()
    out = FaceAugment(AugmentConfig(hflip_prob=0.0))(batch)
    for i in range(1, 4):
        assert not torch.allclose(out[0], out[i])


def test_same_seed_same_augmentation() -> None:
    augment = FaceAugment(AugmentConfig())
    batch = faces()
    torch.manual_seed(7)
    first = augment(batch)
    torch.manual_seed(7)
    assert torch.equal(augment(batch), first)


def test_rotation_keeps_an_off_centre_dot_on_its_circle_within_the_angle() -> None:
    radius = 20.0
    torch.manual_seed(0)
    config = AugmentConfig(hflip_prob=0.0, **{**NO_WARP, "rotation_degrees": 20.0})
    x, y = centroids(FaceAugment(config)(blobs(64, radius, 0.0)))
    distance = torch.hypot(x, y)
    angle = torch.rad2deg(torch.atan2(y, x))
    assert torch.allclose(distance, torch.full_like(distance, radius), atol=0.5)
    assert angle.abs().max() <= 20.5
    assert angle.abs().max() > 10  # 64 uniform draws in [-20, 20]: some exceed 10 degrees
    assert angle.std() > 5  # the angle varies from sample to sample


def test_strength_scales_the_rotation() -> None:
    torch.manual_seed(0)
    config = AugmentConfig(hflip_prob=0.0, strength=0.5, **{**NO_WARP, "rotation_degrees": 20.0})
    x, y = centroids(FaceAugment(config)(blobs(64, 20.0, 0.0)))
    assert torch.rad2deg(torch.atan2(y, x)).abs().max() <= 10.5


def test_centred_dot_moves_no_further_than_the_shift() -> None:
    torch.manual_seed(0)
    config = AugmentConfig(hflip_prob=0.0)  # everything on; only the shift moves the centre
    x, y = centroids(FaceAugment(config)(blobs(64, 0.0, 0.0)))
    bound = 0.08 * SIDE + 0.25
    assert x.abs().max() <= bound and y.abs().max() <= bound
    assert torch.hypot(x, y).max() > 1.0


def test_full_recipe_keeps_an_off_centre_dot_within_its_worst_case_radius() -> None:
    radius = 16.0
    torch.manual_seed(0)
    x, y = centroids(FaceAugment(AugmentConfig())(blobs(64, radius, 0.0)))
    # Zoom 1.05, shear 0.05 on each axis (|S| <= 1.05 on a unit vector), then a shift of
    # up to 8% on each axis.
    worst = radius * 1.05 * 1.05 + math.hypot(0.08 * SIDE, 0.08 * SIDE) + 0.5
    assert torch.hypot(x, y).max() <= worst


def test_invalid_recipes_are_rejected() -> None:
    with pytest.raises(ValueError, match="scale_min <= scale_max"):
        AugmentConfig(scale_min=1.1, scale_max=1.0)
    with pytest.raises(ValueError, match="smallest zoom"):
        AugmentConfig(strength=30.0)
    with pytest.raises(ValueError, match="float batch"):
        FaceAugment()(torch.zeros(2, 1, SIDE, SIDE, dtype=torch.uint8))


def test_batch_of_256_speed_is_reported() -> None:
    augment = FaceAugment(AugmentConfig())
    batch = torch.rand(256, 1, SIDE, SIDE)
    augment(batch)
    start = time.perf_counter()
    augment(batch)
    print(f"FaceAugment: 256 x 1 x 64 x 64 on CPU in {time.perf_counter() - start:.3f} s")


def test_to_model_input_scales_subtracts_mean_and_adds_channel() -> None:
    raw = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    out = to_model_input(raw, 0.2)
    assert out.shape == (1, 1, 2, 2) and out.dtype == torch.float32
    expected = torch.tensor([[[[-0.2, 0.8], [0.0, 0.2]]]])
    assert torch.allclose(out, expected, atol=1e-6)
    same = to_model_input(raw.unsqueeze(1), torch.tensor(0.2), channels_last=True)
    assert torch.allclose(same, expected, atol=1e-6)
    assert same.is_contiguous(memory_format=torch.channels_last)


def test_to_model_input_rejects_wrong_dtype_and_shape() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(torch.zeros(2, SIDE, SIDE), 0.5)
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, 1, H, W\)"):
        to_model_input(torch.zeros(2, 3, SIDE, SIDE, dtype=torch.uint8), 0.5)
