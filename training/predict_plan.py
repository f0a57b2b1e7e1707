"""`facs predict`'s planning: images, folders, videos and corpora -> work items for the face stage."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import pyarrow as pa

from pipeline.corpus.manifest import CorpusError, load_manifest
from pipeline.disfa.frames import local_video
from pipeline.disfa.layout import VIDEO_EXTENSIONS
from pipeline.names import IMAGE_EXTENSIONS
from pipeline.storage import Location

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
