"""The face stage: decoding any image to gray, finding the largest face, the square 64x64 crop."""

from __future__ import annotations

import pickle
import struct
from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.faces import (
    FaceBox,
    FaceConfig,
    FaceProcessor,
    crop_square_face,
    make_detector,
)
from pipeline.images import ImageDecodeError, decode_gray, encode_jpeg, jpeg_is_truncated
from pipeline.rejects import RejectReason

SMALL_CROPS = ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg")


@pytest.fixture(scope="module")
def faces_dir() -> Path:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
    if not path.is_dir():
        pytest.skip(f"real face photos not available: {path} is absent")
    return path


@pytest.fixture(scope="module")
def processor() -> FaceProcessor:
    return FaceProcessor(FaceConfig())


def _png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def _face_array(result) -> np.ndarray:
    return np.frombuffer(result.face, dtype=np.uint8).reshape(64, 64)


# --- real photos -------------------------------------------------------------------------------


def test_single_face_is_found_and_stored_as_64x64_uint8(faces_dir, processor):
    data = (faces_dir / "photos" / "single_face.jpg").read_bytes()
    height, width = decode_gray(data).shape

    result = processor.process(data)

    assert result.reject_reason is None
    assert len(result.face) == 64 * 64
    assert _face_array(result).std() > 10, "a face crop has contrast, not a flat fill"
    # The man's face is in the middle of the photo, in its upper half.
    x, y, w, h = result.box
    assert 0.3 * width < x + w / 2 < 0.7 * width
    assert 0.1 * height < y + h / 2 < 0.6 * height
    assert w > 0.2 * min(width, height)


def test_multi_face_photo_keeps_the_largest_detected_face(faces_dir, processor):
    data = (faces_dir / "photos" / "multi_face.jpg").read_bytes()
    detected = processor.detect_faces(decode_gray(data))

    result = processor.process(data)

    assert len(detected) >= 3, f"five people in the photo, detected {detected}"
    x, y, w, h = result.box
    assert all(w * h >= box.w * box.h for box in detected)
    assert (x, y, w, h) in {(b.x, b.y, b.w, b.h) for b in detected}


@pytest.mark.parametrize("name", SMALL_CROPS)
def test_small_face_crops_are_found(faces_dir, processor, name):
    data = (faces_dir / "photos" / name).read_bytes()
    height, width = decode_gray(data).shape

    result = processor.process(data)

    assert result.reject_reason is None, name
    # These are portrait crops: the face takes up most of the picture.
    assert result.box[2] > 0.4 * min(width, height)


def test_landscape_without_a_face_is_rejected_as_no_face(faces_dir, processor):
    result = processor.process((faces_dir / "photos" / "free-mountain-vector-01.jpg").read_bytes())

    assert result.reject_reason == RejectReason.NO_FACE.value == "no face"
    assert result.face == b""
    assert result.box is None


def test_celebrity_photos_detection_rate_is_at_least_90_percent(faces_dir, processor):
    paths = sorted((faces_dir / "celebrities").glob("*.jpg"))
    assert len(paths) >= 50

    results = processor.process_batch([path.read_bytes() for path in paths])

    missed = [path.name for path, result in zip(paths, results, strict=True) if not result.accepted]
    assert len(missed) <= 0.1 * len(paths), f"no face found in {missed}"
    assert all(len(result.face) == 64 * 64 for result in results if result.accepted)


def test_tight_face_crop_is_still_detected(faces_dir, processor):
    """Aligned crops (MS-Celeb style) leave no background around the face."""
    gray = decode_gray((faces_dir / "photos" / "0-f15-hao-ph.jpg").read_bytes())
    face = processor.detect_faces(gray)[0]
    tight = crop_square_face(gray, face, margin=0.0, size=face.w)

    assert processor.process(encode_jpeg(tight)).accepted


# --- decoding ----------------------------------------------------------------------------------


def test_grayscale_png_decodes_unchanged():
    gray = np.arange(48 * 32, dtype=np.uint32).reshape(48, 32).astype(np.uint8)

    assert np.array_equal(decode_gray(_png(gray)), gray)


def test_colour_bmp_decodes_to_its_luminance():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    ok, bmp = cv2.imencode(".bmp", bgr)

    decoded = decode_gray(bmp.tobytes())

    luminance = 0.114 * bgr[..., 0] + 0.587 * bgr[..., 1] + 0.299 * bgr[..., 2]
    assert decoded.shape == (20, 30) and decoded.dtype == np.uint8
    assert np.abs(decoded - luminance).max() <= 1


def test_rgba_png_is_composited_on_black():
    bgra = np.zeros((3, 10, 4), dtype=np.uint8)
    bgra[..., :3] = 200  # a light grey everywhere
    bgra[0, :, 3] = 255  # row 0 opaque
    bgra[1, :, 3] = 0  # row 1 transparent
    bgra[2, :, 3] = 128  # row 2 half transparent

    decoded = decode_gray(_png(bgra))

    assert decoded.ndim == 2
    assert (decoded[0] == 200).all()
    assert (decoded[1] == 0).all()
    assert (np.abs(decoded[2].astype(int) - 100) <= 1).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_is_scaled_not_truncated(channels):
    values = np.array([0, 1000, 13107, 32768, 50000, 65535], dtype=np.uint16)
    image = np.tile(values, (4, 1))
    if channels == 3:
        image = np.dstack([image] * 3)

    decoded = decode_gray(_png(image))

    expected = values * 255.0 / 65535.0
    assert decoded[0, 0] == 0 and decoded[0, -1] == 255
    assert np.abs(decoded[0].astype(float) - expected).max() <= 0.51


def test_zero_bytes_is_an_empty_file(processor):
    with pytest.raises(ImageDecodeError) as raised:
        decode_gray(b"")
    assert raised.value.reason is RejectReason.EMPTY_FILE
    assert processor.process(b"").reject_reason == "empty file"


@pytest.mark.parametrize(
    "data",
    [
        b"not an image at all" * 10,
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 50,
        b"\xff\xd8\xff\xe0" + b"\x00" * 50,
    ],
    ids=["text", "png-header-only", "jpeg-header-only"],
)
def test_garbage_bytes_are_undecodable_without_raising(processor, data):
    with pytest.raises(ImageDecodeError) as raised:
        decode_gray(data)
    assert raised.value.reason is RejectReason.UNDECODABLE
    assert processor.process(data).reject_reason == "undecodable image"


def _photo_jpeg() -> bytes:
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, size=(240, 320), dtype=np.uint8), (9, 9), 3)
    return encode_jpeg(image)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_jpeg_is_undecodable_even_if_opencv_would_fill_it(processor, keep):
    """Some libjpeg builds decode a cut JPEG with grey rows; that would store half a face."""
    data = _photo_jpeg()
    truncated = data[: int(len(data) * keep)]

    assert jpeg_is_truncated(truncated)
    assert processor.process(truncated).reject_reason == "undecodable image"


def test_jpeg_with_bytes_after_its_end_marker_still_decodes():
    data = _photo_jpeg()

    assert decode_gray(data + b"camera trailer \xff\xda\x00\x10").shape == (240, 320)


def test_truncation_check_skips_the_exif_thumbnail_end_marker():
    """An EXIF thumbnail is a whole JPEG, end marker included, inside the APP1 segment."""
    main = _photo_jpeg()
    thumbnail = encode_jpeg(np.full((8, 8), 90, dtype=np.uint8))
    app1 = b"Exif\x00\x00" + thumbnail
    with_thumbnail = main[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + main[2:]

    assert decode_gray(with_thumbnail).shape == (240, 320)
    assert jpeg_is_truncated(with_thumbnail[: len(with_thumbnail) // 2])


# --- cropping ----------------------------------------------------------------------------------


def test_box_leaving_the_image_is_zero_padded_on_that_side():
    gray = np.full((100, 100), 200, dtype=np.uint8)
    box = FaceBox(x=80, y=30, w=40, h=40, score=1.0)  # columns 100..119 are outside

    crop = crop_square_face(gray, box, margin=0.0, size=64)

    assert crop.shape == (64, 64) and crop.dtype == np.uint8
    assert (crop[:, :30] == 200).all()
    assert (crop[:, 34:] == 0).all(), "the right half lies outside the image: black"


def test_margin_grows_the_box_on_each_side():
    gray = np.tile(np.arange(200, dtype=np.uint8), (200, 1))  # pixel value = column
    box = FaceBox(x=100, y=50, w=40, h=40, score=1.0)

    crop = crop_square_face(gray, box, margin=0.25, size=60)  # 40 + 2 * 10 = 60: no resampling

    assert crop[0, 0] == 90 and crop[0, -1] == 149


def test_non_square_box_is_padded_to_a_centred_square():
    gray = np.full((100, 100), 255, dtype=np.uint8)
    box = FaceBox(x=40, y=10, w=20, h=40, score=1.0)

    crop = crop_square_face(gray, box, margin=0.0, size=40)

    assert (crop[:, :10] == 0).all() and (crop[:, 30:] == 0).all()
    assert (crop[:, 10:30] == 255).all()


def test_small_box_is_upscaled_to_size():
    gray = np.zeros((50, 50), dtype=np.uint8)
    gray[20:30, 20:30] = 255

    crop = crop_square_face(gray, FaceBox(20, 20, 10, 10, 1.0), margin=0.0, size=64)

    assert crop.shape == (64, 64) and crop.min() > 200


# --- detectors and configuration ---------------------------------------------------------------


def test_dnn_detector_with_missing_model_names_the_path(tmp_path):
    missing = tmp_path / "res10_300x300_ssd_iter_140000.caffemodel"

    with pytest.raises(FileNotFoundError, match="res10_300x300_ssd_iter_140000.caffemodel"):
        make_detector(FaceConfig(detector="dnn", model_path=str(missing)))
    with pytest.raises(FileNotFoundError, match="model-path"):
        make_detector(FaceConfig(detector="dnn"))


def test_dnn_ssd_model_without_its_prototxt_names_the_prototxt(tmp_path):
    model = tmp_path / "face.caffemodel"
    model.write_bytes(b"weights")
    missing = tmp_path / "deploy.prototxt"

    with pytest.raises(FileNotFoundError, match="deploy.prototxt"):
        make_detector(FaceConfig(detector="dnn", model_path=str(model), prototxt_path=str(missing)))


def test_unknown_detector_name_is_refused():
    with pytest.raises(ValueError, match="detector"):
        FaceConfig(detector="mtcnn")  # type: ignore[arg-type]


def test_every_config_field_has_help_for_the_cli():
    assert all(f.metadata.get("help") for f in fields(FaceConfig))


def test_detector_none_uses_the_whole_image_or_the_known_box():
    gray = np.tile(np.arange(128, dtype=np.uint8), (128, 1))
    data = _png(gray)
    processor = FaceProcessor(FaceConfig(detector="none", margin=0.0))

    whole = processor.process(data)
    boxed = processor.process(data, known_box=(64, 0, 64, 64))

    assert whole.box == (0, 0, 128, 128)
    assert boxed.box == (64, 0, 64, 64)
    assert _face_array(boxed)[0, 0] == 64 and _face_array(boxed)[0, -1] == 127
    assert processor.process(data, known_box=(0, 0, 0, 10)).reject_reason == "no face"


def test_process_batch_keeps_order_and_never_raises():
    processor = FaceProcessor(FaceConfig(detector="none"))
    datas = [b"", _png(np.zeros((10, 10), dtype=np.uint8)), b"junk"]

    reasons = [result.reject_reason for result in processor.process_batch(datas)]

    assert reasons == ["empty file", None, "undecodable image"]


def test_face_processor_pickles_before_and_after_use(faces_dir):
    data = (faces_dir / "photos" / "single_face.jpg").read_bytes()
    fresh = FaceProcessor(FaceConfig())
    shipped = pickle.loads(pickle.dumps(fresh))

    first = fresh.process(data)
    after_use = pickle.loads(pickle.dumps(fresh))

    assert shipped.process(data) == first
    assert after_use.process(data) == first
    assert after_use.config == fresh.config
