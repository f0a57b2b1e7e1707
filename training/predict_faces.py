"""`facs predict`'s face stage (Ray tasks): work items or corpus rows -> face rows with their crops."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa

from pipeline.disfa.frames import local_video, read_frame_range
from pipeline.faces import FaceConfig, FaceProcessor, crop_square_face
from pipeline.images import ImageDecodeError, decode_gray
from pipeline.rejects import RejectReason
from pipeline.storage import Location
from training.predict_plan import VIDEO

#: One face (or one rejected image/frame) before the model: the crop rides in ``face``.
FACE_ROW_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),  # the file (or corpus#image) it came from
        pa.field("frame", pa.int64()),  # 1-based video frame (OpenFace's numbering); null: image
        pa.field("timestamp", pa.float64()),  # seconds into the video; null for images
        pa.field("face_id", pa.int32()),  # 0 = the largest face; null when rejected
        pa.field("success", pa.int8(), nullable=False),  # 1 when a face was found and scored
        pa.field("face_x", pa.int32()),
        pa.field("face_y", pa.int32()),
        pa.field("face_w", pa.int32()),
        pa.field("face_h", pa.int32()),
        pa.field("reject_reason", pa.string()),  # a RejectReason value; null on success
        pa.field("face", pa.binary(), nullable=False),  # FACE_SIZE**2 uint8; b"" when rejected
    ]
)


def _row(source: str, **values) -> dict:
    row = {name: None for name in FACE_ROW_SCHEMA.names}
    row.update(source=source, success=0, face=b"")
    row.update(values)
    return row


def _reject(source: str, reason: RejectReason, **values) -> dict:
    return _row(source, reject_reason=reason.value, **values)


def _face_row(source: str, gray: np.ndarray, box, face_id: int, config: FaceConfig, **values):
    crop = crop_square_face(gray, box, config.margin, config.size)
    return _row(
        source,
        face_id=face_id,
        success=1,
        face_x=box.x,
        face_y=box.y,
        face_w=box.w,
        face_h=box.h,
        face=crop.tobytes(),
        **values,
    )


def _image_rows(source: str, faces: FaceProcessor, image_faces: str) -> list[dict]:
    try:
        data = Location.of(source).read_bytes()
    except OSError:
        return [_reject(source, RejectReason.READ_ERROR)]
    try:
        gray = decode_gray(data)
    except ImageDecodeError as error:
        return [_reject(source, error.reason)]
    boxes = faces.detect_faces(gray)
    if not boxes:
        return [_reject(source, RejectReason.NO_FACE)]
    if image_faces == "largest":
        boxes = boxes[:1]
    return [_face_row(source, gray, box, i, faces.config) for i, box in enumerate(boxes)]


def _video_rows(item: dict, faces: FaceProcessor, seek: str) -> list[dict]:
    source, start, fps = item["source"], int(item["start"]), float(item["fps"])
    stop = None if int(item["stop"]) < 0 else int(item["stop"])
    location = Location.of(source)
    rows: list[dict] = []
    try:
        if location.fs.get_file_info(location.path).size == 0:
            return [_reject(source, RejectReason.EMPTY_FILE)]
        with local_video(location) as path:
            for index, gray in read_frame_range(path, start, stop, seek=seek, uri=source):
                where = {"frame": index + 1, "timestamp": index / fps if fps > 0 else None}
                boxes = faces.detect_faces(gray)
                if boxes:
                    rows.append(_face_row(source, gray, boxes[0], 0, faces.config, **where))
                else:
                    rows.append(_reject(source, RejectReason.NO_FACE, **where))
    except (ValueError, OSError, cv2.error):  # DisfaLayoutError (cannot open) is a ValueError
        if start == 0 and not rows:
            return [_reject(source, RejectReason.UNDECODABLE)]
        rows.append(_reject(source, RejectReason.READ_ERROR))
        return rows
    if start == 0 and not rows:  # opened, but not one frame decodes
        return [_reject(source, RejectReason.UNDECODABLE)]
    return rows


def find_faces(batch: pa.Table, *, face: FaceConfig, image_faces: str, seek: str) -> pa.Table:
    """Work items -> face rows (``FACE_ROW_SCHEMA``); never raises on file contents."""
    faces = FaceProcessor(face)
    rows: list[dict] = []
    for item in batch.to_pylist():
        if item["kind"] == VIDEO:
            rows.extend(_video_rows(item, faces, seek))
        else:
            rows.extend(_image_rows(item["source"], faces, image_faces))
    return pa.Table.from_pylist(rows, schema=FACE_ROW_SCHEMA)


def corpus_face_rows(batch: pa.Table, *, corpus: str) -> pa.Table:
    """Corpus rows -> face rows: the stored crops are scored as they are."""
    n = batch.num_rows
    boxes = batch.column("face_box").to_pylist()
    coords = [[(b[k] if b else None) for b in boxes] for k in range(4)]
    names = batch.column("image_name").to_pylist()
    return pa.table(
        {
            "source": [f"{corpus}#{name}" for name in names],
            "frame": pa.nulls(n, pa.int64()),
            "timestamp": pa.nulls(n, pa.float64()),
            "face_id": pa.array(np.zeros(n, np.int32)),
            "success": pa.array(np.ones(n, np.int8)),
            "face_x": pa.array(coords[0], pa.int32()),
            "face_y": pa.array(coords[1], pa.int32()),
            "face_w": pa.array(coords[2], pa.int32()),
            "face_h": pa.array(coords[3], pa.int32()),
            "reject_reason": pa.nulls(n, pa.string()),
            "face": batch.column("face"),
        },
        schema=FACE_ROW_SCHEMA,
    )
