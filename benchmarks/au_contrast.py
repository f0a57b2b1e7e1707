"""How much does each DISFA AU change the model's 64x64 input at DISFA's presence boundary?

For ``--subjects`` subjects of the synthetic DISFA world: each subject's face in its first video
frame's scene, rendered at the world's frame size with every AU at 0 but one, at intensity 0, 1
(a visible trace, counted absent) and 2 (present), JPEG-coded (quality 85, as the world's MJPG
video) and cropped by the corpus's face stage on the generator's box (+20% margin, zero-padded
square, grey, 64x64). Per AU: the mean absolute difference in grey levels between the crops at 1
and 2 (and 0 and 2), the pixels that move by more than 8 levels, and the AU's positive rate in the
world. Written to find why AU09 is the one AU the demo's networks never learn
(``results/au_contrast.json``).

    python benchmarks/au_contrast.py          # about a minute
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.faces import FaceConfig, FaceProcessor  # noqa: E402
from pipeline.synth.au_sampling import DISFA_RATES  # noqa: E402
from pipeline.synth.disfa_world import _scene, pick_subjects, subject_session  # noqa: E402
from pipeline.synth.render import AU_INDEX, RENDER_AUS, Rendered, render_face  # noqa: E402
from pipeline.vocabulary import DISFA_AUS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "au_contrast.json"
FRAME_SIZE = (360, 288)  # generate_disfa's default
MOVED = 8  # grey levels


def crop(faces: FaceProcessor, rendered: Rendered) -> np.ndarray:
    """The model's 64x64 grey input for a rendered frame, after JPEG coding."""
    _, jpeg = cv2.imencode(".jpg", rendered.image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    face = faces.process(jpeg.tobytes(), known_box=tuple(rendered.face_box))
    return np.frombuffer(face.face, np.uint8).reshape(64, 64).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    faces = FaceProcessor(FaceConfig(detector="none", margin=0.2))
    changes: dict[str, dict[str, list[float]]] = {
        au: {"trace_to_present": [], "none_to_present": [], "pixels_moved": []} for au in DISFA_AUS
    }
    for subject in pick_subjects(args.subjects):
        session = subject_session(args.seed, subject, 1, 1)
        scene = _scene(args.seed, session, 0, 0)
        for au in DISFA_AUS:
            crops = []
            for level in (0, 1, 2):
                intensities = np.zeros(len(RENDER_AUS))
                intensities[AU_INDEX[au]] = level
                crops.append(
                    crop(faces, render_face(session.identity, intensities, scene, FRAME_SIZE))
                )
            none, trace, present = crops
            changes[au]["trace_to_present"].append(float(np.abs(present - trace).mean()))
            changes[au]["none_to_present"].append(float(np.abs(present - none).mean()))
            changes[au]["pixels_moved"].append(float((np.abs(present - trace) > MOVED).sum()))
    per_au = {
        au: {
            "mean_abs_change_trace_to_present": round(float(np.mean(c["trace_to_present"])), 3),
            "mean_abs_change_none_to_present": round(float(np.mean(c["none_to_present"])), 3),
            f"pixels_moved_over_{MOVED}_trace_to_present": round(
                float(np.mean(c["pixels_moved"])), 1
            ),
            "positive_rate": DISFA_RATES[au],
        }
        for au, c in changes.items()
    }
    results = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "subjects": args.subjects,
        "frame_size": FRAME_SIZE,
        "per_au": per_au,
    }
    print(f"{'AU':6}{'1->2':>8}{'0->2':>8}{'moved':>8}{'rate':>8}")
    for au, row in per_au.items():
        values = list(row.values())
        print(f"{au:6}{values[0]:8.3f}{values[1]:8.3f}{values[2]:8.1f}{values[3]:8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
