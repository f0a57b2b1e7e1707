"""The augmentation recipe as configuration: no torch here, so configs and the CLI load fast."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.options import at_least, option, raise_failed


@dataclass(kw_only=True)
class AugmentConfig:
    """The training augmentation recipe. Magnitudes are those of the paper's own data reader."""

    enabled: bool = option(True, "Augment training batches at all.")
    hflip_prob: float = option(0.5, "Probability of a horizontal (left-right) flip.")
    rotation_degrees: float = option(20.0, "Rotation drawn uniformly from [-d, d] degrees.")
    shift: float = option(
        0.08, "Shift in x and y, each drawn from [-s, s] as a fraction of the side."
    )
    scale_min: float = option(0.95, "Lower bound of the zoom factor.")
    scale_max: float = option(1.05, "Upper bound of the zoom factor.")
    skew: float = option(0.05, "Shear factors in x and y, each drawn from [-k, k].")
    strength: float = option(
        1.0,
        "Multiplier on all magnitudes (0 = identity); the flip probability is "
        "multiplied by min(strength, 1).",
    )
    padding_mode: str = option(
        "border", "How pixels warped in from outside are filled: border, zeros, reflection."
    )

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.hflip_prob <= 1.0, f"hflip_prob in [0, 1], got {self.hflip_prob}"),
            at_least("rotation_degrees", self.rotation_degrees, 0),
            (0.0 <= self.shift < 1.0, f"shift in [0, 1), got {self.shift}"),
            (
                0 < self.scale_min <= self.scale_max,
                f"0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}",
            ),
            at_least("skew", self.skew, 0),
            at_least("strength", self.strength, 0),
            (
                self.padding_mode in ("border", "zeros", "reflection"),
                f"padding_mode one of border/zeros/reflection, got {self.padding_mode!r}",
            ),
        ]
        raise_failed(checks, "AugmentConfig")
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
