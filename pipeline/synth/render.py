"""Draws one synthetic face image from an identity, AU intensities and a scene (pose, light, clutter).

Geometry lives in *face units*: the face is 2 units wide, origin at its centre, y pointing down
(see :mod:`pipeline.synth.identity`). Every AU moves or darkens the parts FACS says it moves; the
amount follows :func:`deformation` of the 0-5 intensity. Shapes are filled with anti-aliased,
sub-pixel polygons; soft shading (eye sockets, nose bridge, cheeks, mouth) is what OpenCV's
frontal Haar cascade keys on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.synth.identity import Identity
from pipeline.vocabulary import OPENFACE_AUS

#: The AUs the renderer draws: OpenFace's 17 presence AUs plus AU45 (blink).
RENDER_AUS: tuple[str, ...] = (*OPENFACE_AUS, "AU45")
AU_INDEX: dict[str, int] = {au: i for i, au in enumerate(RENDER_AUS)}

#: Fraction of an AU's full deformation shown at each FACS intensity 0..5. FACS levels are not
#: evenly spaced in appearance (A = trace ... E = maximum); the step from 1 (trace, "absent" in
#: DISFA's >= 2 rule) to 2 is made the largest so that presence is visible.
DEFORMATION_AT_LEVEL = np.array([0.0, 0.15, 0.5, 0.72, 0.88, 1.0])

#: Face half-width in pixels per unit of scene scale, as a fraction of the image's shorter side.
FACE_HALF_WIDTH = 0.27

#: The generator's face box in face units: a square like the one OpenCV's frontal Haar cascade
#: draws on these faces: centre y and half side. Measured on 300 rendered photos (the mean Haar
#: box: centre y 0.154, half side 1.13); tests check that Haar's box centre falls inside it.
FACE_BOX_CENTRE_Y = 0.16
FACE_BOX_HALF = 1.12


def deformation(intensity: float) -> float:
    """Fraction (0..1) of an AU's full deformation at a 0..5 intensity (interpolated)."""
    return float(np.interp(intensity, np.arange(6), DEFORMATION_AT_LEVEL))


@dataclass(frozen=True)
class Scene:
    """Everything about one image that is not the person or the expression."""

    roll: float = 0.0  # degrees, in-plane head rotation
    yaw: float = 0.0  # -1..1, turn of the head (features slide sideways)
    scale: float = 1.0
    shift_x: float = 0.0  # face centre offset, fraction of the image width
    shift_y: float = 0.0
    light_angle: float = 0.0  # radians: the direction light comes from, in the image plane
    light: float = 0.0  # 0..1 strength of the side light on the face
    exposure: float = 1.0
    gradient: tuple[float, float] = (0.0, 0.0)  # whole-image brightness slope per image size
    gaze_x: float = 0.0  # -1..1
    gaze_y: float = 0.0
    noise: float = 0.0  # Gaussian sensor noise sigma, grey levels
    clutter: int = 0  # background shapes
    background_seed: int = 0
    noise_seed: int = 0


@dataclass(frozen=True)
class Rendered:
    """A rendered image with what the generator knows about it."""

    image: np.ndarray  # H x W x 3 uint8, BGR
    face_box: tuple[int, int, int, int]  # x, y, w, h in pixels (see FACE_BOX_*)
    landmarks: dict[str, tuple[float, float]]  # pixel positions of named points


def sample_scene(rng: np.random.Generator, *, clutter: bool = True) -> Scene:
    """A photo-like scene: small head pose, side light, exposure, noise, background clutter."""
    return Scene(
        roll=float(np.clip(rng.normal(0.0, 4.0), -10.0, 10.0)),
        yaw=float(rng.uniform(-0.6, 0.6)),
        scale=float(rng.uniform(0.95, 1.08)),
        shift_x=float(rng.uniform(-0.035, 0.035)),
        shift_y=float(rng.uniform(-0.03, 0.03)),
        light_angle=float(rng.uniform(0, 2 * math.pi)),
        light=float(rng.uniform(0.0, 0.35)),
        exposure=float(rng.uniform(0.85, 1.1)),
        gradient=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15))),
        gaze_x=float(rng.uniform(-0.6, 0.6)),
        gaze_y=float(rng.uniform(-0.3, 0.3)),
        noise=float(rng.uniform(1.0, 5.0)),
        clutter=int(rng.integers(4, 14)) if clutter else 0,
        background_seed=int(rng.integers(0, 2**31 - 1)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def amounts_from_intensities(intensities: Mapping[str, float] | np.ndarray) -> dict[str, float]:
    """``{au: deformation}`` for every AU in :data:`RENDER_AUS` (missing AUs are at rest)."""
    if isinstance(intensities, np.ndarray):
        if intensities.shape != (len(RENDER_AUS),):
            raise ValueError(
                f"intensities must have shape ({len(RENDER_AUS)},) in RENDER_AUS order, "
                f"got {intensities.shape}"
            )
        values = dict(zip(RENDER_AUS, intensities.tolist(), strict=True))
    else:
        unknown = set(intensities) - set(RENDER_AUS)
        if unknown:
            raise ValueError(f"unknown AUs {sorted(unknown)}; expected some of {RENDER_AUS}")
        values = dict(intensities)
    return {au: deformation(float(values.get(au, 0.0))) for au in RENDER_AUS}


# --------------------------------------------------------------------------------------------
# Painting primitives
# --------------------------------------------------------------------------------------------


class _Painter:
    """Draws face-unit shapes onto a float BGR image through the pose transform."""

    def __init__(self, image: np.ndarray, matrix: np.ndarray, yaw: float):
        self.image = image
        self.height, self.width = image.shape[:2]
        self.matrix = matrix  # 2x3: face units -> pixels
        self.inverse = cv2.invertAffineTransform(matrix)
        self.pixels_per_unit = float(math.hypot(matrix[0, 0], matrix[1, 0]))
        self.yaw = yaw
        self.skin = np.zeros((self.height, self.width), np.float32)  # where face shading applies
        self._uv: tuple[np.ndarray, np.ndarray] | None = None

    def warp(self, pts: np.ndarray, depth: float = 1.0) -> np.ndarray:
        """Yaw: points near the face's middle slide sideways, more so the further they stick out."""
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        u = pts[:, 0]
        slide = self.yaw * 0.13 * depth * np.clip(1.0 - u * u, 0.0, 1.0)
        return np.stack([u + slide, pts[:, 1]], axis=1)

    def px(self, pts: np.ndarray, depth: float = 1.0) -> np.ndarray:
        warped = self.warp(pts, depth)
        return warped @ self.matrix[:, :2].T + self.matrix[:, 2]

    def _roi(self, pts_px: np.ndarray, pad: float) -> tuple[int, int, int, int] | None:
        x0 = max(int(math.floor(pts_px[:, 0].min() - pad)), 0)
        y0 = max(int(math.floor(pts_px[:, 1].min() - pad)), 0)
        x1 = min(int(math.ceil(pts_px[:, 0].max() + pad)) + 1, self.width)
        y1 = min(int(math.ceil(pts_px[:, 1].max() + pad)) + 1, self.height)
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1

    def mask(
        self,
        pts: np.ndarray,
        *,
        width: float | None = None,
        closed: bool = True,
        soften: float = 0.0,
        depth: float = 1.0,
    ) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
        """Anti-aliased coverage (0..1) of a filled polygon, or of a stroke ``width`` units wide.

        ``pts`` is one polyline (n x 2) or several of equal length (k x n x 2).
        """
        pts = np.asarray(pts, np.float64)
        shape = pts.shape if pts.ndim == 3 else (1, *pts.shape)
        pts_px = self.px(pts.reshape(-1, 2), depth)
        stroke_px = 0.0 if width is None else width * self.pixels_per_unit
        roi = self._roi(pts_px, stroke_px + 3.0 * soften + 2.0)
        if roi is None:
            return None
        x0, y0, x1, y1 = roi
        canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
        fixed = list(np.round((pts_px - (x0, y0)) * 16.0).astype(np.int32).reshape(shape))
        if width is None:
            cv2.fillPoly(canvas, fixed, 255, cv2.LINE_AA, shift=4)
            coverage = canvas.astype(np.float32) * np.float32(1 / 255)
        else:
            thickness = max(1, int(round(stroke_px)))
            cv2.polylines(canvas, fixed, closed, 255, thickness, cv2.LINE_AA, shift=4)
            coverage = canvas.astype(np.float32) * np.float32(1 / 255)
            if stroke_px < 1.0:  # thinner than a pixel: fade instead of thinning
                coverage *= stroke_px
        if soften > 0:
            coverage = cv2.GaussianBlur(coverage, (0, 0), soften)
        return roi, coverage

    def fill(
        self,
        pts: np.ndarray,
        colour: np.ndarray | tuple[float, ...],
        alpha: float = 1.0,
        *,
        soften: float = 0.0,
        depth: float = 1.0,
        clip: tuple[tuple[int, int, int, int], np.ndarray] | None = None,
        skin: bool = False,
    ) -> None:
        if alpha <= 0:
            return
        found = self.mask(pts, soften=soften, depth=depth)
        if found is not None:
            self._blend(*found, colour, alpha, clip, skin)

    def stroke(
        self,
        pts: np.ndarray,
        colour: np.ndarray | tuple[float, ...],
        width: float,
        alpha: float = 1.0,
        *,
        closed: bool = False,
        soften: float = 0.0,
        depth: float = 1.0,
        clip: tuple[tuple[int, int, int, int], np.ndarray] | None = None,
    ) -> None:
        if alpha <= 0:
            return
        found = self.mask(pts, width=width, closed=closed, soften=soften, depth=depth)
        if found is not None:
            self._blend(*found, colour, alpha, clip, False)

    def darken(
        self,
        pts: np.ndarray,
        amount: float,
        *,
        width: float | None = None,
        closed: bool = False,
        soften: float = 0.0,
        depth: float = 1.0,
    ) -> None:
        """Multiply the covered pixels by ``1 - amount`` (wrinkles, creases, shadows)."""
        if amount == 0:
            return
        found = self.mask(pts, width=width, closed=closed, soften=soften, depth=depth)
        if found is None:
            return
        (x0, y0, x1, y1), coverage = found
        region = self.image[y0:y1, x0:x1]
        region *= (1.0 - amount * coverage)[..., None]

    def _blend(self, roi, coverage, colour, alpha, clip, skin) -> None:
        x0, y0, x1, y1 = roi
        if clip is not None:
            (cx0, cy0, cx1, cy1), clip_cov = clip
            full = np.zeros((y1 - y0, x1 - x0), np.float32)
            ix0, iy0, ix1, iy1 = max(x0, cx0), max(y0, cy0), min(x1, cx1), min(y1, cy1)
            if ix1 <= ix0 or iy1 <= iy0:
                return
            full[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = clip_cov[
                iy0 - cy0 : iy1 - cy0, ix0 - cx0 : ix1 - cx0
            ]
            coverage = coverage * full
        weight = (coverage * alpha)[..., None]
        region = self.image[y0:y1, x0:x1]
        region += (np.asarray(colour, np.float32) - region) * weight
        if skin:
            sk = self.skin[y0:y1, x0:x1]
            sk += (1.0 - sk) * weight[..., 0]

    def face_coords(self, roi: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Face-unit (u, v) of every pixel centre in ``roi`` (pose inverted, yaw ignored)."""
        if self._uv is None:
            xs = np.arange(self.width, dtype=np.float32)[None, :]
            ys = np.arange(self.height, dtype=np.float32)[:, None]
            inv = self.inverse.astype(np.float32)
            self._uv = (
                inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2],
                inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2],
            )
        x0, y0, x1, y1 = roi
        return self._uv[0][y0:y1, x0:x1], self._uv[1][y0:y1, x0:x1]

    def shade(self, centre: tuple[float, float], sigma: tuple[float, float], gain: float) -> None:
        """Multiply skin by ``1 + gain * gaussian`` around ``centre`` (sigma in face units)."""
        if gain == 0:
            return
        c = self.px(np.array([centre]))[0]
        reach = 3.0 * max(sigma) * self.pixels_per_unit
        roi = self._roi(np.array([c]), reach)
        if roi is None:
            return
        cu, cv_ = (float(c) for c in self.warp(np.array([centre]))[0])
        u, v = self.face_coords(roi)
        g = np.exp(-0.5 * (((u - cu) / sigma[0]) ** 2 + ((v - cv_) / sigma[1]) ** 2))
        x0, y0, x1, y1 = roi
        factor = 1.0 + gain * g * self.skin[y0:y1, x0:x1]
        self.image[y0:y1, x0:x1] *= factor[..., None]


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 32) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _curve(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    return np.stack([xs, ys], axis=1)


def _mirror(pts: np.ndarray) -> np.ndarray:
    return pts * np.array([-1.0, 1.0])


def _jaw_shift(v: np.ndarray, identity: Identity, drop: float) -> np.ndarray:
    """How far a point at height ``v`` moves down when the jaw drops by ``drop`` (AU26)."""
    ramp = np.clip((v - (identity.mouth_y - 0.1)) / 0.35, 0.0, 1.0)
    return drop * ramp


def _outline(identity: Identity, drop: float, n: int = 96) -> np.ndarray:
    """The face contour: an egg, rounder at the skull, narrowing to the jaw and chin."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    s, c = np.sin(t), np.cos(t)
    upper = s < 0
    v = np.where(upper, identity.face_top * s, identity.face_bottom * s)
    narrowing = np.where(upper, 1.0, 1.0 - (1.0 - identity.jaw) * s**2)
    u = c * narrowing
    u = u * (1.0 - 0.06 * drop * np.clip(s, 0, 1))
    return np.stack([u, v + _jaw_shift(v, identity, drop)], axis=1)


@dataclass(frozen=True)
class _Mouth:
    width: float  # half-width
    centre_y: float  # lip line at the middle
    corner_y: float
    gap: float  # opening at the middle
    upper: float  # upper lip thickness
    lower: float
    upper_raise: float  # extra height of the upper lip's middle (AU10)

    def line(self, x: np.ndarray) -> np.ndarray:
        return self.centre_y + (self.corner_y - self.centre_y) * (x / self.width) ** 2

    def profile(self, x: np.ndarray, power: float) -> np.ndarray:
        return np.clip(1.0 - (x / self.width) ** 2, 0.0, 1.0) ** power


def _mouth(identity: Identity, a: Mapping[str, float]) -> _Mouth:
    drop = 0.3 * a["AU26"]
    parted = min(1.0, a["AU25"] / 0.3)
    closed_shift = 0.6 * drop * (1.0 - parted)
    width = (
        identity.mouth_w
        * (1.0 + 0.18 * a["AU12"] + 0.5 * a["AU20"] - 0.12 * a["AU14"] - 0.16 * a["AU23"])
        - 0.05 * a["AU28"]
    )
    corner_dy = -0.14 * a["AU12"] + 0.15 * a["AU15"] + 0.035 * a["AU20"] + 0.03 * a["AU14"]
    centre_y = identity.mouth_y + closed_shift - 0.03 * a["AU10"] - 0.05 * a["AU17"]
    corner_y = identity.mouth_y + closed_shift + corner_dy + 0.3 * drop * parted
    thin = (1 - 0.45 * a["AU20"]) * (1 - 0.6 * a["AU23"]) * (1 - 0.9 * a["AU28"])
    thin *= 1 - 0.15 * a["AU12"]
    return _Mouth(
        width=width,
        centre_y=centre_y,
        corner_y=corner_y,
        gap=0.13 * a["AU25"] + 1.0 * drop * parted,
        upper=identity.lip_upper * thin,
        lower=identity.lip_lower * thin * (1.0 + 0.3 * a["AU17"]),
        upper_raise=0.06 * a["AU10"],
    )


# --------------------------------------------------------------------------------------------
# Scene layers
# --------------------------------------------------------------------------------------------


def _background(height: int, width: int, scene: Scene) -> np.ndarray:
    rng = np.random.default_rng(scene.background_seed)
    top = rng.uniform(30, 230, 3)
    bottom = top * rng.uniform(0.6, 1.2, 3)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    image = np.broadcast_to(top + (bottom - top) * ramp, (height, width, 3)).astype(np.float32)
    image = np.ascontiguousarray(image)
    for _ in range(scene.clutter):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        kind = rng.integers(0, 3)
        x, y = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        size = rng.uniform(0.05, 0.3) * min(width, height)
        if kind == 0:
            w, h = size * rng.uniform(0.4, 1.6), size * rng.uniform(0.4, 1.6)
            cv2.rectangle(image, (x, y), (int(x + w), int(y + h)), colour, -1)
        elif kind == 1:
            cv2.circle(image, (x, y), int(size / 2), colour, -1, cv2.LINE_AA)
        else:
            end = (int(x + rng.uniform(-2, 2) * size), int(y + rng.uniform(-2, 2) * size))
            cv2.line(image, (x, y), end, colour, int(rng.integers(2, 8)), cv2.LINE_AA)
    if scene.clutter:
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.8, 2.5)))
    return image.astype(np.float32)


def _texture_rng(identity: Identity, part: int) -> np.random.Generator:
    return np.random.default_rng([identity.texture_seed, part])


def _hair_shape(identity: Identity) -> tuple[list[np.ndarray], np.ndarray | None]:
    """(hair polygons over the skull, long hair polygon behind the head or None)."""
    vol = identity.hair_volume
    t = np.linspace(math.pi, 2 * math.pi, 40)
    crown = np.stack([np.cos(t) * (1.04 + 0.5 * vol), identity.face_top * np.sin(t) - vol], axis=1)
    line = identity.hairline
    xs = np.linspace(0.98, -0.98, 25)
    if identity.hair_style == "fringe":
        ys = line + 0.16 + 0.015 * np.cos(xs * 9.0) + 0.35 * np.abs(xs) ** 4
    else:
        ys = line + 0.55 * np.abs(xs) ** 3 + 0.05 * np.abs(xs)
    ys = np.minimum(ys, identity.eye_y - identity.brow_gap - 0.1 + 0.45 * np.abs(xs) ** 2)
    hairline = np.stack([xs, ys], axis=1)  # runs right -> left
    side = 1.0 + 0.3 * vol
    # crown runs left -> right; down the right side, along the hairline, up the left side
    front = np.concatenate([crown, [[side, -0.05]], hairline, [[-side, -0.05]]])
    back = None
    if identity.hair_style == "long":
        back = np.array(
            [
                [-1.1 - vol, -0.4],
                [-1.25 - vol, 0.6],
                [-1.3 - vol, 1.7],
                [1.3 + vol, 1.7],
                [1.25 + vol, 0.6],
                [1.1 + vol, -0.4],
            ]
        )
    if identity.hair_style == "bald":  # a fringe of hair low around the back of the head
        t = np.linspace(math.pi * 0.9, math.pi * 1.25, 12)
        patch = np.stack([np.cos(t) * 1.06, identity.face_top * np.sin(t) * 0.9], axis=1)
        patch = np.concatenate([patch, patch[::-1] * [0.93, 0.8]])
        return [patch, _mirror(patch)], back
    return [front], back


def _draw_hair(p: _Painter, identity: Identity, polygon: np.ndarray, part: int) -> None:
    """A hair polygon and a few strands of lighter and darker hair inside it."""
    p.fill(polygon, identity.hair, soften=0.8)
    inside = p.mask(polygon)
    if inside is None:
        return
    rng = _texture_rng(identity, part)
    hair = np.array(identity.hair)
    lo, hi = polygon.min(axis=0), polygon.max(axis=0)
    for tone in (0.7, 1.35):  # darker and lighter strands
        starts = rng.uniform(lo, hi, (8, 2))
        ends = starts + rng.uniform((-0.3, 0.05), (0.3, 0.3), (8, 2))
        strands = np.stack([starts, ends], axis=1)
        p.stroke(strands, np.clip(hair * tone, 0, 255), 0.02, 0.35, soften=0.6, clip=inside)


def _draw_body(p: _Painter, identity: Identity, drop: float) -> None:
    skin = np.array(identity.skin)
    body = np.array([[-0.6, 1.6], [-1.7, 2.0], [-2.8, 3.6], [2.8, 3.6], [1.7, 2.0], [0.6, 1.6]])
    p.fill(body, identity.clothing)
    neck = np.array([[-0.52, 0.5], [-0.56, 1.75], [0.0, 2.0], [0.56, 1.75], [0.52, 0.5]])
    p.fill(neck, skin * 0.86)
    chin = identity.face_bottom + drop
    p.darken(_ellipse(0.0, chin + 0.02, 0.5, 0.18), 0.35, soften=0.04 * p.pixels_per_unit)


def _draw_ears(p: _Painter, identity: Identity) -> None:
    skin = np.array(identity.skin)
    for side in (-1.0, 1.0):
        ear = _ellipse(side * 0.98, identity.ear_y, 0.12, 0.22)
        p.fill(ear, skin * 0.9)
        inner = _ellipse(side * 1.0, identity.ear_y, 0.06, 0.13, 16)
        p.darken(inner, 0.25, width=0.02, closed=True, soften=0.6)


def _draw_face_shading(p: _Painter, identity: Identity, a: Mapping[str, float], scene: Scene):
    """Soft light and shadow on the skin: the layer Haar features mostly see."""
    ey, edx = identity.eye_y, identity.eye_dx
    for side in (-1.0, 1.0):
        p.shade((side * edx, ey - 0.05), (0.2, 0.13), -0.32)  # eye socket
        p.shade((side * 0.14, ey + 0.2), (0.05, 0.16), -0.12)  # beside the nose bridge
        cheek_lift = 0.13 * a["AU06"] + 0.05 * a["AU12"]
        p.shade((side * 0.5, 0.3 - cheek_lift), (0.16, 0.11), 0.1 + 0.16 * a["AU06"])
        p.shade((side * 0.85, 0.35), (0.12, 0.45), -0.18)  # side of the face
    p.shade((0.0, ey + 0.12), (0.05, 0.2), 0.1)  # nose bridge highlight
    p.shade((0.0, identity.nose_y - 0.05), (0.05, 0.04), 0.1)  # nose tip
    p.shade((0.0, identity.nose_y + 0.09), (0.12, 0.035), -0.22)  # under the nose
    p.shade((0.0, -0.6), (0.45, 0.2), 0.08)  # forehead
    # side light and edge falloff over the whole face
    found = p.mask(_outline(identity, 0.3 * a["AU26"]))
    if found is None:
        return
    (x0, y0, x1, y1), _ = found
    u, v = p.face_coords((x0, y0, x1, y1))
    r2 = u**2 + ((v - 0.1) / 1.3) ** 2
    light = 1.0 + scene.light * 0.5 * (
        math.cos(scene.light_angle) * u + math.sin(scene.light_angle) * v
    )
    factor = light * (1.0 - 0.22 * np.clip(r2, 0, 1) ** 2)
    skin = p.skin[y0:y1, x0:x1]
    p.image[y0:y1, x0:x1] *= (1.0 + (factor - 1.0) * skin)[..., None]


def _draw_brows(p: _Painter, identity: Identity, a: Mapping[str, float]) -> None:
    colour = np.minimum(np.array(identity.hair) * 0.8, np.array(identity.skin) * 0.45)
    s = np.linspace(0.0, 1.0, 16)  # 0 inner end, 1 outer end
    ey, edx, ew = identity.eye_y, identity.eye_dx, identity.eye_w
    dv = (
        -0.26 * a["AU01"] * (1 - s) ** 1.5
        - 0.26 * a["AU02"] * s**1.3
        + 0.09 * a["AU04"]
        + 0.06 * a["AU04"] * (1 - s)
        + 0.05 * a["AU09"] * (1 - s)
    )
    toward_centre = 0.07 * a["AU04"] * (1 - s) ** 2
    arch = identity.brow_arch * np.sin(math.pi * s**0.8)
    thick = identity.brow_thick * (1.0 - 0.45 * s) * (1.0 + 0.15 * a["AU04"])
    for side in (-1.0, 1.0):
        u = side * (edx - ew * 0.95 + s * ew * 2.2 - toward_centre)
        v = ey - identity.brow_gap - arch + dv + 0.02 * s
        upper = _curve(u, v - thick / 2)
        lower = _curve(u, v + thick / 2)
        p.fill(np.concatenate([upper, lower[::-1]]), colour, 0.92, soften=0.7)


def _draw_forehead_and_glabella(p: _Painter, identity: Identity, a: Mapping[str, float]) -> None:
    brow_v = identity.eye_y - identity.brow_gap
    for k, lift in enumerate((0.1, 0.18, 0.26)):
        v = brow_v - lift - 0.04
        xs = np.linspace(-0.34, 0.34, 12)
        p.darken(_curve(xs, v - 0.04 * (1 - (xs / 0.34) ** 2) + 0.005 * k), 0.55 * a["AU01"],
                 width=0.022, soften=0.7)  # fmt: skip
        for side in (-1.0, 1.0):
            xs = side * np.linspace(0.3, 0.72, 10)
            p.darken(_curve(xs, v + 0.03 * ((np.abs(xs) - 0.5) / 0.22) ** 2), 0.55 * a["AU02"],
                     width=0.022, soften=0.7)  # fmt: skip
    for side in (-1.0, 1.0):  # vertical furrows between the brows
        pts = _curve(np.array([side * 0.07, side * 0.055]), np.array([brow_v - 0.06, brow_v + 0.1]))
        p.darken(pts, 0.6 * a["AU04"], width=0.025, soften=0.8)
    p.shade((0.0, brow_v + 0.03), (0.08, 0.06), -0.25 * a["AU04"])


def _eye_lids(identity: Identity, a: Mapping[str, float], side: float):
    s = np.linspace(-1.0, 1.0, 17)  # -1 inner corner, 1 outer corner
    u = side * (identity.eye_dx + s * identity.eye_w)
    base = identity.eye_y + 0.012 * (1 - s) / 2 - identity.eye_tilt * (1 + s) / 2
    upper_h = identity.eye_upper + 0.17 * a["AU05"] - 0.02 * a["AU06"] - 0.035 * a["AU07"]
    upper_h -= 0.02 * a["AU04"]
    lower_h = identity.eye_lower - 0.07 * a["AU06"] - 0.05 * a["AU07"]
    lower_h = max(lower_h, 0.006)
    closed = a["AU45"]
    upper_h = upper_h * (1 - closed) + (-lower_h + 0.004) * closed
    upper = _curve(u, base - upper_h * (1 - s**2) ** 0.8 * (1 - 0.08 * s))
    lower_shape = (1 - s**2) ** (0.9 + 0.8 * max(a["AU07"], a["AU06"] * 0.5))
    lower = _curve(u, base + lower_h * lower_shape * (1 + 0.12 * s))
    return upper, lower, upper_h, lower_h


def _draw_eyes(p: _Painter, identity: Identity, a: Mapping[str, float], scene: Scene) -> None:
    skin = np.array(identity.skin)
    dark = np.minimum(np.array(identity.hair) * 0.5, skin * 0.25)
    for side in (-1.0, 1.0):
        upper, lower, upper_h, lower_h = _eye_lids(identity, a, side)
        outer = upper[-1]
        # lid crease above the eye
        crease = upper.copy()
        crease[:, 1] -= 0.05 + 0.02 * (1 - a["AU05"])
        p.darken(crease[2:-2], 0.22 * (1 - 0.7 * a["AU05"]), width=0.018, soften=0.8)
        opening = np.concatenate([upper, lower[::-1]])
        found = p.mask(opening)
        if found is not None and upper_h + lower_h > 0.01:
            p.fill(opening, np.array([222.0, 228.0, 234.0]) * 0.95)
            ix = side * identity.eye_dx + scene.gaze_x * 0.3 * identity.eye_w * 0.6
            iy = identity.eye_y + 0.006 + scene.gaze_y * 0.02
            p.fill(_ellipse(ix, iy, identity.iris_r, identity.iris_r), identity.iris, clip=found)
            p.fill(_ellipse(ix, iy, identity.iris_r * 0.42, identity.iris_r * 0.42), (10.0, 10.0, 12.0),
                   clip=found)  # fmt: skip
            shadow = np.concatenate([upper, upper[::-1] + [0, 0.03]])
            p.darken(shadow, 0.3, soften=0.8)
        # upper lash line, a little past the outer corner
        lash = np.concatenate([upper, [outer + [side * 0.035, -0.012]]])
        p.stroke(lash, dark, 0.03, 0.95, soften=0.5)
        p.darken(lower, 0.3 + 0.35 * a["AU07"], width=0.014, soften=0.5)
        # AU06: furrow under the eye and crow's feet
        furrow = lower.copy()
        furrow[:, 1] += 0.065
        p.darken(furrow[3:-3], 0.6 * a["AU06"], width=0.025, soften=0.9)
        for angle in (-0.45, 0.0, 0.45):
            start = outer + [side * 0.05, 0.0]
            end = start + [side * 0.12 * math.cos(angle), 0.12 * math.sin(angle)]
            p.darken(np.stack([start, end]), 0.65 * a["AU06"], width=0.02, soften=0.7)


def _draw_nose(p: _Painter, identity: Identity, a: Mapping[str, float]) -> None:
    ny, nw = identity.nose_y, identity.nose_w * (1 + 0.18 * a["AU09"])
    lift = 0.06 * a["AU09"]
    skin = np.array(identity.skin)
    for side in (-1.0, 1.0):
        nostril = _ellipse(side * nw * 0.45, ny + 0.035 - lift, 0.042, 0.018, 20)
        p.fill(nostril, skin * 0.3, 0.9, soften=0.7, depth=1.4)
        t = np.linspace(0, 1, 10)
        wing = _curve(side * nw * (0.95 - 0.4 * t**2), ny - 0.06 + 0.12 * t - lift * (1 - t))
        p.darken(wing, 0.3, width=0.02, soften=0.8, depth=1.3)
    ys = identity.eye_y + np.array([0.05, 0.1, 0.15])
    for y in ys:  # AU09 wrinkles across the bridge
        xs = np.linspace(-0.085, 0.085, 7)
        p.darken(_curve(xs, y + 0.015 * (xs / 0.085) ** 2), 0.55 * a["AU09"], width=0.017,
                 soften=0.6, depth=1.2)  # fmt: skip
    p.shade((0.0, identity.eye_y + 0.1), (0.09, 0.07), -0.2 * a["AU09"])


def _draw_folds(p: _Painter, identity: Identity, a: Mapping[str, float], mouth: _Mouth) -> None:
    depth = min(identity.fold_depth + 0.45 * a["AU12"], 0.8)
    upper_depth = min(0.35 * a["AU10"] + 0.35 * a["AU09"], 0.6)  # they deepen its upper part
    t = np.linspace(0, 1, 12)
    for side in (-1.0, 1.0):
        x0, y0 = identity.nose_w + 0.06, identity.nose_y - 0.03
        x1, y1 = mouth.width + 0.07, mouth.corner_y + 0.08
        xs = x0 + (x1 - x0) * t + 0.06 * np.sin(math.pi * t)
        fold = _curve(side * xs, y0 + (y1 - y0) * t)
        p.darken(fold, depth * 0.6, width=0.026, soften=1.2)
        p.darken(fold[:5], upper_depth * 0.6, width=0.026, soften=1.0)
    for side in (-1.0, 1.0):  # AU14 dimples, AU15 lines down from the corners
        cx, cy = side * (mouth.width + 0.045), mouth.corner_y
        dimple = _curve(np.array([cx, cx + side * 0.012, cx]), np.array([cy - 0.05, cy, cy + 0.05]))
        p.darken(dimple, 0.6 * a["AU14"], width=0.02, soften=0.8)
        p.shade((cx, cy), (0.03, 0.05), -0.2 * a["AU14"])
        down = _curve(side * (mouth.width + np.array([0.0, 0.03, 0.06])),
                      mouth.corner_y + np.array([0.02, 0.1, 0.2]))  # fmt: skip
        p.darken(down, 0.45 * a["AU15"], width=0.022, soften=1.0)
        stretch = _curve(side * (mouth.width + np.array([0.02, 0.08, 0.14])),
                         mouth.corner_y + np.array([0.0, 0.015, 0.04]))  # fmt: skip
        p.darken(stretch, 0.55 * a["AU20"], width=0.022, soften=0.9)


def _draw_mouth(p: _Painter, identity: Identity, a: Mapping[str, float], mouth: _Mouth) -> None:
    lip = np.array(identity.lip)
    xs = np.linspace(-mouth.width, mouth.width, 31)
    line = mouth.line(xs)
    opening = mouth.gap * mouth.profile(xs, 0.7)
    upper_edge = line - 0.3 * opening  # where the upper lip ends
    lower_edge = line + 0.7 * opening
    bow = 0.012 * np.exp(-(((np.abs(xs) - 0.08) / 0.05) ** 2)) - 0.012 * np.exp(-((xs / 0.03) ** 2))
    raise_ = mouth.upper_raise * np.clip(1.0 - (xs / (0.7 * mouth.width)) ** 2, 0.0, 1.0)
    upper_top = upper_edge - mouth.upper * mouth.profile(xs, 0.6) - bow - raise_
    lower_bottom = lower_edge + mouth.lower * mouth.profile(xs, 0.6)
    p.fill(np.concatenate([_curve(xs, upper_top), _curve(xs, upper_edge)[::-1]]), lip * 0.9,
           soften=0.5)  # fmt: skip
    p.fill(np.concatenate([_curve(xs, lower_edge), _curve(xs, lower_bottom)[::-1]]), lip,
           soften=0.5)  # fmt: skip
    p.darken(_curve(xs, lower_bottom + 0.012), 0.15, width=0.02, soften=1.0)
    if mouth.gap > 0.004:
        cavity = np.concatenate([_curve(xs, upper_edge), _curve(xs, lower_edge)[::-1]])
        found = p.mask(cavity)
        p.fill(cavity, np.array([30.0, 28.0, 45.0]))
        teeth_h = min(0.055, 0.6 * mouth.gap) * mouth.profile(xs, 0.5)
        teeth = np.concatenate(
            [_curve(xs * 0.85, upper_edge - 0.01), _curve(xs * 0.85, upper_edge + teeth_h)[::-1]]
        )
        p.fill(teeth, np.array([200.0, 212.0, 220.0]), clip=found)
        if mouth.gap > 0.12:  # lower teeth show when the jaw is well open
            low_h = 0.03 * mouth.profile(xs, 0.5)
            lower_teeth = np.concatenate(
                [_curve(xs * 0.7, lower_edge - low_h), _curve(xs * 0.7, lower_edge + 0.01)[::-1]]
            )
            p.fill(lower_teeth, np.array([180.0, 192.0, 200.0]), clip=found)
    p.darken(_curve(xs, line), 0.45 + 0.35 * a["AU28"], width=0.016 + 0.02 * a["AU28"], soften=0.6)
    vermilion = np.concatenate([_curve(xs, upper_top), _curve(xs, lower_bottom)[::-1]])
    p.darken(vermilion, 0.3 * a["AU23"], width=0.014, closed=True, soften=0.5)
    for side in (-1.0, 1.0):  # corners
        p.darken(_ellipse(side * mouth.width, mouth.corner_y, 0.018, 0.012, 12), 0.35, soften=0.8)
    if a["AU28"] > 0:  # lips rolled in: puffed skin above and below the lip line
        p.shade((0.0, mouth.centre_y - 0.05), (0.2, 0.03), 0.12 * a["AU28"])
        p.shade((0.0, mouth.centre_y + 0.06), (0.2, 0.03), 0.12 * a["AU28"])
    # AU17: chin boss pushed up, furrow under the lower lip, dimpled chin
    below = mouth.centre_y + 0.7 * mouth.gap + mouth.lower
    xs2 = np.linspace(-0.17, 0.17, 11)
    sulcus = _curve(xs2, below + 0.07 + 0.05 * (xs2 / 0.17) ** 2)
    p.darken(sulcus, 0.12 + 0.6 * a["AU17"], width=0.035, soften=1.2)
    chin_y = identity.face_bottom + 0.3 * a["AU26"] - 0.2
    p.shade((0.0, chin_y), (0.16, 0.08), 0.2 * a["AU17"])
    if a["AU17"] > 0:
        rng = _texture_rng(identity, 2)
        dots = rng.normal(0, 1, (14, 2)) * [0.09, 0.05] + [0.0, chin_y]
        for dot in dots:
            p.darken(_ellipse(dot[0], dot[1], 0.018, 0.014, 10), 0.5 * a["AU17"], soften=0.8)


def _draw_beard(p: _Painter, identity: Identity, mouth: _Mouth, drop: float) -> None:
    if identity.beard <= 0:
        return
    outline = _outline(identity, drop)
    jaw = outline[(outline[:, 1] > 0.3)]
    jaw = jaw[np.argsort(np.arctan2(jaw[:, 1], jaw[:, 0]))]
    inner_y = mouth.centre_y + 0.7 * mouth.gap + mouth.lower + 0.03
    inner = np.array(
        [[-0.45, mouth.corner_y + 0.05], [0.0, inner_y], [0.45, mouth.corner_y + 0.05]]
    )
    beard = np.concatenate([jaw, inner])
    p.fill(beard, identity.hair, identity.beard, soften=1.5)
    xs = np.linspace(-mouth.width - 0.02, mouth.width + 0.02, 9)
    top = mouth.centre_y - mouth.upper - 0.1 + 0.03 * (xs / mouth.width) ** 2
    bottom = mouth.line(xs) - mouth.upper * 0.8
    moustache = np.concatenate([_curve(xs, top), _curve(xs, bottom)[::-1]])
    p.fill(moustache, identity.hair, identity.beard * 0.9, soften=1.2)


def _draw_glasses(p: _Painter, identity: Identity) -> None:
    if not identity.glasses:
        return
    frame = np.array(identity.hair) * 0.4
    for side in (-1.0, 1.0):
        cx = side * identity.eye_dx
        rim = _ellipse(cx, identity.eye_y + 0.01, identity.eye_w + 0.09, 0.15, 28)
        p.fill(rim, (120.0, 110.0, 100.0), 0.08)
        p.stroke(rim, frame, 0.028, 0.9, closed=True, soften=0.4)
        arm = np.array(
            [
                [side * (identity.eye_dx + identity.eye_w + 0.09), identity.eye_y],
                [side * 1.0, identity.eye_y - 0.02],
            ]
        )
        p.stroke(arm, frame, 0.025, 0.9, soften=0.4)
    bridge = np.array([[-identity.eye_dx + identity.eye_w + 0.09, identity.eye_y - 0.02], [0.0, identity.eye_y - 0.05],
                       [identity.eye_dx - identity.eye_w - 0.09, identity.eye_y - 0.02]])  # fmt: skip
    p.stroke(bridge, frame, 0.025, 0.9, soften=0.4)


def _pose_matrix(height: int, width: int, scene: Scene) -> np.ndarray:
    scale = FACE_HALF_WIDTH * min(height, width) * scene.scale
    angle = math.radians(scene.roll)
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    cx = width * (0.5 + scene.shift_x)
    cy = height * (0.47 + scene.shift_y)
    return np.array([[cos, -sin, cx], [sin, cos, cy]], np.float64)


def face_box_of(matrix: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """The generator's square face box (x, y, w, h) in pixels for a pose, clipped to the image."""
    centre = matrix[:, :2] @ np.array([0.0, FACE_BOX_CENTRE_Y]) + matrix[:, 2]
    side = int(round(2.0 * FACE_BOX_HALF * float(math.hypot(matrix[0, 0], matrix[1, 0]))))
    x0 = int(round(centre[0] - side / 2.0))
    y0 = int(round(centre[1] - side / 2.0))
    x1, y1 = min(x0 + side, width), min(y0 + side, height)
    x0, y0 = max(x0, 0), max(y0, 0)
    return x0, y0, x1 - x0, y1 - y0


def render_face(
    identity: Identity,
    intensities: Mapping[str, float] | np.ndarray,
    scene: Scene,
    size: tuple[int, int] = (256, 256),
) -> Rendered:
    """Draw ``identity`` showing ``intensities`` (0..5 per AU) in ``scene``; ``size`` is (w, h).

    Same inputs give the same pixels: every random choice comes from the identity's texture seed
    or the scene's seeds, never from the AUs, so two renders that differ only in one AU differ only
    where that AU moves the face.
    """
    width, height = size
    a = amounts_from_intensities(intensities)
    matrix = _pose_matrix(height, width, scene)
    image = _background(height, width, scene)
    p = _Painter(image, matrix, scene.yaw)
    drop = 0.3 * a["AU26"]
    mouth = _mouth(identity, a)
    skin = np.array(identity.skin)

    front_hair, back_hair = _hair_shape(identity)
    if back_hair is not None:
        _draw_hair(p, identity, back_hair, 1)
    _draw_body(p, identity, drop)
    _draw_ears(p, identity)
    p.fill(_outline(identity, drop), skin, soften=0.6, skin=True)
    _draw_face_shading(p, identity, a, scene)
    _draw_forehead_and_glabella(p, identity, a)
    for k, polygon in enumerate(front_hair):
        _draw_hair(p, identity, polygon, 3 + k)
    _draw_brows(p, identity, a)
    _draw_eyes(p, identity, a, scene)
    _draw_nose(p, identity, a)
    _draw_folds(p, identity, a, mouth)
    _draw_mouth(p, identity, a, mouth)
    _draw_beard(p, identity, mouth, drop)
    _draw_glasses(p, identity)

    gx, gy = scene.gradient
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    image *= (scene.exposure * (1.0 + gx * xs + gy * ys))[..., None]
    if scene.noise > 0:
        noise_rng = np.random.default_rng(scene.noise_seed)
        image += noise_rng.standard_normal(image.shape, dtype=np.float32) * np.float32(scene.noise)
    out = np.clip(image + 0.5, 0, 255).astype(np.uint8)

    named = {
        "left_eye": (-identity.eye_dx, identity.eye_y),
        "right_eye": (identity.eye_dx, identity.eye_y),
        "nose_tip": (0.0, identity.nose_y),
        "mouth_left": (-mouth.width, mouth.corner_y),
        "mouth_right": (mouth.width, mouth.corner_y),
        "mouth_centre": (0.0, mouth.centre_y),
        "chin": (0.0, identity.face_bottom + drop),
        "brow_centre": (0.0, identity.eye_y - identity.brow_gap),
    }
    pts = p.px(np.array(list(named.values())))
    landmarks = {k: (float(x), float(y)) for k, (x, y) in zip(named, pts, strict=True)}
    return Rendered(out, face_box_of(matrix, height, width), landmarks)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a BGR image (deterministic for a given OpenCV build)."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode the image as JPEG")
    return data.tobytes()
