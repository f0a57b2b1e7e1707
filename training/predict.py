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
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import ray

from pipeline.run_storage import check_kept, default_output, storage_root
from pipeline.storage import Location
from training.init_weights import is_mlflow_uri
from training.predict_config import PredictConfig
from training.predict_faces import FACE_ROW_SCHEMA, corpus_face_rows, find_faces
from training.predict_model import AUPredictor, load_predictor_weights
from training.predict_plan import ITEM_SCHEMA, plan_inputs

log = logging.getLogger(__name__)

#: The output file without --out outside a Ray job and without FACS_STORAGE_ROOT.
DEFAULT_OUT = "./predictions.csv"

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
