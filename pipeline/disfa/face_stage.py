"""The DISFA face stage: decoded frame records -> 64x64 gray faces (or a counted reject) with labels."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

from pipeline.disfa.schema import DISFA_FRAME_SCHEMA
from pipeline.faces import FaceConfig, FaceProcessor, FaceResult, crop_square_face
from pipeline.rejects import RejectReason
from pipeline.status_write import STATUS_COLUMN

_PASSED_THROUGH = [f.name for f in DISFA_FRAME_SCHEMA if f.name not in ("face", "face_box")]


@ray.remote(num_cpus=0)
class FrameLedger:
    """Counts the rows that enter the face stage, to check rows read = accepted + rejected."""

    def __init__(self) -> None:
        self.rows_in = 0

    def add(self, rows: int) -> None:
        self.rows_in += rows

    def rows(self) -> int:
        return self.rows_in


class DisfaFaceStage:
    """Per-actor face worker: detect the largest face, crop square with margin, pad, resize."""

    def __init__(self, face: FaceConfig, ledger=None) -> None:
        self.faces = FaceProcessor(face)
        self.ledger = ledger

    def face_of_pixels(self, data: bytes, height: int, width: int) -> FaceResult:
        """The face in raw gray pixels, without the encode/decode round trip of ``process``."""
        gray = np.frombuffer(data, dtype=np.uint8).reshape(height, width)
        boxes = self.faces.detect_faces(gray)
        if not boxes:
            return FaceResult.rejected(RejectReason.NO_FACE)
        box = boxes[0]
        config = self.faces.config
        crop = crop_square_face(gray, box, config.margin, config.size)
        return FaceResult(crop.tobytes(), (box.x, box.y, box.w, box.h), None)

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        if self.ledger is not None:
            ray.get(self.ledger.add.remote(n))  # counted before the rows can be written
        reasons = batch["reject_reason"].to_pylist()
        datas = batch["data"].to_pylist()
        heights = batch["height"].to_pylist()
        widths = batch["width"].to_pylist()
        faces: list[bytes] = [b""] * n
        boxes: list[list[int] | None] = [None] * n
        for i in range(n):
            if reasons[i] is not None:
                continue
            if heights[i] > 0:
                result = self.face_of_pixels(datas[i], heights[i], widths[i])
            else:
                result = self.faces.process(datas[i])
            if result.accepted:
                faces[i] = result.face
                boxes[i] = list(result.box) if result.box else None
            else:
                reasons[i] = result.reject_reason
        columns = {name: batch[name] for name in _PASSED_THROUGH if name != "reject_reason"}
        columns["face"] = pa.array(faces, pa.binary())
        columns["face_box"] = pa.array(boxes, pa.list_(pa.int32()))
        columns["reject_reason"] = pa.array(reasons, pa.string())
        table = pa.table(columns).select(DISFA_FRAME_SCHEMA.names).cast(DISFA_FRAME_SCHEMA)
        status = ["accepted" if r is None else "rejected" for r in reasons]
        return table.append_column(STATUS_COLUMN, pa.array(status, pa.string()))
