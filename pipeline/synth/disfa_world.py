"""The synthetic DISFA world: subjects' stereo videos and per-frame AU intensities in DISFA's layout.

Layout under ``out`` (as in the DISFA release)::

    Videos_RightCamera/RightVideoSN001_comp.avi     MJPG in AVI, ``frames`` frames at ``fps``
    Videos_LeftCamera/LeftVideoSN001_comp.avi       the same moments from a second viewpoint
    ActionUnit_Labels/SN001/SN001_au1.txt ...       ``frame,intensity`` lines, frame 1-based,
                                                    intensity 0..5, one file per DISFA AU
    truth.csv                                       video, frame (1-based), right-camera face box,
                                                    intensity of the 12 DISFA AUs
    OpenFace/RightVideoSN001_comp.csv               (optional) noisy OpenFace FeatureExtraction

Intensities follow temporally smooth tracks (au_sampling) at DISFA's positive rates; frames show
the continuous track, labels are its rounding.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.storage import Location, is_s3
from pipeline.synth.au_sampling import (
    IntensityScale,
    person_offsets,
    sample_video_latents,
    smooth_noise,
)
from pipeline.synth.config import SynthDisfaConfig
from pipeline.synth.identity import sample_identity
from pipeline.synth.noisy_labeler import NoisyLabeler, openface_sequence_csv
from pipeline.synth.parallel import run_tasks
from pipeline.synth.people import REGION_SHARES
from pipeline.synth.render import AU_INDEX, Scene, render_face
from pipeline.synth.shards import clear_parts, csv_line, join_parts, write_part
from pipeline.vocabulary import DISFA_AUS, au_number

#: DISFA's subject-independent test folds (the paper's release fold1/2/3_test.csv).
DISFA_FOLDS: tuple[tuple[str, ...], ...] = (
    ("SN002", "SN005", "SN006", "SN007", "SN012", "SN013", "SN016", "SN018", "SN026"),
    ("SN001", "SN003", "SN004", "SN009", "SN010", "SN011", "SN025", "SN029", "SN030"),
    ("SN008", "SN017", "SN021", "SN023", "SN024", "SN027", "SN028", "SN031", "SN032"),
)
DISFA_SUBJECTS: tuple[str, ...] = tuple(sorted(s for fold in DISFA_FOLDS for s in fold))

TRUTH_NAME = "truth.csv"
TRUTH_COLUMNS: tuple[str, ...] = (
    "video", "frame", "face_x", "face_y", "face_w", "face_h", *DISFA_AUS,
)  # fmt: skip

_SUBJECT, _FRAME_NOISE, _LABELS = 10, 11, 12


@dataclass(frozen=True)
class DisfaWorldSummary:
    out: str
    subjects: tuple[str, ...]
    frames_per_video: int
    videos: int
    label_files: int
    truth_csv: str


def pick_subjects(count: int) -> tuple[str, ...]:
    """``count`` DISFA subject ids taken round-robin over the folds (so every fold is used), sorted."""
    if not 1 <= count <= len(DISFA_SUBJECTS):
        raise ValueError(f"subjects must be 1..{len(DISFA_SUBJECTS)}, got {count}")
    order = [fold[i] for i in range(len(DISFA_FOLDS[0])) for fold in DISFA_FOLDS]
    return tuple(sorted(order[:count]))


def label_file_name(subject: str, au: str) -> str:
    """``SN001``, ``AU01`` -> ``ActionUnit_Labels/SN001/SN001_au1.txt``."""
    return f"ActionUnit_Labels/{subject}/{subject}_au{au_number(au)}.txt"


def _head_motion(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Smooth head pose tracks (frames x 7): roll, yaw, shift x, shift y, scale, gaze x, gaze y."""
    tracks = smooth_noise(rng, frames, 7, 12.0)
    spread = np.array([2.0, 0.15, 0.01, 0.008, 0.012, 0.35, 0.15])
    return tracks * spread


def _open_writer(path: str, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV could not open an MJPG AVI writer")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 85)
    return writer


def _write_subject(
    out: str,
    seed: int,
    subject: str,
    frames: int,
    fps: float,
    width: int,
    height: int,
    openface: bool,
    noise: float,
) -> int:
    root = Location.of(out)
    number = int(subject[2:])
    rng = np.random.default_rng([seed, _SUBJECT, number])
    gender = "female" if rng.random() < 0.5 else "male"
    regions = list(REGION_SHARES)
    shares = np.array([REGION_SHARES[r] for r in regions])
    region = regions[int(rng.choice(len(regions), p=shares / shares.sum()))]
    identity = sample_identity(rng, gender, region)
    scale = IntensityScale.for_rates("disfa")
    track = scale.continuous(sample_video_latents(rng, person_offsets(rng, 1)[0], frames))
    levels = np.floor(track + 0.5).astype(int)
    motion = _head_motion(rng, frames)
    wall = int(rng.integers(0, 2**31 - 1))
    light_angle = float(rng.uniform(0, 2 * math.pi))
    light = float(rng.uniform(0.05, 0.2))
    exposure = float(rng.uniform(0.92, 1.05))

    def scene(t: int, camera: int) -> Scene:
        roll, yaw, sx, sy, sc, gx, gy = motion[t]
        noise_seed = int(
            np.random.default_rng([seed, _FRAME_NOISE, number, t, camera]).integers(2**31 - 1)
        )
        return Scene(
            roll=float(roll) + (1.5 if camera else 0.0),
            yaw=float(yaw) + (0.3 if camera else -0.05),
            scale=1.0 + float(sc) - (0.04 if camera else 0.0),
            shift_x=float(sx) + (0.04 if camera else 0.0),
            shift_y=float(sy),
            light_angle=light_angle + (0.4 if camera else 0.0),
            light=light,
            exposure=exposure,
            gaze_x=float(gx),
            gaze_y=float(gy),
            noise=2.0,
            clutter=0,
            background_seed=wall,
            noise_seed=noise_seed,
        )

    stems = (f"RightVideo{subject}_comp", f"LeftVideo{subject}_comp")
    folders = ("Videos_RightCamera", "Videos_LeftCamera")
    truth_lines = []
    with tempfile.TemporaryDirectory(prefix=f"synth-{subject}-") as tmp:
        local = [
            root.join(folder, f"{stem}.avi").path
            if not is_s3(root.uri)
            else os.path.join(tmp, f"{stem}.avi")
            for folder, stem in zip(folders, stems, strict=True)
        ]
        for path in local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        writers = [_open_writer(path, fps, (width, height)) for path in local]
        try:
            for t in range(frames):
                for camera, writer in enumerate(writers):
                    rendered = render_face(identity, track[t], scene(t, camera), (width, height))
                    writer.write(rendered.image)
                    if camera == 0:
                        row = [stems[0], str(t + 1), *(str(v) for v in rendered.face_box)]
                        row += [str(levels[t, AU_INDEX[au]]) for au in DISFA_AUS]
                        truth_lines.append(csv_line(row))
        finally:
            for writer in writers:
                writer.release()
        if is_s3(root.uri):
            for folder, stem, path in zip(folders, stems, local, strict=True):
                with open(path, "rb") as handle:
                    root.join(folder, f"{stem}.avi").write_bytes(handle.read())
    for au in DISFA_AUS:
        column = levels[:, AU_INDEX[au]]
        text = "".join(f"{t + 1},{int(v)}\n" for t, v in enumerate(column))
        root.join(label_file_name(subject, au)).write_bytes(text.encode("ascii"))
    write_part(root, f"{subject}.truth.csv", truth_lines)
    if openface:
        labels = NoisyLabeler(noise=noise, seed=seed).label(
            np.random.default_rng([seed, _LABELS, number]), subject, track, in_the_wild=False
        )
        csv_text = openface_sequence_csv(labels, fps)
        root.join("OpenFace", f"{stems[0]}.csv").write_bytes(csv_text.encode("ascii"))
    return frames


def generate_disfa(
    out: str,
    *,
    subjects: int = 27,
    frames: int = 300,
    seed: int,
    fps: float = 20.0,
    frame_size: tuple[int, int] = (360, 288),
    openface: bool = False,
    noise: float = 1.0,
    use_ray: bool = False,
    workers: int = 0,
) -> DisfaWorldSummary:
    """Write a DISFA world under ``out`` (module docstring for the layout); same seed, same bytes."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    width, height = frame_size
    if min(width, height) < 240:
        raise ValueError(f"frame_size {frame_size} too small; faces must be >= 128 px (use >= 240)")
    chosen = pick_subjects(subjects)
    root = Location.of(out)
    clear_parts(root)
    tasks = [
        (root.uri, seed, subject, frames, fps, width, height, openface, noise) for subject in chosen
    ]
    run_tasks(_write_subject, tasks, use_ray=use_ray, workers=workers)
    join_parts(root, ".truth.csv", root.join(TRUTH_NAME), ",".join(TRUTH_COLUMNS))
    clear_parts(root)
    return DisfaWorldSummary(
        out=root.uri,
        subjects=chosen,
        frames_per_video=frames,
        videos=2 * len(chosen),
        label_files=len(DISFA_AUS) * len(chosen),
        truth_csv=root.join(TRUTH_NAME).uri,
    )


def generate_disfa_from_config(config: SynthDisfaConfig) -> DisfaWorldSummary:
    """:func:`generate_disfa` with the options of a :class:`SynthDisfaConfig`."""
    if not config.out:
        raise ValueError("SynthDisfaConfig.out is empty; give an output folder")
    return generate_disfa(
        config.out,
        subjects=config.subjects,
        frames=config.frames,
        seed=config.seed,
        fps=config.fps,
        frame_size=(config.frame_width, config.frame_height),
        openface=config.openface,
        noise=config.noise,
        use_ray=config.use_ray,
        workers=config.workers,
    )
