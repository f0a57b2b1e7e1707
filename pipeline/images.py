"""Image bytes -> 2-D uint8 grayscale arrays (any format, depth or channel count OpenCV reads), and back to JPEG."""

from __future__ import annotations

import re

import cv2
import numpy as np

from pipeline.rejects import RejectReason

_JPEG_MAGIC = b"\xff\xd8\xff"
#: In JPEG entropy-coded data a 0xFF byte is followed by 0x00 (stuffing) or a restart marker
#: (0xD0-0xD7); any other byte after 0xFF starts the next marker segment.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
_EOI, _SOS = 0xD9, 0xDA


class ImageDecodeError(ValueError):
    """The bytes are not an image; ``reason`` is the reject reason to record for the row."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


def jpeg_is_truncated(data: bytes) -> bool:
    """True when a JPEG's marker structure runs off the end of ``data`` before its end-of-image marker.

    Depending on the OpenCV/libjpeg build, a truncated JPEG either fails to decode or decodes
    "successfully" with the missing rows filled with grey; the latter would put half a face into the
    corpus, so truncation is detected here, independently of the decoder. The walk follows segment
    lengths (so EXIF thumbnails, which carry their own end marker, are skipped) and stops at the
    first end-of-image marker (so bytes appended after it, as some cameras do, are ignored).
    A structure too broken to walk returns False and is left to the decoder to judge.
    """
    pos, end = 2, len(data)
    while pos + 2 <= end:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == _EOI:
            return False
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if pos + 4 > end:
            return True
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == _SOS:
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                return True
            pos = found.start()
    return True


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale any depth to 0..255: integers by their dtype's maximum (65535 -> 255), floats from 0..1."""
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.integer):
        scale = 255.0 / np.iinfo(image.dtype).max
        return np.clip(np.rint(image.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    return np.clip(np.rint(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def _to_gray(image: np.ndarray) -> np.ndarray:
    """Any channel layout OpenCV returns -> 2-D gray; alpha is composited on black (transparent -> 0).

    Black matches the zero padding added around crops, so transparent areas look like "no image".
    """
    image = _to_uint8(image)
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0]
    if channels == 2:  # gray + alpha
        gray, alpha = image[:, :, 0], image[:, :, 1]
    elif channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    else:  # BGRA (4 channels; extra channels beyond alpha are ignored)
        gray, alpha = cv2.cvtColor(image[:, :, :4], cv2.COLOR_BGRA2GRAY), image[:, :, 3]
    return cv2.multiply(gray, np.ascontiguousarray(alpha), scale=1.0 / 255.0)


def decode_gray(data: bytes) -> np.ndarray:
    """Decode image bytes to a 2-D uint8 grayscale array.

    JPEGs (the bulk of any web corpus) are decoded straight to gray, which is about 30% faster
    than decoding colour and converting (libjpeg skips the colour transform), and honours the
    EXIF orientation. Every other format is read unchanged so that 16-bit depths are scaled, not
    truncated, and alpha is composited on black; EXIF orientation is not applied to those.

    Raises ImageDecodeError with EMPTY_FILE for zero bytes and UNDECODABLE for anything OpenCV
    cannot read or a truncated JPEG.
    """
    if not data:
        raise ImageDecodeError(RejectReason.EMPTY_FILE, "0 bytes")
    is_jpeg = data[:3] == _JPEG_MAGIC
    if is_jpeg and jpeg_is_truncated(data):
        raise ImageDecodeError(
            RejectReason.UNDECODABLE, f"JPEG truncated: {len(data)} bytes, no end-of-image marker"
        )
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE if is_jpeg else cv2.IMREAD_UNCHANGED)
    except cv2.error as error:  # e.g. dimensions over OpenCV's pixel limit
        raise ImageDecodeError(RejectReason.UNDECODABLE, str(error).strip()) from None
    if image is None or image.size == 0:
        raise ImageDecodeError(
            RejectReason.UNDECODABLE,
            f"OpenCV cannot decode {len(data)} bytes starting {data[:8]!r}",
        )
    return np.ascontiguousarray(_to_gray(image))


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Encode a 2-D gray or HxWx3 BGR uint8 array as JPEG bytes."""
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(
            f"cannot encode an array of shape {image.shape} dtype {image.dtype} as JPEG"
        )
    return encoded.tobytes()
