"""Arrow schemas of DISFA frames: the decoded-frame records and the cached face rows."""

from __future__ import annotations

import pyarrow as pa

from pipeline.vocabulary import DISFA_AUS


def intensity_column(au: str) -> str:
    """``"AU01"`` -> ``"AU01_intensity"``: the DISFA intensity (0-5) beside the presence bit."""
    return f"{au}_intensity"


INTENSITY_COLUMNS: tuple[str, ...] = tuple(intensity_column(au) for au in DISFA_AUS)

_IDENTITY_FIELDS = [
    pa.field("subject", pa.string(), nullable=False),  # SN001 ...; "unknown" for unparsable names
    pa.field("frame", pa.int32(), nullable=False),  # 0-based video frame index, as in the release
    pa.field("image_name", pa.string(), nullable=False),  # RightVideoSN001_00000000.jpg
    pa.field("camera", pa.string(), nullable=False),  # right / left
]
_LABEL_FIELDS = [
    *[
        pa.field(au, pa.int8()) for au in DISFA_AUS
    ],  # presence 0/1; null when the frame has no label
    *[pa.field(name, pa.int8()) for name in INTENSITY_COLUMNS],  # 0-5; null when unknown
]

#: One decoded input frame before the face stage. ``data`` holds raw row-major gray pixels
#: (``height`` x ``width``) for video frames, or the encoded image file (``height == 0``) for the
#: released frame images. Rows the reader already rejected (``reject_reason``) skip the face stage.
FRAME_RECORD_SCHEMA = pa.schema(
    [
        *_IDENTITY_FIELDS,
        pa.field("data", pa.binary(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        *_LABEL_FIELDS,
        pa.field("source", pa.string(), nullable=False),  # the video or image file it came from
        pa.field("reject_reason", pa.string()),
    ]
)

#: One cached row: the 64x64 face (b"" for rejects) with its labels. Accepted and rejected rows are
#: stored under ``status=accepted`` / ``status=rejected``.
DISFA_FRAME_SCHEMA = pa.schema(
    [
        *_IDENTITY_FIELDS,
        pa.field("face", pa.binary(), nullable=False),  # FACE_SIZE**2 uint8 gray, row-major
        pa.field("face_box", pa.list_(pa.int32())),  # [x, y, w, h] in the frame; null for rejects
        *_LABEL_FIELDS,
        pa.field("source", pa.string(), nullable=False),
        pa.field("reject_reason", pa.string()),  # a RejectReason value; null when accepted
    ]
)
