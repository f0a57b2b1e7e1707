"""A stand-in for OpenFace 2.0: noisy AU labels from true intensities, written as OpenFace CSVs.

Error model, per AU, all probabilities scaled by ``noise`` (0 = the truth, 1 = the default):

* misses: a present AU (intensity >= 2) reads absent with probability ``false_negative``, more
  often at intensity 2 than at 5;
* false alarms: an absent AU reads present with probability ``false_positive_lab`` in lab video,
  plus ``wild_noise`` x ``false_positive_wild`` in unconstrained photos (OpenFace degrades in the
  wild), plus :data:`TRACE_BOOST` when the AU is at trace intensity 1;
* identity bias: for a fixed share of people (chosen by a hash of their identity) some AUs read
  present at rest: a resting face that looks like AU04 (heavy brows) or AU15 (down-turned mouth).

Calibration (done in code, :func:`default_errors`): the lab false-alarm rate of each DISFA AU is
solved so that F1 against the truth on a DISFA-rate world hits :data:`DISFA_F1_TARGETS` (averaging
about 0.5, OpenFace 2.0's level on DISFA); the wild rate is then solved so that the celeb world's
label rates land on OpenFace's MS-Celeb rates (shared/README.md) at ``wild_noise`` 1. Those rates are
mostly false alarms that carry no signal (the celeb world's true rates are far lower); at
``wild_noise`` 0.5 the labeler's in-the-wild F1 against the truth rises from about 0.37 to 0.45 on
the paper's 8 AUs, and the lab video (DISFA) labels do not change.

CSV formats follow OpenFace 2.2's RecorderCSV (no space after commas): FaceLandmarkImg writes
``face,confidence,AU.._r...,AU.._c...``, FeatureExtraction writes
``frame,face_id,timestamp,confidence,success,AU.._r...,AU.._c...``; AU columns sorted by name,
``_r`` for 17 AUs (no AU28), ``_c`` for 18; confidence with 3 (image) or 2 (sequence) decimals,
``_r`` with 2, ``_c`` with 1 ("1.0"/"0.0"). Gaze, pose and landmark columns are left out.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.synth.au_sampling import (
    CELEB_PHOTO_RATES,
    DISFA_RATES,
    OPENFACE_MSCELEB_RATES,
    PRESENT_LEVEL_SHARES,
    TRACE_RATIO,
)
from pipeline.synth.render import RENDER_AUS

#: OpenFace 2.x intensity (``_r``) and presence (``_c``) columns, in its (sorted) order.
OPENFACE_R_AUS: tuple[str, ...] = tuple(au for au in RENDER_AUS if au != "AU28")
OPENFACE_C_AUS: tuple[str, ...] = tuple(sorted(RENDER_AUS))

#: Per-AU F1 of the default labeler against the truth on a DISFA-rate world (our choice: strong on
#: frequent, large movements like AU12/AU25, weak on rare or subtle ones; mean 0.49, about
#: OpenFace 2.0's average over DISFA's 12 AUs).
DISFA_F1_TARGETS: dict[str, float] = {
    "AU01": 0.45, "AU02": 0.45, "AU04": 0.6, "AU05": 0.3, "AU06": 0.65, "AU09": 0.45,
    "AU12": 0.7, "AU15": 0.3, "AU17": 0.4, "AU20": 0.25, "AU25": 0.75, "AU26": 0.5,
}  # fmt: skip
OTHER_F1_TARGET = 0.5
DEFAULT_FALSE_NEGATIVE = 0.35
#: Extra false-alarm probability at trace intensity 1 (the AU is faintly there).
TRACE_BOOST = 0.2
#: Misses by present intensity 2, 3, 4, 5 relative to the average (normalised below).
_MISS_PROFILE = np.array([1.4, 0.9, 0.6, 0.4])
MISS_WEIGHTS = _MISS_PROFILE / float(_MISS_PROFILE @ PRESENT_LEVEL_SHARES)


@dataclass(frozen=True)
class IdentityBias:
    """A share of people for whom an AU reads present at rest with some probability."""

    share: float
    probability: float


IDENTITY_BIAS: dict[str, IdentityBias] = {
    "AU04": IdentityBias(share=0.15, probability=0.5),
    "AU15": IdentityBias(share=0.12, probability=0.5),
}


@dataclass(frozen=True)
class AuErrors:
    false_negative: float
    false_positive_lab: float
    false_positive_wild: float


def _false_alarm_pressure(au: str, rate: float) -> float:
    """False alarms among absent AUs from traces and identity bias (before the base rate)."""
    trace = min(TRACE_RATIO * rate, 0.5 * (1.0 - rate))
    bias = IDENTITY_BIAS.get(au, IdentityBias(0.0, 0.0))
    return TRACE_BOOST * trace / (1.0 - rate) + bias.share * bias.probability


def default_errors() -> dict[str, AuErrors]:
    """Per-AU error rates solved from the F1 targets and the OpenFace MS-Celeb rates."""
    errors = {}
    recall = 1.0 - DEFAULT_FALSE_NEGATIVE
    for au in RENDER_AUS:
        p = DISFA_RATES[au]
        f1 = DISFA_F1_TARGETS.get(au, OTHER_F1_TARGET)
        precision = f1 * recall / (2.0 * recall - f1)
        false_alarms = p * recall * (1.0 / precision - 1.0) / (1.0 - p)  # share of absent
        lab = max(false_alarms - _false_alarm_pressure(au, p), 0.0)
        q = CELEB_PHOTO_RATES[au]
        wanted = (OPENFACE_MSCELEB_RATES[au] - q * recall) / (1.0 - q)
        wild = max(wanted - lab - _false_alarm_pressure(au, q), 0.0)
        errors[au] = AuErrors(DEFAULT_FALSE_NEGATIVE, lab, wild)
    return errors


@dataclass(frozen=True)
class NoisyLabels:
    """The labeler's output for a batch of images or frames."""

    intensity: np.ndarray  # n x RENDER_AUS, OpenFace-like 0..5 regression output
    presence: np.ndarray  # n x RENDER_AUS, 0/1
    confidence: np.ndarray  # n


@dataclass
class NoisyLabeler:
    """OpenFace-like labels from true intensities (module docstring for the error model)."""

    noise: float = 1.0
    seed: int = 0
    errors: Mapping[str, AuErrors] = field(default_factory=default_errors)
    #: Multiplier on the extra false alarms of photos in the wild (1 = OpenFace's MS-Celeb rates).
    wild_noise: float = 1.0

    def __post_init__(self) -> None:
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.wild_noise < 0:
            raise ValueError(f"wild_noise must be >= 0, got {self.wild_noise}")
        self._fn = np.array([self.errors[au].false_negative for au in RENDER_AUS])
        self._fp_lab = np.array([self.errors[au].false_positive_lab for au in RENDER_AUS])
        self._fp_wild = np.array([self.errors[au].false_positive_wild for au in RENDER_AUS])

    def identity_bias(self, identity: str) -> np.ndarray:
        """Per-AU probability that this person's resting face reads as the AU (before ``noise``)."""
        rng = np.random.default_rng([self.seed, zlib.crc32(identity.encode("utf-8"))])
        draws = rng.random(len(RENDER_AUS))
        bias = np.zeros(len(RENDER_AUS))
        for au, rule in IDENTITY_BIAS.items():
            i = RENDER_AUS.index(au)
            if draws[i] < rule.share:
                bias[i] = rule.probability
        return bias

    def label(
        self,
        rng: np.random.Generator,
        identity: str,
        levels: np.ndarray,
        *,
        in_the_wild: bool,
    ) -> NoisyLabels:
        """Labels for ``levels`` (n x RENDER_AUS true intensities 0..5) of one person's images."""
        levels = np.asarray(levels)
        if levels.ndim != 2 or levels.shape[1] != len(RENDER_AUS):
            raise ValueError(f"levels must be n x {len(RENDER_AUS)}, got shape {levels.shape}")
        n = levels.shape[0]
        draws = rng.random((n, len(RENDER_AUS)))
        jitter = rng.normal(0.0, 1.0, (n, len(RENDER_AUS)))
        flips = rng.uniform(0.0, 1.0, (n, len(RENDER_AUS)))
        confidence = rng.uniform(0.88, 0.98, n) if self.noise > 0 else np.full(n, 0.98)
        rounded = np.floor(levels + 0.5).astype(int)
        present = rounded >= 2
        if self.noise == 0:
            return NoisyLabels(
                np.clip(rounded, 0, 5).astype(float), present.astype(np.int8), confidence
            )
        fp = self._fp_lab + (self.wild_noise * self._fp_wild if in_the_wild else 0.0)
        fp = fp + TRACE_BOOST * (rounded == 1) + self.identity_bias(identity)
        miss = self._fn * MISS_WEIGHTS[np.clip(rounded - 2, 0, 3)]
        p_present = np.where(present, 1.0 - self.noise * miss, self.noise * fp)
        read = draws < np.clip(p_present, 0.0, 1.0)
        intensity = np.clip(levels + 0.5 * self.noise * jitter, 0.0, 5.0)
        intensity = np.where(read & ~present, np.maximum(intensity, 1.0 + 1.5 * flips), intensity)
        intensity = np.where(~read & present, np.minimum(intensity, 0.5 + flips), intensity)
        return NoisyLabels(intensity, read.astype(np.int8), confidence)


def _au_values(labels: NoisyLabels, row: int) -> list[str]:
    r = [f"{labels.intensity[row, RENDER_AUS.index(au)]:.2f}" for au in OPENFACE_R_AUS]
    c = [f"{float(labels.presence[row, RENDER_AUS.index(au)]):.1f}" for au in OPENFACE_C_AUS]
    return r + c


def openface_au_header() -> list[str]:
    return [f"{au}_r" for au in OPENFACE_R_AUS] + [f"{au}_c" for au in OPENFACE_C_AUS]


def openface_image_csv(labels: NoisyLabels, row: int) -> str:
    """FaceLandmarkImg-style CSV text for one image with one face (face 0)."""
    header = ",".join(["face", "confidence", *openface_au_header()])
    values = ",".join(["0", f"{labels.confidence[row]:.3f}", *_au_values(labels, row)])
    return f"{header}\n{values}\n"


def openface_sequence_csv(
    labels: NoisyLabels,
    fps: float,
    frames: Sequence[int] | None = None,
    failed: np.ndarray | None = None,
) -> str:
    """FeatureExtraction-style CSV text over a video: one row per frame, 1-based frame numbers.

    ``failed`` marks frames the tracker lost: OpenFace writes them with ``success`` 0, a low
    confidence and every AU value 0.
    """
    numbers = list(frames) if frames is not None else list(range(1, labels.presence.shape[0] + 1))
    lost = np.zeros(len(numbers), bool) if failed is None else np.asarray(failed, bool)
    if lost.shape != (len(numbers),):
        raise ValueError(f"failed must mark each of the {len(numbers)} frames, got {lost.shape}")
    lines = [
        ",".join(["frame", "face_id", "timestamp", "confidence", "success", *openface_au_header()])
    ]
    zeros = ["0.00"] * len(OPENFACE_R_AUS) + ["0.0"] * len(OPENFACE_C_AUS)
    for row, frame in enumerate(numbers):
        timestamp = f"{(frame - 1) / fps:.3f}"
        if lost[row]:
            lines.append(",".join([str(frame), "0", timestamp, "0.03", "0", *zeros]))
            continue
        head = [str(frame), "0", timestamp, f"{labels.confidence[row]:.2f}", "1"]
        lines.append(",".join(head + _au_values(labels, row)))
    return "\n".join(lines) + "\n"
