"""Face detectors beyond the frontal Haar cascade, all offline (no download at run time).

- ``cascade``: OpenCV's frontal cascade, then its profile cascade on the image and on its mirror
  (the profile cascade knows one side only), then the frontal cascade on the image turned by
  +-25 degrees (a tilted head): the frontal pass decides most images quickly, the later passes
  find the turned and tilted faces it misses. Both cascades ship in the opencv-python wheel.
- ``dlib-hog``: dlib's HOG + linear SVM frontal detector (``pip install -e ".[dlib]"``).
- ``dlib-cnn``: dlib's CNN (MMOD) detector, with the weights of the ``face-recognition-models``
  package (same extra): the most robust to pose and occlusion here, and the slowest.

``benchmarks/detectors.py`` measures each on the real photos of ``shared/data/faces``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from pipeline.faces import FaceBox, HaarDetector, clipped_box

PROFILE_CASCADE = "haarcascade_profileface.xml"
#: Extra overlapping hits the tilted passes need beyond the frontal pass's ``min_neighbors``.
TILT_EXTRA_NEIGHBORS = 3
DLIB_EXTRA = 'pip install -e ".[dlib]"  (dlib-bin and face-recognition-models)'


class CascadeDetector:
    """Frontal Haar cascade first; the profile cascade, both ways round, only when it finds none."""

    name = "cascade"

    #: In-plane tilts (degrees) tried last, with the frontal cascade, when nothing else is found.
    tilts: tuple[float, ...] = (25.0, -25.0)

    def __init__(self, frontal: HaarDetector, min_neighbors: int) -> None:
        self._frontal = frontal
        # Stricter on turned copies: a rotated background offers the cascade new chances for a
        # false face (one frame of no_face.mp4 in 95 at the frontal pass's own setting).
        self._upright = HaarDetector(
            frontal.scale_factor,
            frontal.min_neighbors + TILT_EXTRA_NEIGHBORS,
            frontal.min_face_fraction,
            frontal.first_pass_fraction,
        )
        profile_path = str(Path(cv2.data.haarcascades) / PROFILE_CASCADE)
        self._profile = HaarDetector(
            frontal.scale_factor,
            min_neighbors,
            frontal.min_face_fraction,
            frontal.first_pass_fraction,
            cascade_path=profile_path,
        )

    def detect(self, gray: np.ndarray) -> list[FaceBox]:
        faces = self._frontal.detect(gray)
        if faces:
            return faces
        faces = self._profile.detect(gray)
        width = gray.shape[1]
        mirrored = self._profile.detect(np.ascontiguousarray(gray[:, ::-1]))
        faces += [FaceBox(width - b.x - b.w, b.y, b.w, b.h, b.score) for b in mirrored]
        if faces:
            return faces
        for angle in self.tilts:
            faces += self._tilted(gray, angle)
        return faces

    def _tilted(self, gray: np.ndarray, angle: float) -> list[FaceBox]:
        """Frontal faces of ``gray`` rotated by ``angle`` degrees (a tilted head upright), as
        boxes of the same side centred where the face is in ``gray``."""
        height, width = gray.shape[:2]
        centre = (width / 2.0, height / 2.0)
        rotation = cv2.getRotationMatrix2D(centre, angle, 1.0)
        upright = cv2.warpAffine(gray, rotation, (width, height), flags=cv2.INTER_LINEAR)
        back = cv2.invertAffineTransform(rotation)
        boxes = []
        for b in self._upright.detect(upright):
            cx, cy = back @ np.array([b.x + b.w / 2.0, b.y + b.h / 2.0, 1.0])
            boxes.append(
                clipped_box(
                    cx - b.w / 2, cy - b.h / 2, cx + b.w / 2, cy + b.h / 2, b.score, width, height
                )
            )
        return boxes


def _dlib():
    try:
        import dlib
    except ImportError:
        raise ImportError(f"the dlib face detectors need dlib: {DLIB_EXTRA}") from None
    return dlib


def _models_folder() -> Path:
    """``face_recognition_models``'s model folder, found without importing the package (its
    ``__init__`` needs ``pkg_resources``, which recent setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"detector 'dlib-cnn' needs the face-recognition-models weights: {DLIB_EXTRA}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibHogDetector:
    """dlib's frontal HOG detector; ``score`` is the SVM margin. ``upsample``: pyramid levels up
    (finds faces half as small per level, at about 4x the cost)."""

    name = "dlib-hog"

    def __init__(self, upsample: int = 1) -> None:
        self._detector = _dlib().get_frontal_face_detector()
        self.upsample = upsample

    def detect(self, gray: np.ndarray) -> list[FaceBox]:
        height, width = gray.shape[:2]
        rects, scores, _ = self._detector.run(np.ascontiguousarray(gray), self.upsample, 0.0)
        return [
            clipped_box(r.left(), r.top(), r.right(), r.bottom(), s, width, height)
            for r, s in zip(rects, scores, strict=True)
        ]


class DlibCnnDetector:
    """dlib's CNN (MMOD) face detector with the face-recognition-models weights. No upsampling by
    default: on a 640 px copy it finds faces down to about 80 px, and one level up costs ~4x
    (about 12 s per photo on one core here)."""

    name = "dlib-cnn"

    def __init__(self, upsample: int = 0) -> None:
        weights = _models_folder() / "mmod_human_face_detector.dat"
        if not weights.is_file():
            raise FileNotFoundError(f"no dlib CNN weights at {weights}: {DLIB_EXTRA}")
        self._detector = _dlib().cnn_face_detection_model_v1(str(weights))
        self.upsample = upsample

    def detect(self, gray: np.ndarray) -> list[FaceBox]:
        height, width = gray.shape[:2]
        found = self._detector(np.ascontiguousarray(gray), self.upsample)
        return [
            clipped_box(
                d.rect.left(),
                d.rect.top(),
                d.rect.right(),
                d.rect.bottom(),
                d.confidence,
                width,
                height,
            )
            for d in found
        ]
