"""AU intensities with realistic rates and co-occurrence: independent photos or smooth video tracks.

Model (a Gaussian copula). Each AU has a latent score ``z ~ N(0, 1)`` built from shared expression
factors (smile, surprise, frown, sadness, disgust, speech, fear: AUs that load on the same factor
co-occur, e.g. AU06 with AU12, AU01 with AU02, AU25 with AU26), an AU's own term and a per-person
term (some people smile more). The intensity is ``z`` cut at quantiles, so the marginal rates are
exactly the configured ones whatever the correlations:

    P(intensity >= 2) = presence rate p            (DISFA's presence rule)
    P(intensity == 1) = trace rate, 0.6 p by default (a trace: visible but "absent")
    intensity 2..5 among the present: 40 / 30 / 20 / 10 %

Photos draw ``z`` independently per image; videos draw each factor as a Gaussian-smoothed random
process over frames, so intensity tracks rise and fall smoothly (DISFA-like onsets and offsets).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from pipeline.synth.render import RENDER_AUS

#: DISFA positive rates (presence = intensity >= 2) per AU, as fractions. Source: /work/shared/README.md
#: ("DISFA positive rates per AU (%)"). AUs DISFA does not code get rates typical of posed-free
#: lab video (our choice).
DISFA_RATES: dict[str, float] = {
    "AU01": 0.0497, "AU02": 0.0431, "AU04": 0.1524, "AU05": 0.0088, "AU06": 0.0789,
    "AU09": 0.0418, "AU12": 0.1288, "AU15": 0.0205, "AU17": 0.0504, "AU20": 0.0225,
    "AU25": 0.2771, "AU26": 0.0882,
    # not coded in DISFA (our choice, low rates for spontaneous lab video):
    "AU07": 0.06, "AU10": 0.04, "AU14": 0.05, "AU23": 0.03, "AU28": 0.01, "AU45": 0.06,
}  # fmt: skip

#: OpenFace 2.0 presence rates on the MS-Celeb pre-training test split, as fractions. Source:
#: /work/shared/README.md ("OpenFace presence rates on the pre-training test split (%)"). These
#: are NOISY label rates: the celeb world's labeler adds its in-the-wild false positives to
#: :data:`CELEB_PHOTO_RATES` to land near them (see noisy_labeler.py).
OPENFACE_MSCELEB_RATES: dict[str, float] = {
    "AU01": 0.598, "AU02": 0.539, "AU04": 0.297, "AU05": 0.403, "AU06": 0.508, "AU07": 0.515,
    "AU09": 0.300, "AU10": 0.527, "AU12": 0.526, "AU14": 0.635, "AU15": 0.530, "AU17": 0.211,
    "AU20": 0.388, "AU23": 0.172, "AU25": 0.519, "AU26": 0.420, "AU28": 0.241, "AU45": 0.232,
}  # fmt: skip

#: True AU rates of the celeb world (our choice): celebrity photos smile and talk a lot, other AUs
#: are occasional. Well below the OpenFace figures above, which are mostly false positives.
CELEB_PHOTO_RATES: dict[str, float] = {
    "AU01": 0.12, "AU02": 0.10, "AU04": 0.10, "AU05": 0.08, "AU06": 0.32, "AU07": 0.15,
    "AU09": 0.05, "AU10": 0.14, "AU12": 0.40, "AU14": 0.15, "AU15": 0.06, "AU17": 0.10,
    "AU20": 0.06, "AU23": 0.06, "AU25": 0.40, "AU26": 0.15, "AU28": 0.03, "AU45": 0.05,
}  # fmt: skip

#: Every AU present 30% of the time, for checking that each AU can be learned at all; blinks
#: (AU45) stay rare, as closed eyes hide AU05/06/07 (photos rarely catch a blink).
BALANCED_RATES: dict[str, float] = {**dict.fromkeys(RENDER_AUS, 0.3), "AU45": 0.05}

RATE_TABLES: dict[str, dict[str, float]] = {
    "disfa": DISFA_RATES,
    "celeb": CELEB_PHOTO_RATES,
    "balanced": BALANCED_RATES,
}

#: Shares of intensities 2, 3, 4, 5 among present AUs.
PRESENT_LEVEL_SHARES = np.array([0.4, 0.3, 0.2, 0.1])
#: P(intensity == 1) as a multiple of the presence rate (capped so that the rates sum below 1).
TRACE_RATIO = 0.6

#: Expression factors and how strongly each AU loads on them (the co-occurrence structure).
FACTOR_LOADINGS: dict[str, dict[str, float]] = {
    "smile": {"AU06": 0.85, "AU12": 0.9, "AU25": 0.25, "AU10": 0.25, "AU14": 0.3, "AU07": 0.2,
              "AU15": -0.3, "AU04": -0.2},
    "surprise": {"AU01": 0.75, "AU02": 0.8, "AU05": 0.55, "AU26": 0.35, "AU25": 0.25, "AU04": -0.3},
    "frown": {"AU04": 0.7, "AU07": 0.45, "AU23": 0.35, "AU17": 0.25, "AU09": 0.2},
    "sadness": {"AU01": 0.35, "AU15": 0.65, "AU17": 0.45, "AU04": 0.3},
    "disgust": {"AU09": 0.75, "AU10": 0.6, "AU04": 0.25, "AU17": 0.2, "AU07": 0.2},
    "speech": {"AU25": 0.85, "AU26": 0.8, "AU20": 0.2, "AU28": 0.15, "AU23": 0.15},
    "fear": {"AU20": 0.55, "AU01": 0.25, "AU02": 0.2, "AU04": 0.25, "AU05": 0.3, "AU25": 0.2},
}  # fmt: skip

#: Share of each AU's variance that is a per-person constant (expressiveness differs by person).
PERSON_SHARE = 0.15
SUBJECT_SHARE_VIDEO = 0.25

#: Smoothing (Gaussian sigma, frames) of the video factor processes; blinks are brief.
FACTOR_SMOOTHING_FRAMES = 14.0
OWN_SMOOTHING_FRAMES = 8.0
BLINK_SMOOTHING_FRAMES = 1.5


def _loadings() -> tuple[np.ndarray, np.ndarray]:
    """(loadings: AUs x factors, own standard deviation per AU) with unit total variance."""
    factors = list(FACTOR_LOADINGS)
    matrix = np.zeros((len(RENDER_AUS), len(factors)))
    for j, factor in enumerate(factors):
        for au, weight in FACTOR_LOADINGS[factor].items():
            matrix[RENDER_AUS.index(au), j] = weight
    shared = (matrix**2).sum(axis=1)
    if (shared >= 0.95).any():
        raise ValueError("FACTOR_LOADINGS leave an AU less than 5% variance of its own")
    return matrix, np.sqrt(1.0 - shared)


LOADINGS, OWN_SD = _loadings()


def rate_table(rates: str | Mapping[str, float]) -> dict[str, float]:
    """A complete ``{au: presence rate}`` from a table name or a partial mapping."""
    if isinstance(rates, str):
        if rates not in RATE_TABLES:
            raise ValueError(f"unknown rate table {rates!r}; expected one of {sorted(RATE_TABLES)}")
        rates = RATE_TABLES[rates]
    unknown = set(rates) - set(RENDER_AUS)
    if unknown:
        raise ValueError(f"rates for unknown AUs {sorted(unknown)}; expected {RENDER_AUS}")
    table = {au: float(rates.get(au, 0.0)) for au in RENDER_AUS}
    for au, p in table.items():
        if not 0.0 <= p < 1.0:
            raise ValueError(f"presence rate of {au} is {p}; expected 0 <= rate < 1")
    return table


@dataclass(frozen=True)
class IntensityScale:
    """Latent-score cut points that turn ``z`` into intensities 0..5 at the configured rates."""

    thresholds: np.ndarray  # AUs x 5: z above thresholds[:, k-1] means intensity >= k

    @classmethod
    def for_rates(cls, rates: str | Mapping[str, float]) -> IntensityScale:
        table = rate_table(rates)
        p = np.array([table[au] for au in RENDER_AUS])
        trace = np.minimum(TRACE_RATIO * p, 0.5 * (1.0 - p))
        tail = 1.0 - np.cumsum(PRESENT_LEVEL_SHARES)[:-1]  # P(>=3), P(>=4), P(>=5) given present
        at_least = np.column_stack([p + trace, p, *(p * t for t in tail)])  # P(I >= 1..5)
        return cls(np.vectorize(_upper_quantile)(at_least))

    def levels(self, z: np.ndarray) -> np.ndarray:
        """Integer intensities 0..5 for latent scores ``z`` (... x AUs)."""
        return (z[..., None] > self.thresholds).sum(axis=-1).astype(np.int8)

    def continuous(self, z: np.ndarray) -> np.ndarray:
        """Intensities on a 0..5 continuum whose rounding (``floor(x + 0.5)``) is :meth:`levels`.

        Cut point k maps to k - 0.5; in between the map is linear, so a smooth ``z`` gives a
        smooth track.
        """
        out = np.zeros(z.shape, np.float64)
        for i in range(z.shape[-1]):
            t = self.thresholds[i]
            if not np.isfinite(t).all():  # rate 0: the AU never shows
                continue
            span = max(float(t[-1] - t[-2]), 0.25)
            knots_x = np.concatenate([[t[0] - 0.6], t, [t[-1] + span]])
            knots_y = np.concatenate([[0.0], np.arange(5) + 0.5, [5.0]])
            out[..., i] = np.interp(z[..., i], knots_x, knots_y)
        return out


def _upper_quantile(share: float) -> float:
    """The z with ``P(Z > z) = share`` (+inf for share 0: never reached)."""
    if share <= 0.0:
        return math.inf
    if share >= 1.0:
        return -math.inf
    return NormalDist().inv_cdf(1.0 - share)


def person_offsets(rng: np.random.Generator, people: int) -> np.ndarray:
    """Per-person latent offsets (people x AUs), N(0, 1) per AU, correlated like expressions."""
    factors = rng.standard_normal((people, LOADINGS.shape[1]))
    own = rng.standard_normal((people, len(RENDER_AUS)))
    return factors @ LOADINGS.T + own * OWN_SD


def sample_photo_latents(
    rng: np.random.Generator, person_offset: np.ndarray, images: int
) -> np.ndarray:
    """Latent scores (images x AUs) for independent photos of one person."""
    factors = rng.standard_normal((images, LOADINGS.shape[1]))
    own = rng.standard_normal((images, len(RENDER_AUS)))
    moment = factors @ LOADINGS.T + own * OWN_SD
    return math.sqrt(1.0 - PERSON_SHARE) * moment + math.sqrt(PERSON_SHARE) * person_offset


def smooth_noise(rng: np.random.Generator, frames: int, columns: int, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian processes (frames x columns) with Gaussian autocorrelation."""
    pad = int(4 * sigma) + 1
    kernel = np.exp(-0.5 * (np.arange(-pad, pad + 1) / sigma) ** 2)
    kernel /= math.sqrt(float((kernel**2).sum()))  # filtered unit white noise keeps unit variance
    white = rng.standard_normal((frames + 2 * pad, columns))
    return np.stack(
        [np.convolve(white[:, c], kernel, mode="valid") for c in range(columns)], axis=1
    )


def sample_video_latents(
    rng: np.random.Generator, subject_offset: np.ndarray, frames: int
) -> np.ndarray:
    """Latent scores (frames x AUs) for one subject's video: smooth in time, unit variance."""
    factors = smooth_noise(rng, frames, LOADINGS.shape[1], FACTOR_SMOOTHING_FRAMES)
    own = smooth_noise(rng, frames, len(RENDER_AUS), OWN_SMOOTHING_FRAMES)
    blink = RENDER_AUS.index("AU45")
    own[:, blink] = smooth_noise(rng, frames, 1, BLINK_SMOOTHING_FRAMES)[:, 0]
    moment = factors @ LOADINGS.T + own * OWN_SD
    share = SUBJECT_SHARE_VIDEO
    return math.sqrt(1.0 - share) * moment + math.sqrt(share) * subject_offset
