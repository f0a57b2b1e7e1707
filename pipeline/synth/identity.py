"""Synthetic identities: the parameter vector that fixes how one person's face looks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Face geometry is in face units: the face is 2 units wide (half-width 1), origin at the face
#: centre, y pointing down. Colours are BGR floats in 0..255.

#: Skin lightness (0 dark .. 1 light) mean and spread per region: a loose prior so that regions differ
#: on average while every region spans a wide range.
_REGION_SKIN: dict[str, tuple[float, float]] = {
    "N. America/Europe": (0.78, 0.14),
    "S. Asia": (0.48, 0.14),
    "S. Africa": (0.22, 0.12),
    "Mid. East/C. Asia/N. Africa": (0.62, 0.13),
    "Central/South America": (0.56, 0.16),
    "N.E. Asia": (0.72, 0.10),
    "S.E. Asia": (0.55, 0.12),
}

_SKIN_DARK = np.array([48.0, 68.0, 104.0])
_SKIN_LIGHT = np.array([176.0, 198.0, 238.0])

_HAIR_COLOURS = np.array(
    [
        [22.0, 22.0, 26.0],  # black
        [32.0, 44.0, 66.0],  # dark brown
        [48.0, 72.0, 108.0],  # brown
        [92.0, 150.0, 196.0],  # blond
        [40.0, 72.0, 150.0],  # red
        [150.0, 150.0, 156.0],  # grey
    ]
)
_DARK_HAIR_ODDS = np.array([0.55, 0.3, 0.1, 0.01, 0.01, 0.03])
_LIGHT_SKIN_HAIR_ODDS = np.array([0.15, 0.3, 0.25, 0.15, 0.05, 0.1])
_IRIS_COLOURS = np.array(
    [[30.0, 45.0, 70.0], [20.0, 30.0, 45.0], [120.0, 95.0, 60.0], [80.0, 110.0, 70.0]]
)

HAIR_STYLES: tuple[str, ...] = ("short", "long", "bald", "fringe")


@dataclass(frozen=True)
class Identity:
    """Everything about a face that stays the same across that person's images."""

    gender: str  # "female" / "male"
    region: str
    texture_seed: int  # fixes skin, hair and beard texture across images
    face_top: float  # half-height of the skull above the centre line
    face_bottom: float  # chin depth below the centre line
    jaw: float  # jaw width relative to the cheeks (1 = square)
    eye_y: float
    eye_dx: float  # half the distance between the eye centres
    eye_w: float  # eye half-width
    eye_upper: float  # upper-lid opening above the eye centre at rest
    eye_lower: float  # lower-lid opening below the eye centre at rest
    eye_tilt: float  # outer corner higher (>0) or lower
    iris_r: float
    brow_gap: float  # brow height above the eye centre
    brow_thick: float
    brow_arch: float
    nose_y: float  # nose tip height
    nose_w: float  # nostril half-width
    mouth_y: float
    mouth_w: float  # mouth half-width
    lip_upper: float  # upper lip thickness
    lip_lower: float
    fold_depth: float  # resting depth of the nasolabial folds (age)
    skin: tuple[float, float, float]
    lip: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    clothing: tuple[float, float, float]
    hair_style: str
    hairline: float  # y of the hairline at the centre
    hair_volume: float
    beard: float  # 0 none .. 1 full beard opacity
    glasses: bool
    ear_y: float


def _clip_normal(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def sample_identity(rng: np.random.Generator, gender: str, region: str) -> Identity:
    """Draw one person's face parameters; ``gender`` and ``region`` shift a few of them."""
    female = gender == "female"
    mean_l, sd_l = _REGION_SKIN.get(region, (0.6, 0.2))
    lightness = _clip_normal(rng, mean_l, sd_l, 0.05, 1.0)
    skin = _SKIN_DARK + (_SKIN_LIGHT - _SKIN_DARK) * lightness
    skin = skin * rng.uniform(0.95, 1.05, 3)
    redness = rng.uniform(0.5, 0.62)
    lip = skin * np.array([redness, redness - 0.04, 0.95 if female else 0.88])
    if female and rng.random() < 0.4:  # lipstick
        lip = np.array([rng.uniform(40, 80), rng.uniform(30, 60), rng.uniform(120, 170)])
    hair_odds = _DARK_HAIR_ODDS + (_LIGHT_SKIN_HAIR_ODDS - _DARK_HAIR_ODDS) * lightness
    hair = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=hair_odds / hair_odds.sum())]
    hair = hair * rng.uniform(0.85, 1.15)
    iris_odds = np.array([0.6, 0.4, 0.0, 0.0]) + np.array([-0.4, -0.1, 0.3, 0.2]) * lightness**2
    iris = _IRIS_COLOURS[rng.choice(len(_IRIS_COLOURS), p=iris_odds / iris_odds.sum())]
    if female:
        style = HAIR_STYLES[rng.choice(4, p=[0.12, 0.68, 0.0, 0.2])]
    else:
        style = HAIR_STYLES[rng.choice(4, p=[0.72, 0.08, 0.1, 0.1])]
    iris_r = _clip_normal(rng, 0.082, 0.006, 0.07, 0.095)
    return Identity(
        gender=gender,
        region=region,
        texture_seed=int(rng.integers(0, 2**31 - 1)),
        face_top=_clip_normal(rng, 1.2, 0.04, 1.1, 1.3),
        face_bottom=_clip_normal(rng, 1.3 if female else 1.36, 0.04, 1.22, 1.45),
        jaw=_clip_normal(rng, 0.62 if female else 0.72, 0.05, 0.52, 0.85),
        eye_y=_clip_normal(rng, -0.1, 0.025, -0.16, -0.04),
        eye_dx=_clip_normal(rng, 0.41, 0.02, 0.36, 0.46),
        eye_w=_clip_normal(rng, 0.2, 0.012, 0.17, 0.23),
        eye_upper=iris_r * _clip_normal(rng, 0.82, 0.05, 0.72, 0.92),
        eye_lower=iris_r * _clip_normal(rng, 0.72, 0.06, 0.6, 0.85),
        eye_tilt=_clip_normal(rng, 0.01, 0.015, -0.02, 0.04),
        iris_r=iris_r,
        brow_gap=_clip_normal(rng, 0.24 if female else 0.21, 0.02, 0.17, 0.28),
        brow_thick=_clip_normal(rng, 0.05 if female else 0.065, 0.008, 0.035, 0.085),
        brow_arch=_clip_normal(rng, 0.04 if female else 0.025, 0.012, 0.0, 0.07),
        nose_y=_clip_normal(rng, 0.36, 0.03, 0.29, 0.43),
        nose_w=_clip_normal(rng, 0.15 if female else 0.17, 0.015, 0.12, 0.21),
        mouth_y=_clip_normal(rng, 0.7, 0.03, 0.63, 0.77),
        mouth_w=_clip_normal(rng, 0.3, 0.02, 0.25, 0.35),
        lip_upper=_clip_normal(rng, 0.05 if female else 0.043, 0.007, 0.03, 0.065),
        lip_lower=_clip_normal(rng, 0.07 if female else 0.06, 0.008, 0.045, 0.085),
        fold_depth=float(rng.uniform(0.05, 0.25)),
        skin=tuple(float(c) for c in np.clip(skin, 0, 255)),
        lip=tuple(float(c) for c in np.clip(lip, 0, 255)),
        hair=tuple(float(c) for c in np.clip(hair, 0, 255)),
        iris=tuple(float(c) for c in iris),
        clothing=tuple(float(c) for c in rng.uniform(20, 220, 3)),
        hair_style=style,
        hairline=_clip_normal(rng, -0.84, 0.05, -0.95, -0.74),
        hair_volume=float(rng.uniform(0.08, 0.25)),
        beard=float(rng.uniform(0.5, 0.85)) if not female and rng.random() < 0.12 else 0.0,
        glasses=bool(rng.random() < 0.08),
        ear_y=_clip_normal(rng, 0.05, 0.03, -0.02, 0.12),
    )
