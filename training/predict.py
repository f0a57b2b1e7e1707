"""`facs predict`: images, folders, videos or a corpus -> faces -> AU probabilities, one row per face/frame.

``run_predict(config)`` plans work items in the driver (one per image, one per frame range of a
video, the corpus's faces as they are), finds and crops faces in parallel Ray Data tasks, and
runs the model in ``map_batches`` over an actor pool (a GPU per actor when asked). The output, a
CSV or Parquet file, has OpenFace-like columns: ``AUxx_p`` (probability) and ``AUxx_c`` (presence
at ``threshold``) for each AU of the model, the face box, and ``reject_reason`` where no face was
used. A file that cannot be read or decoded becomes a rejected row, never a crashed job.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from pipeline.corpus.manifest import CorpusError, load_manifest
from pipeline.disfa.frames import local_video, read_frame_range
from pipeline.disfa.layout import VIDEO_EXTENSIONS
from pipeline.faces import FaceConfig, FaceProcessor, crop_square_face
from pipeline.images import ImageDecodeError, decode_gray
from pipeline.names import IMAGE_EXTENSIONS
from pipeline.rejects import RejectReason
from pipeline.run_storage import check_kept, default_output, storage_root
from pipeline.storage import Location
from pipeline.vocabulary import FACE_SIZE
from training.augment import to_model_input
from training.data import faces_from_arrow
from training.init_weights import (
    InitError,
    InitWeights,
    is_mlflow_uri,
    resolve_init,
    trained_model,
)
from training.predict_config import PredictConfig

log = logging.getLogger(__name__)

#: The output file without --out outside a Ray job and without FACS_STORAGE_ROOT.
DEFAULT_OUT = "./predictions.csv"

IMAGE, VIDEO = "image", "video"
#: A work item: one image, or frames ``start`` .. ``stop`` (-1: to the end) of one video.
ITEM_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),
        pa.field("stop", pa.int64(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
    ]
)
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
SORT_KEYS = [("source", "ascending"), ("frame", "ascending"), ("face_id", "ascending")]


@dataclass
class PredictSummary:
    """What a prediction run read and wrote."""

    out: str
    model: str
    au_names: tuple[str, ...]
    rows: int
    faces: int  # rows with a scored face
    images: int
    videos: int
    video_frames: int  # frames read from the videos (with a face or not)
    corpus_faces: int
    skipped_files: int  # files in input folders that are neither images nor videos
    rejects: dict[str, int]  # reject reason -> rows
    seconds: float


# ---------------------------------------------------------------------------------------------
# Planning


def _kind(path: str) -> str | None:
    lower = path.lower()
    if lower.endswith(VIDEO_EXTENSIONS):
        return VIDEO
    if lower.endswith(IMAGE_EXTENSIONS):
        return IMAGE
    return None


def is_corpus(location: Location) -> bool:
    """A folder with a corpus manifest (a DISFA cache's manifest is not one)."""
    if not location.is_dir():
        return False
    try:
        load_manifest(location.uri)
    except (CorpusError, ValueError, TypeError, KeyError):
        return False
    return True


def video_ranges(uri: str, fps_default: float, frames_per_task: int) -> list[dict]:
    """Work items covering a video: ranges of ``frames_per_task``, the last one open-ended.

    The declared frame count only plans the split (containers often misstate it); a video that
    cannot be opened becomes one item, whose task reports the reject.
    """
    location = Location.of(uri)
    declared, fps = 0, fps_default
    try:
        with local_video(location) as path:
            capture = cv2.VideoCapture(path)
            if capture.isOpened():
                declared = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
                fps = float(capture.get(cv2.CAP_PROP_FPS)) or fps_default
            capture.release()
    except OSError:
        pass  # the task reports the read error
    fps = fps if math.isfinite(fps) and fps > 0 else fps_default
    starts = list(range(0, max(declared, 1), frames_per_task))
    return [
        {
            "source": uri,
            "kind": VIDEO,
            "start": start,
            "stop": starts[i + 1] if i + 1 < len(starts) else -1,
            "fps": fps,
        }
        for i, start in enumerate(starts)
    ]


@dataclass
class Plan:
    items: list[dict] = field(default_factory=list)
    corpora: list[str] = field(default_factory=list)
    images: int = 0
    videos: int = 0
    skipped: int = 0


def plan_inputs(inputs: list[str], frames_per_task: int, fps_default: float = 30.0) -> Plan:
    """Expand inputs into work items; a missing input raises ``FileNotFoundError`` naming it."""
    plan = Plan()

    def add_file(uri: str, explicit: bool) -> None:
        kind = _kind(uri)
        if kind is None and not explicit:
            plan.skipped += 1
            return
        if kind == VIDEO:
            plan.videos += 1
            plan.items.extend(video_ranges(uri, fps_default, frames_per_task))
        else:  # an explicit file of unknown type is tried as an image (rejected if it is not)
            plan.images += 1
            plan.items.append({"source": uri, "kind": IMAGE, "start": 0, "stop": -1, "fps": 0.0})

    for given in inputs:
        location = Location.of(given)
        if is_corpus(location):
            plan.corpora.append(location.uri)
        elif location.is_dir():
            for path in location.list_files(recursive=True):
                add_file(location.uri_of(path), explicit=False)
        elif location.exists():
            add_file(location.uri, explicit=True)
        else:
            raise FileNotFoundError(f"{given}: no such file, folder or corpus to predict on")
    return plan


# ---------------------------------------------------------------------------------------------
# The face stage (Ray tasks)


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


# ---------------------------------------------------------------------------------------------
# The model stage (an actor pool)


def au_columns(au_names: tuple[str, ...]) -> list[str]:
    return [f"{au}_p" for au in au_names] + [f"{au}_c" for au in au_names]


def predict_probabilities(
    model: torch.nn.Module, faces: np.ndarray, pixel_mean: float, device: torch.device
) -> np.ndarray:
    """``(N, 64, 64)`` uint8 faces -> ``(N, K)`` float32 sigmoid probabilities."""
    if len(faces) == 0:
        return np.zeros((0, model.num_outputs), np.float32)
    with torch.no_grad():
        batch = torch.from_numpy(np.ascontiguousarray(faces)).to(device)
        logits = model(to_model_input(batch, pixel_mean))
        return torch.sigmoid(logits.float()).cpu().numpy()


class AUPredictor:
    """One actor's model: scores the rows that carry a face, drops the pixels."""

    def __init__(self, init: InitWeights, threshold: float) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = trained_model(init).to(self.device)
        self.pixel_mean = float(init.pixel_mean)
        self.au_names = tuple(init.au_names)
        self.threshold = threshold

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        with_face = pc.equal(pc.binary_length(batch.column("face")), FACE_SIZE * FACE_SIZE)
        mask = with_face.to_numpy(zero_copy_only=False).astype(bool) if n else np.zeros(0, bool)
        faces = faces_from_arrow(batch.column("face").filter(with_face), where="predict batch")
        probs = np.zeros((n, len(self.au_names)), np.float32)
        probs[mask] = predict_probabilities(self.model, faces, self.pixel_mean, self.device)
        out = batch.drop_columns(["face"])
        missing = ~mask
        for k, au in enumerate(self.au_names):
            out = out.append_column(f"{au}_p", pa.array(probs[:, k], pa.float32(), mask=missing))
        for k, au in enumerate(self.au_names):
            present = (probs[:, k] >= self.threshold).astype(np.int8)
            out = out.append_column(f"{au}_c", pa.array(present, pa.int8(), mask=missing))
        return out


# ---------------------------------------------------------------------------------------------
# Driver


def out_uri(config: PredictConfig) -> str:
    """``--out``; by default ``./predictions.csv``, or a new file under
    ``$FACS_STORAGE_ROOT/predict/`` (see ``pipeline.run_storage``)."""
    if config.out:
        return check_kept(config.out, "--out")
    folder_or_file = default_output("predict", "--out", DEFAULT_OUT)
    if storage_root() is None:
        return folder_or_file
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Location.of(folder_or_file).join(f"predictions-{stamp}.csv").uri


def check_predict(config: PredictConfig) -> None:
    """Everything a run can be refused for before Ray starts (the CLI calls it first): inputs,
    model, output file, and the MLflow store a ``models:/`` or ``runs:/`` model comes from."""
    if not config.inputs:
        raise ValueError(
            "PredictConfig.inputs: expected at least one image, folder, video or corpus"
        )
    if not config.model:
        raise ValueError(
            "PredictConfig.model: expected a model (--model models:/..., runs:/..., checkpoint)"
        )
    out_uri(config)
    if is_mlflow_uri(config.model):
        from training.tracking import resolve_tracking_uri

        resolve_tracking_uri(config.mlflow_uri)


def load_predictor_weights(model: str, tracking_uri: str | None) -> InitWeights:
    if not model:
        raise ValueError(
            "PredictConfig.model: expected a model (models:/..., runs:/..., checkpoint)"
        )
    init = resolve_init(model, tracking_uri)
    if init.is_scratch:
        raise InitError(
            "'scratch' is not a trained model; give models:/..., runs:/... or a checkpoint"
        )
    if init.pixel_mean is None:
        raise InitError(
            f"{model}: no pixel_mean in its metadata; inference needs the training mean"
        )
    return init


def write_table(table: pa.Table, out: str) -> None:
    """Write the rows as CSV (by default) or Parquet (``.parquet``/``.pq``) to a path or s3://."""
    buffer = io.BytesIO()
    if out.lower().endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        pq.write_table(table, buffer)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, buffer)
    Location.of(out).write_bytes(buffer.getvalue())


def run_predict(config: PredictConfig) -> PredictSummary:
    """Score every face of every input with the model; write one row per face or frame."""
    start = time.perf_counter()
    check_predict(config)
    out = out_uri(config)
    init = load_predictor_weights(config.model, config.mlflow_uri)
    plan = plan_inputs(list(config.inputs), config.frames_per_task)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.WARNING)

    parts: list[ray.data.Dataset] = []
    if plan.items:
        # One block per item, so that images and frame ranges spread over the cluster.
        items = [pa.Table.from_pylist([item], schema=ITEM_SCHEMA) for item in plan.items]
        parts.append(
            ray.data.from_arrow(items).map_batches(
                find_faces,
                fn_kwargs={
                    "face": config.face,
                    "image_faces": config.image_faces,
                    "seek": config.seek,
                },
                batch_size=1,
                batch_format="pyarrow",
            )
        )
    for corpus in plan.corpora:
        from pipeline.corpus.read import read_corpus

        dataset = read_corpus(corpus, config.corpus_version, labelled_only=False)
        dataset = dataset.select_columns(["image_name", "face", "face_box"])
        parts.append(
            dataset.map_batches(
                corpus_face_rows, fn_kwargs={"corpus": corpus}, batch_format="pyarrow"
            )
        )
    if not parts:
        raise ValueError(f"no image or video found in {config.inputs} ({plan.skipped} other files)")
    faces = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    scored = faces.map_batches(
        AUPredictor,
        fn_constructor_kwargs={"init": init, "threshold": config.threshold},
        compute=ray.data.ActorPoolStrategy(size=config.workers),
        num_gpus=config.gpus_per_worker or None,
        num_cpus=config.cpus_per_worker,
        batch_size=config.batch_size,
        batch_format="pyarrow",
    )
    tables = [ray.get(ref) for ref in scored.to_arrow_refs()]
    tables = [t for t in tables if t.num_rows]
    if tables:
        table = pa.concat_tables(tables).sort_by(SORT_KEYS)
    else:
        names = [n for n in FACE_ROW_SCHEMA.names if n != "face"]
        table = pa.schema([FACE_ROW_SCHEMA.field(n) for n in names]).empty_table()
    write_table(table, out)

    reasons = Counter(r for r in table.column("reject_reason").to_pylist() if r is not None)
    success = table.column("success").to_numpy(zero_copy_only=False)
    sources = table.column("source").to_pylist()
    frames = table.column("frame").to_pylist()
    video_frames = len({(s, f) for s, f in zip(sources, frames, strict=True) if f is not None})
    prefixes = tuple(corpus + "#" for corpus in plan.corpora)
    corpus_faces = sum(1 for s in sources if prefixes and s.startswith(prefixes))
    summary = PredictSummary(
        out=Location.of(out).uri,
        model=config.model,
        au_names=tuple(init.au_names),
        rows=table.num_rows,
        faces=int(success.sum()) if len(success) else 0,
        images=plan.images,
        videos=plan.videos,
        video_frames=video_frames,
        corpus_faces=corpus_faces,
        skipped_files=plan.skipped,
        rejects=dict(sorted(reasons.items())),
        seconds=round(time.perf_counter() - start, 2),
    )
    log.info("predict: %s", json.dumps(summary.__dict__, default=str))
    return summary
