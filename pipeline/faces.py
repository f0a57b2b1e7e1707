"""The face stage: image bytes -> detected face -> square, zero-padded, grayscale size x size uint8 crop."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np

from pipeline.images import ImageDecodeError, decode_gray
from pipeline.options import option
from pipeline.rejects import RejectReason
from pipeline.vocabulary import FACE_SIZE

DETECTORS: tuple[str, ...] = ("haar", "cascade", "dlib-hog", "dlib-cnn", "dnn", "none")
#: OpenCV's frontal-face cascade; the opencv-python 4.x wheels ship it under cv2.data.haarcascades.
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
#: The res10 SSD face detector's training mean (BGR) and input side.
_SSD_MEAN = (104.0, 177.0, 123.0)
_SSD_SIDE = 300


@dataclass
class FaceConfig:
    """How faces are found and cropped. Defaults were tuned on the real photos in shared/data/faces."""

    detector: Literal["haar", "cascade", "dlib-hog", "dlib-cnn", "dnn", "none"] = option(
        "cascade",
        "haar: OpenCV's frontal-face Haar cascade (ships with opencv-python, offline); "
        "cascade (default): frontal, then profile cascades both ways round, then tilted +-25 "
        "degrees (turned and tilted faces; offline); "
        "dlib-hog / dlib-cnn: dlib's HOG or CNN detector (pip install -e '.[dlib]'; offline); "
        "dnn: OpenCV DNN detector from --model-path (res10 SSD .caffemodel + --prototxt-path, "
        "or YuNet .onnx); none: the image already is a face crop (or use a given face box)",
    )
    model_path: str | None = option(
        None, "dnn only: res10 SSD weights (.caffemodel / .pb) or YuNet model (.onnx)"
    )
    prototxt_path: str | None = option(
        None, "dnn only: network description for a res10 SSD model (.prototxt / .pbtxt)"
    )
    min_confidence: float = option(0.5, "dnn only: smallest detection score accepted as a face")
    margin: float = option(
        0.2, "crop margin added on each side of the face box, as a fraction of its side"
    )
    detect_max_side: int = option(
        640,
        "detect on a copy downscaled to at most this many pixels on its longer side "
        "(speed), then crop from the full-resolution image (detail of small faces)",
    )
    min_face_fraction: float = option(
        0.1, "smallest face accepted, as a fraction of the image's shorter side"
    )
    haar_scale_factor: float = option(
        1.1, "haar only: pyramid step between detection scales (larger: faster, may miss)"
    )
    haar_min_neighbors: int = option(
        5, "haar only: overlapping hits needed to accept a face (larger: fewer false faces)"
    )
    haar_first_pass_fraction: float = option(
        0.25,
        "haar only: first search faces of at least this fraction of the shorter side "
        "(fast), and down to --min-face-fraction only when none is found; 0 searches all at once",
    )
    opencv_threads: int = option(
        1,
        "cv2.setNumThreads on each worker: 1 when Ray already runs one worker per core; "
        "-1 restores OpenCV's default (all cores)",
    )
    size: int = option(FACE_SIZE, "side in pixels of the stored square grayscale face")

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(
                f"FaceConfig.detector: expected one of {DETECTORS}, got {self.detector!r}"
            )
        checks = {
            "margin": self.margin >= 0,
            "detect_max_side": self.detect_max_side >= 32,
            "min_face_fraction": 0 <= self.min_face_fraction <= 1,
            "min_confidence": 0 <= self.min_confidence <= 1,
            "haar_scale_factor": self.haar_scale_factor > 1,
            "haar_min_neighbors": self.haar_min_neighbors >= 0,
            "haar_first_pass_fraction": 0 <= self.haar_first_pass_fraction <= 1,
            "size": self.size >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            helps = {f.name: f.metadata["help"] for f in fields(self)}
            raise ValueError(
                "; ".join(
                    f"FaceConfig.{name}={getattr(self, name)!r} invalid ({helps[name]})"
                    for name in bad
                )
            )


@dataclass(frozen=True)
class FaceBox:
    """A face rectangle in pixel coordinates of the image it was found in; ``score`` is detector-specific."""

    x: int
    y: int
    w: int
    h: int
    score: float

    @property
    def area(self) -> int:
        return self.w * self.h


class FaceDetector(Protocol):
    """Finds faces in a 2-D uint8 grayscale image."""

    name: str

    def detect(self, gray: np.ndarray) -> list[FaceBox]: ...


class HaarDetector:
    """OpenCV's frontal-face Haar cascade; ``score`` is the number of overlapping raw hits."""

    name = "haar"

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face_fraction: float = 0.1,
        first_pass_fraction: float = 0.25,
        cascade_path: str | None = None,
    ) -> None:
        if cascade_path is None:
            haar_dir = getattr(getattr(cv2, "data", None), "haarcascades", None)
            if haar_dir is None:
                raise FileNotFoundError(
                    f"this OpenCV ({cv2.__version__}) ships no Haar cascades (cv2.data.haarcascades); "
                    "install opencv-python-headless 4.x or use --detector dnn"
                )
            cascade_path = str(Path(haar_dir) / HAAR_CASCADE)
        self._cascade = cv2.CascadeClassifier(cascade_path)
        if self._cascade.empty():
            raise FileNotFoundError(f"cannot load the Haar cascade {cascade_path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_fraction = min_face_fraction
        self.first_pass_fraction = first_pass_fraction

    def detect(self, gray: np.ndarray) -> list[FaceBox]:
        """Faces of at least ``min_face_fraction`` of the shorter side, searched coarse to fine.

        The caller keeps only the largest face, and the cost of a cascade scan grows as 1/side**2 of
        the smallest face searched. So the large faces (>= ``first_pass_fraction``) are searched
        first, and the small scales only when that finds nothing: on the celebrity photos this is
        ~3x faster, and returns the same largest face up to a few pixels.
        """
        short_side = min(gray.shape[:2])
        fractions = [self.min_face_fraction]
        if self.first_pass_fraction > self.min_face_fraction:
            fractions.insert(0, self.first_pass_fraction)
        for fraction in fractions:
            side = math.ceil(fraction * short_side)
            if side > short_side:
                continue
            boxes, hits = self._cascade.detectMultiScale2(
                gray,
                scaleFactor=self.scale_factor,
                minNeighbors=self.min_neighbors,
                minSize=(side, side),
            )
            if len(boxes):
                return [
                    FaceBox(int(x), int(y), int(w), int(h), float(n))
                    for (x, y, w, h), n in zip(boxes, np.ravel(hits), strict=True)
                ]
        return []


class DnnDetector:
    """The OpenCV DNN face detector: res10 SSD (Caffe or TensorFlow) or YuNet (.onnx)."""

    name = "dnn"

    def __init__(
        self, model_path: str | None, prototxt_path: str | None = None, min_confidence: float = 0.5
    ) -> None:
        if not model_path:
            raise FileNotFoundError(
                "detector 'dnn' needs a model file: set FaceConfig.model_path (--model-path) to a res10 "
                "SSD .caffemodel (with --prototxt-path) or a YuNet .onnx"
            )
        model = Path(model_path)
        if not model.is_file():
            raise FileNotFoundError(f"FaceConfig.model_path (--model-path): no such file: {model}")
        self.min_confidence = min_confidence
        self._yunet = None
        self._net = None
        try:
            if model.suffix.lower() == ".onnx":
                self._yunet = cv2.FaceDetectorYN.create(
                    str(model), "", (320, 320), score_threshold=min_confidence
                )
            else:
                if not prototxt_path or not Path(prototxt_path).is_file():
                    raise FileNotFoundError(
                        f"FaceConfig.prototxt_path (--prototxt-path): no such file: {prototxt_path} "
                        f"(needed with the SSD model {model})"
                    )
                self._net = cv2.dnn.readNet(str(model), str(prototxt_path))
        except cv2.error as error:
            raise ValueError(f"OpenCV cannot load the face model {model}: {error}") from None

    def detect(self, gray: np.ndarray) -> list[FaceBox]:
        height, width = gray.shape[:2]
        bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        if self._yunet is not None:
            self._yunet.setInputSize((width, height))
            _, faces = self._yunet.detect(bgr)
            rows = [] if faces is None else faces
            return [
                clipped_box(r[0], r[1], r[0] + r[2], r[1] + r[3], r[14], width, height)
                for r in rows
            ]
        blob = cv2.dnn.blobFromImage(
            cv2.resize(bgr, (_SSD_SIDE, _SSD_SIDE)), 1.0, (_SSD_SIDE, _SSD_SIDE), _SSD_MEAN
        )
        self._net.setInput(blob)
        detections = self._net.forward().reshape(-1, 7)  # [image, class, score, x0, y0, x1, y1]
        return [
            clipped_box(
                d[3] * width, d[4] * height, d[5] * width, d[6] * height, d[2], width, height
            )
            for d in detections
            if d[2] >= self.min_confidence
        ]


def clipped_box(
    x0: float, y0: float, x1: float, y1: float, score: float, width: int, height: int
) -> FaceBox:
    x0, x1 = (min(max(round(v), 0), width) for v in (x0, x1))
    y0, y1 = (min(max(round(v), 0), height) for v in (y0, y1))
    return FaceBox(x0, y0, x1 - x0, y1 - y0, float(score))


class WholeImageDetector:
    """Detector "none": the input already is a face crop, so the whole image is the face."""

    name = "none"

    def detect(self, gray: np.ndarray) -> list[FaceBox]:
        height, width = gray.shape[:2]
        return [FaceBox(0, 0, width, height, 1.0)]


def haar_detector(config: FaceConfig) -> HaarDetector:
    """The frontal Haar cascade with ``config``'s search settings."""
    return HaarDetector(
        config.haar_scale_factor,
        config.haar_min_neighbors,
        config.min_face_fraction,
        config.haar_first_pass_fraction,
    )


def make_detector(config: FaceConfig) -> FaceDetector:
    """The detector ``config.detector`` names; model files are checked here, not per image."""
    if config.detector == "haar":
        return haar_detector(config)
    if config.detector == "cascade":
        from pipeline.face_detectors import CascadeDetector

        return CascadeDetector(haar_detector(config), config.haar_min_neighbors)
    if config.detector in ("dlib-hog", "dlib-cnn"):
        from pipeline.face_detectors import DlibCnnDetector, DlibHogDetector

        return DlibHogDetector() if config.detector == "dlib-hog" else DlibCnnDetector()
    if config.detector == "dnn":
        return DnnDetector(config.model_path, config.prototxt_path, config.min_confidence)
    return WholeImageDetector()


def crop_square_face(gray: np.ndarray, box: FaceBox, margin: float, size: int) -> np.ndarray:
    """Crop ``box`` grown by ``margin`` x its side on each side, zero-pad to a centred square, resize.

    Parts of the grown box outside the image, and the bands that make a non-square box square, are
    black (0), as in the paper's pre-processing. Returns a C-contiguous ``size`` x ``size`` uint8 array.
    """
    if box.w <= 0 or box.h <= 0:
        raise ValueError(f"face box must have a positive size, got {box}")
    x0, x1 = round(box.x - margin * box.w), round(box.x + box.w + margin * box.w)
    y0, y1 = round(box.y - margin * box.h), round(box.y + box.h + margin * box.h)
    crop_w, crop_h = x1 - x0, y1 - y0
    side = max(crop_w, crop_h)
    square = np.zeros((side, side), dtype=np.uint8)
    # Where the crop rectangle sits in the square, then which part of it the image covers.
    left, top = (side - crop_w) // 2, (side - crop_h) // 2
    height, width = gray.shape[:2]
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if ix1 > ix0 and iy1 > iy0:
        square[top + iy0 - y0 : top + iy1 - y0, left + ix0 - x0 : left + ix1 - x0] = gray[
            iy0:iy1, ix0:ix1
        ]
    if side == size:
        return square
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(square, (size, size), interpolation=interpolation))


@dataclass
class FaceResult:
    """One image's outcome: the face bytes (``size * size`` uint8, row-major) or a reject reason."""

    face: bytes
    box: tuple[int, int, int, int] | None
    reject_reason: str | None

    @property
    def accepted(self) -> bool:
        return self.reject_reason is None

    @classmethod
    def rejected(cls, reason: RejectReason) -> FaceResult:
        return cls(b"", None, reason.value)


class FaceProcessor:
    """Runs the face stage on image bytes; cheap to pickle to Ray workers.

    The detector (which holds unpicklable OpenCV objects) is built on first use in the worker
    process and dropped when pickling.
    """

    def __init__(self, config: FaceConfig | None = None) -> None:
        self.config = config or FaceConfig()
        self._detector: FaceDetector | None = None

    def __getstate__(self) -> dict:
        return {"config": self.config, "_detector": None}

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            cv2.setNumThreads(self.config.opencv_threads)
            self._detector = make_detector(self.config)
        return self._detector

    def detect_faces(self, gray: np.ndarray) -> list[FaceBox]:
        """Faces in ``gray`` (full-resolution coordinates) of at least ``min_face_fraction``, largest first.

        Detection runs on an anti-aliased (INTER_AREA) copy whose longer side is at most
        ``detect_max_side``, which bounds its cost whatever the photo's resolution: a detector's
        cost grows with the pixels it scans (DNN) or the number of window positions at its smallest
        scale (Haar), while the faces of 2,000+ px web photos stay far above the detector's smallest
        window when shrunk (scanning the celebrity photos at full size down to 24 px windows ran at
        1.3 images/s, against 6 at 640 px). The boxes are scaled back and the crop taken from the
        full-resolution image, keeping the detail of faces that are small in a large photo.
        """
        detector = self.detector
        if isinstance(detector, WholeImageDetector):
            return detector.detect(gray)
        height, width = gray.shape[:2]
        scale = min(1.0, self.config.detect_max_side / max(height, width))
        small = gray
        if scale < 1.0:
            small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = cv2.resize(gray, small_size, interpolation=cv2.INTER_AREA)
        min_side = self.config.min_face_fraction * min(small.shape[:2])
        boxes = [
            FaceBox(
                round(b.x / scale),
                round(b.y / scale),
                round(b.w / scale),
                round(b.h / scale),
                b.score,
            )
            for b in detector.detect(small)
            if min(b.w, b.h) >= min_side and b.w > 0 and b.h > 0
        ]
        return sorted(boxes, key=lambda b: (b.area, b.score), reverse=True)

    def process(
        self, data: bytes, known_box: tuple[int, int, int, int] | None = None
    ) -> FaceResult:
        """Decode, find the largest face (or use ``known_box`` when the detector is "none"), crop.

        Never raises on image content: unreadable bytes and images without a face come back as a
        FaceResult with ``reject_reason`` set.
        """
        try:
            gray = decode_gray(data)
        except ImageDecodeError as error:
            return FaceResult.rejected(error.reason)
        if known_box is not None and self.config.detector == "none":
            x, y, w, h = (int(v) for v in known_box)
            faces = [FaceBox(x, y, w, h, 1.0)] if w > 0 and h > 0 else []
        else:
            faces = self.detect_faces(gray)
        if not faces:
            return FaceResult.rejected(RejectReason.NO_FACE)
        face = faces[0]
        crop = crop_square_face(gray, face, self.config.margin, self.config.size)
        return FaceResult(crop.tobytes(), (face.x, face.y, face.w, face.h), None)

    def process_batch(
        self,
        datas: Sequence[bytes],
        known_boxes: Sequence[tuple[int, int, int, int] | None] | None = None,
    ) -> list[FaceResult]:
        if known_boxes is None:
            return [self.process(data) for data in datas]
        if len(known_boxes) != len(datas):
            raise ValueError(
                f"process_batch: {len(datas)} images but {len(known_boxes)} known boxes"
            )
        return [self.process(data, box) for data, box in zip(datas, known_boxes, strict=True)]
