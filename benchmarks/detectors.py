"""Face detectors compared on real photos: recall, false faces and images/s, all offline.

Images (``../shared/data/faces``): the 52 celebrity web photos (every one shows its person), the
five photos with faces, and frames of ``single_face.mp4`` (a face throughout); negatives: the
mountain drawing and frames of ``no_face.mp4``. Hard variants of the celebrity photos, made here
from them: tilted 30 degrees, the lower left of the face covered, the face small (56 px) in a
640 x 480 picture. Each detector runs the product's own path
(``FaceProcessor.detect_faces``: downscale to ``detect_max_side``, detect, keep faces of at least
``min_face_fraction``), at its defaults. Recall = images where a face was found / images with a
face (for the variants: a face centred on the known one); false-face rate = negatives where one
was found. Speed: images/s over every image, the
detectors alternated in each of ``--repeats`` rounds (median), as a ratio to the frontal Haar
cascade, the plain baseline run beside them. Run it alone: it times single-threaded OpenCV/dlib.

    python benchmarks/detectors.py [--repeats 3] [--frames 12] [--detectors haar,cascade,dlib-hog]
    python benchmarks/detectors.py --detectors haar,dlib-cnn --repeats 1   # the slow one apart

Writes ``benchmarks/results/detectors.json`` (with the command line).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.faces import FaceBox, FaceConfig, FaceProcessor  # noqa: E402
from pipeline.images import decode_gray  # noqa: E402

FACES = ROOT.parent / "shared" / "data" / "faces"
RESULTS = ROOT / "benchmarks" / "results" / "detectors.json"
DETECTORS = ("haar", "cascade", "dlib-hog", "dlib-cnn")


def video_frames(path: Path, count: int) -> list[np.ndarray]:
    """``count`` grayscale frames spread evenly over the video."""
    capture = cv2.VideoCapture(str(path))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for index in np.linspace(0, max(total - 1, 0), count).astype(int):
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = capture.read()
        if ok:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    capture.release()
    return frames


def tilted(gray: np.ndarray, box: FaceBox, angle: float = 30.0) -> tuple[np.ndarray, FaceBox]:
    """``gray`` turned in-plane by ``angle`` degrees about its centre (a tilted head), and where
    its face went."""
    height, width = gray.shape[:2]
    rotation = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, 1.0)
    cx, cy = rotation @ np.array([box.x + box.w / 2, box.y + box.h / 2, 1.0])
    moved = FaceBox(round(cx - box.w / 2), round(cy - box.h / 2), box.w, box.h, box.score)
    return cv2.warpAffine(gray, rotation, (width, height), flags=cv2.INTER_LINEAR), moved


def covered(gray: np.ndarray, box: FaceBox) -> tuple[np.ndarray, FaceBox]:
    """``gray`` with the lower half of the face's left side blacked out (a hand on the cheek)."""
    out = gray.copy()
    out[box.y + box.h // 2 : box.y + box.h, box.x : box.x + box.w // 2] = 0
    return out, box


def small(gray: np.ndarray, box: FaceBox, face_side: int = 56) -> tuple[np.ndarray, FaceBox]:
    """``gray`` shrunk so its face is ``face_side`` px wide, its face centred on a 640 x 480 grey
    picture (a face far away)."""
    scale = face_side / max(box.w, 1)
    resized = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((480, 640), 128, dtype=np.uint8)
    cx, cy = (box.x + box.w / 2) * scale, (box.y + box.h / 2) * scale
    dx, dy = round(320 - cx), round(240 - cy)  # where the resized image's origin lands
    y0, x0 = max(dy, 0), max(dx, 0)
    y1 = min(dy + resized.shape[0], 480)
    x1 = min(dx + resized.shape[1], 640)
    canvas[y0:y1, x0:x1] = resized[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    side = round(box.w * scale)
    return canvas, FaceBox(320 - side // 2, 240 - side // 2, side, side, box.score)


Sample = tuple[np.ndarray, FaceBox | None]


def image_sets(frames: int) -> dict[str, list[Sample]]:
    """Each image with the face it shows (None: not checked where; or no face, for negatives).

    The real images, and hard variants of the celebrity photos: tilted 30 degrees, partly
    covered, small in a larger picture. A variant's face is where the original's largest Haar
    face went; a detector hits it when a face it reports is centred inside that box.
    """
    photos = FACES / "photos"
    with_faces = [p for p in sorted(photos.glob("*.jpg")) if "mountain" not in p.name]
    celebrities = [
        decode_gray(p.read_bytes()) for p in sorted((FACES / "celebrities").glob("*.jpg"))
    ]
    reference = FaceProcessor(FaceConfig(detector="haar"))
    boxed = [(g, reference.detect_faces(g)) for g in celebrities]
    boxed = [(g, faces[0]) for g, faces in boxed if faces]
    no_face = [decode_gray((photos / "free-mountain-vector-01.jpg").read_bytes())]
    no_face += video_frames(FACES / "video" / "no_face.mp4", frames)
    return {
        "celebrities": [(g, None) for g in celebrities],
        "photos": [(decode_gray(p.read_bytes()), None) for p in with_faces],
        "video": [(g, None) for g in video_frames(FACES / "video" / "single_face.mp4", frames)],
        "tilted": [tilted(g, b) for g, b in boxed],
        "covered": [covered(g, b) for g, b in boxed],
        "small": [small(g, b) for g, b in boxed],
        "negatives": [(g, None) for g in no_face],
    }


def hit(faces: list[FaceBox], expected: FaceBox | None) -> bool:
    if expected is None:
        return bool(faces)
    return any(
        expected.x <= f.x + f.w / 2 <= expected.x + expected.w
        and expected.y <= f.y + f.h / 2 <= expected.y + expected.h
        for f in faces
    )


def found(processor: FaceProcessor, samples: list[Sample]) -> tuple[list[bool], float]:
    start = time.perf_counter()
    faces = [processor.detect_faces(image) for image, _ in samples]
    spent = time.perf_counter() - start
    return [hit(f, expected) for f, (_, expected) in zip(faces, samples, strict=True)], spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=12, help="frames taken from each video")
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    sets = image_sets(args.frames)
    names = args.detectors.split(",")
    processors = {name: FaceProcessor(FaceConfig(detector=name)) for name in names}
    hits: dict[str, dict[str, list[bool]]] = {}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            total = 0.0
            for set_name, images in sets.items():
                result, spent = found(processors[name], images)
                hits.setdefault(name, {})[set_name] = result
                total += spent
            seconds[name].append(total)
            print(f"[detectors] round {repeat + 1}: {name} {total:.1f} s", flush=True)
    images = sum(len(v) for v in sets.values())
    base = images / statistics.median(seconds["haar"]) if "haar" in seconds else None
    rows = {}
    for name in names:
        per_set = hits[name]
        positives = [h for s, v in per_set.items() if s != "negatives" for h in v]
        speed = images / statistics.median(seconds[name])
        rows[name] = {
            "recall": sum(positives) / len(positives),
            "recall_per_set": {s: sum(v) / len(v) for s, v in per_set.items() if s != "negatives"},
            "missed_per_set": {s: len(v) - sum(v) for s, v in per_set.items() if s != "negatives"},
            "false_face_rate": statistics.mean(per_set["negatives"]),
            "images_per_s": speed,
            "images_per_s_runs": [images / s for s in seconds[name]],
            "speed_vs_haar": speed / base if base else None,
            "repeats": args.repeats,
            "command": shlex.join([sys.executable, *sys.argv]),
        }
        print(
            f"[detectors] {name:9s} recall {rows[name]['recall']:.3f} "
            f"({', '.join(f'{s} {r:.2f}' for s, r in rows[name]['recall_per_set'].items())}), "
            f"false faces {rows[name]['false_face_rate']:.2f}, {speed:.1f} images/s "
            f"({rows[name]['speed_vs_haar']:.2f}x haar)"
        )
    result = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform()},
        "opencv_threads": 1,
        "images": {s: len(v) for s, v in sets.items()},
        "repeats": args.repeats,
        "detectors": rows,
    }
    if not args.no_write:
        # Detectors not measured this time keep their earlier rows (each row says how it ran):
        # dlib's CNN is slow enough on 2 cores to be run on its own, with fewer repeats.
        if RESULTS.is_file():
            earlier = json.loads(RESULTS.read_text()).get("detectors", {})
            result["detectors"] = {**{k: v for k, v in earlier.items() if k not in rows}, **rows}
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"[detectors] wrote {RESULTS}")


if __name__ == "__main__":
    main()
