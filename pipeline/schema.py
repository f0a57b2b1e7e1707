"""Arrow schemas shared by the readers and the corpus: the label table and the corpus row."""

from __future__ import annotations

import pyarrow as pa

from pipeline.vocabulary import OPENFACE_AUS

#: The ``label_source`` of a corpus row stored without AU labels (no label source was given).
UNLABELLED = "none"

#: A label table maps an image name to its 17 AU presence bits. Every label reader returns one.
#: One row per labelled image; ``label_reject`` is set (and the AU columns null) when the label row
#: exists but cannot be used (OpenFace ``success == 0``, low confidence, NaN/non-binary values).
LABEL_TABLE_SCHEMA = pa.schema(
    [
        pa.field(
            "image_name", pa.string(), nullable=False
        ),  # join key: basename, e.g. m.0abc_3-FaceId-0.jpg
        *[pa.field(au, pa.int8()) for au in OPENFACE_AUS],  # 0/1, null when rejected
        pa.field("gender", pa.string()),  # "female" / "male" / null when the source has none
        pa.field("confidence", pa.float32()),  # detector confidence when the source has one
        pa.field("label_source", pa.string(), nullable=False),  # "release_csv", "openface_img", ...
        pa.field("label_reject", pa.string()),  # a RejectReason value, or null
        pa.field("label_ref", pa.string(), nullable=False),  # "<file>:<line>" for error messages
    ]
)

#: One row of the corpus (accepted) or of its rejects table (``reject_reason`` set, ``face`` empty).
CORPUS_SCHEMA = pa.schema(
    [
        pa.field(
            "content_hash", pa.string(), nullable=False
        ),  # sha256 (hex, 32 chars) of the input bytes
        pa.field("image_name", pa.string(), nullable=False),
        pa.field("identity", pa.string(), nullable=False),
        pa.field("gender", pa.string(), nullable=False),  # female / male / unknown
        pa.field("region", pa.string(), nullable=False),  # one of vocabulary.REGIONS
        pa.field("split", pa.string(), nullable=False),  # train / val, by identity
        pa.field(
            "face", pa.binary(), nullable=False
        ),  # 64*64 uint8 grayscale, row-major; b"" for rejects
        pa.field(
            "face_box", pa.list_(pa.int32())
        ),  # [x, y, w, h] in the source image; null for rejects
        *[pa.field(au, pa.int8()) for au in OPENFACE_AUS],
        pa.field("label_source", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # input file (and line) the row came from
        pa.field("reject_reason", pa.string()),  # null for accepted rows
    ]
)
