"""The synthetic DISFA world: subjects' session videos and per-frame AU intensities in DISFA's layout.

Layout under ``out`` (as in the DISFA release)::

    Videos_RightCamera/RightVideoSN001_comp.avi     MJPG in AVI, ``frames`` frames
    Videos_LeftCamera/LeftVideoSN001_comp.avi       (``cameras="both"``) a second viewpoint
    ActionUnit_Labels/SN001/SN001_au1.txt ...       ``frame,intensity`` lines, frame 1-based,
                                                    intensity 0..5, one file per DISFA AU
    OpenFace/RightVideoSN001_comp.csv               the noisy labeler's OpenFace 2.0
                                                    FeatureExtraction output for each video
    truth.csv                                       video, frame (1-based), session frame,
                                                    right-camera face box, the 12 intensities

Each subject is one recording session of ``frames * stride`` frames at 20 fps (DISFA's sessions
are 4,845 frames: the default ``frames=108, stride=45`` spans 4,860), and its video holds every
``stride``-th frame of it. AU intensities follow temporally smooth tracks (au_sampling) at DISFA's
positive rates, so frames ``stride`` apart (2.25 s at the default) are nearly independent samples
of the session, and an AU's positives spread over many subjects and episodes instead of the one
or two onsets that a few consecutive seconds hold. Frames show the continuous track; labels are
its rounding. ``stride=1`` renders consecutive frames.

The OpenFace CSVs come from the same :class:`NoisyLabeler` (same error model and ``noise``) that
labels the celeb world, in its lab-video mode, so the labeler can be scored on exactly the frames
a fine-tuned model is tested on. A share :data:`LABELER_FAILURE_RATE` of frames are tracking
failures (``success`` 0), as OpenFace has.
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
from pipeline.synth.config import DISFA_CAMERA_CHOICES, SynthDisfaConfig
from pipeline.synth.identity import Identity, sample_identity
from pipeline.synth.noisy_labeler import NoisyLabeler, NoisyLabels, openface_sequence_csv
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

#: DISFA's session length (frames at 20 fps) and the default stride between rendered frames.
DISFA_SESSION_FRAMES = 4845
DEFAULT_STRIDE = 45
DEFAULT_FRAMES = math.ceil(DISFA_SESSION_FRAMES / DEFAULT_STRIDE)  # 108
#: Share of frames the labeler fails to track (``success`` 0 in its CSV; our choice, OpenFace's
#: tracker rarely loses a frontal lab face).
LABELER_FAILURE_RATE = 0.01

TRUTH_NAME = "truth.csv"
OPENFACE_DIR = "OpenFace"
TRUTH_COLUMNS: tuple[str, ...] = (
    "video", "frame", "session_frame", "face_x", "face_y", "face_w", "face_h", *DISFA_AUS,
)  # fmt: skip
CAMERAS: tuple[tuple[str, str], ...] = (
    ("Right", "Videos_RightCamera"),
    ("Left", "Videos_LeftCamera"),
)

_SUBJECT, _FRAME_NOISE, _LABELS, _FAILURES = 10, 11, 12, 13


@dataclass(frozen=True)
class DisfaWorldSummary:
    out: str
    subjects: tuple[str, ...]
    frames_per_video: int
    stride: int
    videos: int
    label_files: int
    truth_csv: str
    openface_dir: str | None


def pick_subjects(count: int) -> tuple[str, ...]:
    """``count`` DISFA subject ids taken round-robin over the folds (so every fold is used), sorted."""
    if not 1 <= count <= len(DISFA_SUBJECTS):
        raise ValueError(f"subjects must be 1..{len(DISFA_SUBJECTS)}, got {count}")
    order = [fold[i] for i in range(len(DISFA_FOLDS[0])) for fold in DISFA_FOLDS]
    return tuple(sorted(order[:count]))


def label_file_name(subject: str, au: str) -> str:
    """``SN001``, ``AU01`` -> ``ActionUnit_Labels/SN001/SN001_au1.txt``."""
    return f"ActionUnit_Labels/{subject}/{subject}_au{au_number(au)}.txt"


def video_stem(subject: str, camera: str = "Right") -> str:
    """``SN001`` -> ``RightVideoSN001_comp`` (the release's file stem)."""
    return f"{camera}Video{subject}_comp"


@dataclass(frozen=True)
class SubjectSession:
    """One subject's session, sampled at the video's frames: who, and what the face does when."""

    subject: str
    identity: Identity
    #: Continuous 0..5 intensities (video frames x RENDER_AUS); ``levels`` is their rounding.
    track: np.ndarray
    levels: np.ndarray
    #: Head pose per video frame: roll, yaw, shift x, shift y, scale, gaze x, gaze y.
    motion: np.ndarray
    session_frames: np.ndarray  # 0-based session frame of each video frame
    wall_seed: int
    light_angle: float
    light: float
    exposure: float


def _head_motion(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Smooth head pose tracks (frames x 7): roll, yaw, shift x, shift y, scale, gaze x, gaze y."""
    tracks = smooth_noise(rng, frames, 7, 12.0)
    spread = np.array([2.0, 0.15, 0.01, 0.008, 0.012, 0.35, 0.15])
    return tracks * spread


def subject_session(seed: int, subject: str, frames: int, stride: int) -> SubjectSession:
    """The session of ``subject`` (``frames * stride`` frames long) at its ``frames`` video frames.

    Pure and cheap (no rendering), so label statistics of a world are known before rendering it.
    """
    number = int(subject[2:])
    rng = np.random.default_rng([seed, _SUBJECT, number])
    gender = "female" if rng.random() < 0.5 else "male"
    regions = list(REGION_SHARES)
    shares = np.array([REGION_SHARES[r] for r in regions])
    region = regions[int(rng.choice(len(regions), p=shares / shares.sum()))]
    identity = sample_identity(rng, gender, region)
    scale = IntensityScale.for_rates("disfa")
    length = frames * stride
    latents = sample_video_latents(rng, person_offsets(rng, 1)[0], length)
    motion = _head_motion(rng, length)
    taken = np.arange(0, length, stride)
    track = scale.continuous(latents[taken])
    return SubjectSession(
        subject=subject,
        identity=identity,
        track=track,
        levels=np.floor(track + 0.5).astype(int),
        motion=motion[taken],
        session_frames=taken,
        wall_seed=int(rng.integers(0, 2**31 - 1)),
        light_angle=float(rng.uniform(0, 2 * math.pi)),
        light=float(rng.uniform(0.05, 0.2)),
        exposure=float(rng.uniform(0.92, 1.05)),
    )


def presence_counts(
    seed: int, subjects: tuple[str, ...], frames: int, stride: int, threshold: int = 2
) -> dict[str, dict[str, int]]:
    """Frames with each DISFA AU present (intensity >= ``threshold``), per subject: no rendering."""
    counts = {}
    for subject in subjects:
        levels = subject_session(seed, subject, frames, stride).levels
        counts[subject] = {
            au: int((levels[:, AU_INDEX[au]] >= threshold).sum()) for au in DISFA_AUS
        }
    return counts


def _open_writer(path: str, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV could not open an MJPG AVI writer")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 85)
    return writer


def _scene(seed: int, session: SubjectSession, t: int, camera: int) -> Scene:
    """The camera's view of video frame ``t``: the session's pose, light, and a second viewpoint."""
    roll, yaw, sx, sy, sc, gx, gy = session.motion[t]
    number = int(session.subject[2:])
    noise_seed = int(
        np.random.default_rng([seed, _FRAME_NOISE, number, t, camera]).integers(2**31 - 1)
    )
    return Scene(
        roll=float(roll) + (1.5 if camera else 0.0),
        yaw=float(yaw) + (0.3 if camera else -0.05),
        scale=1.0 + float(sc) - (0.04 if camera else 0.0),
        shift_x=float(sx) + (0.04 if camera else 0.0),
        shift_y=float(sy),
        light_angle=session.light_angle + (0.4 if camera else 0.0),
        light=session.light,
        exposure=session.exposure,
        gaze_x=float(gx),
        gaze_y=float(gy),
        noise=2.0,
        clutter=0,
        background_seed=session.wall_seed,
        noise_seed=noise_seed,
    )


def _write_subject(
    out: str,
    seed: int,
    subject: str,
    frames: int,
    stride: int,
    fps: float,
    width: int,
    height: int,
    cameras: int,
    openface: bool,
    noise: float,
) -> int:
    root = Location.of(out)
    session = subject_session(seed, subject, frames, stride)
    views = CAMERAS[:cameras]
    truth_lines = []
    with tempfile.TemporaryDirectory(prefix=f"synth-{subject}-") as tmp:
        local = [
            root.join(folder, f"{video_stem(subject, camera)}.avi").path
            if not is_s3(root.uri)
            else os.path.join(tmp, f"{video_stem(subject, camera)}.avi")
            for camera, folder in views
        ]
        for path in local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        writers = [_open_writer(path, fps, (width, height)) for path in local]
        try:
            for t in range(frames):
                for camera, writer in enumerate(writers):
                    scene = _scene(seed, session, t, camera)
                    rendered = render_face(
                        session.identity, session.track[t], scene, (width, height)
                    )
                    writer.write(rendered.image)
                    if camera == 0:
                        row = [video_stem(subject), str(t + 1), str(int(session.session_frames[t]))]
                        row += [str(v) for v in rendered.face_box]
                        row += [str(session.levels[t, AU_INDEX[au]]) for au in DISFA_AUS]
                        truth_lines.append(csv_line(row))
        finally:
            for writer in writers:
                writer.release()
        if is_s3(root.uri):
            for (camera, folder), path in zip(views, local, strict=True):
                with open(path, "rb") as handle:
                    root.join(folder, f"{video_stem(subject, camera)}.avi").write_bytes(
                        handle.read()
                    )
    for au in DISFA_AUS:
        column = session.levels[:, AU_INDEX[au]]
        text = "".join(f"{t + 1},{int(v)}\n" for t, v in enumerate(column))
        root.join(label_file_name(subject, au)).write_bytes(text.encode("ascii"))
    write_part(root, f"{subject}.truth.csv", truth_lines)
    if openface:
        for index, (camera, _) in enumerate(views):
            labels, failed = labeler_reading(seed, session, noise, index)
            csv_text = openface_sequence_csv(labels, fps, failed=failed)
            root.join(OPENFACE_DIR, f"{video_stem(subject, camera)}.csv").write_bytes(
                csv_text.encode("ascii")
            )
    return frames


def labeler_reading(
    seed: int, session: SubjectSession, noise: float, camera: int = 0
) -> tuple[NoisyLabels, np.ndarray]:
    """What the noisy labeler reads off one camera's video of ``session`` (lab video), and which
    frames it fails to track: exactly what the OpenFace CSV of that video holds."""
    number = int(session.subject[2:])
    labels = NoisyLabeler(noise=noise, seed=seed).label(
        np.random.default_rng([seed, _LABELS, number, camera]),
        session.subject,
        session.track,
        in_the_wild=False,
    )
    draws = np.random.default_rng([seed, _FAILURES, number, camera]).random(len(session.track))
    return labels, draws < LABELER_FAILURE_RATE


def generate_disfa(
    out: str,
    *,
    subjects: int = 27,
    frames: int = DEFAULT_FRAMES,
    stride: int = DEFAULT_STRIDE,
    seed: int,
    fps: float = 20.0,
    frame_size: tuple[int, int] = (360, 288),
    cameras: str = "right",
    openface: bool = True,
    noise: float = 1.0,
    use_ray: bool = False,
    workers: int = 0,
) -> DisfaWorldSummary:
    """Write a DISFA world under ``out`` (module docstring for the layout); same seed, same bytes."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if cameras not in DISFA_CAMERA_CHOICES:
        raise ValueError(f"cameras: expected one of {DISFA_CAMERA_CHOICES}, got {cameras!r}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    width, height = frame_size
    if min(width, height) < 240:
        raise ValueError(f"frame_size {frame_size} too small; faces must be >= 128 px (use >= 240)")
    chosen = pick_subjects(subjects)
    views = 2 if cameras == "both" else 1
    root = Location.of(out)
    clear_parts(root)
    tasks = [
        (root.uri, seed, subject, frames, stride, fps, width, height, views, openface, noise)
        for subject in chosen
    ]
    run_tasks(_write_subject, tasks, use_ray=use_ray, workers=workers)
    join_parts(root, ".truth.csv", root.join(TRUTH_NAME), ",".join(TRUTH_COLUMNS))
    clear_parts(root)
    return DisfaWorldSummary(
        out=root.uri,
        subjects=chosen,
        frames_per_video=frames,
        stride=stride,
        videos=views * len(chosen),
        label_files=len(DISFA_AUS) * len(chosen),
        truth_csv=root.join(TRUTH_NAME).uri,
        openface_dir=root.join(OPENFACE_DIR).uri if openface else None,
    )


def generate_disfa_from_config(config: SynthDisfaConfig) -> DisfaWorldSummary:
    """:func:`generate_disfa` with the options of a :class:`SynthDisfaConfig`."""
    if not config.out:
        raise ValueError("SynthDisfaConfig.out is empty; give an output folder")
    return generate_disfa(
        config.out,
        subjects=config.subjects,
        frames=config.frames,
        stride=config.stride,
        seed=config.seed,
        fps=config.fps,
        frame_size=(config.frame_width, config.frame_height),
        cameras=config.cameras,
        openface=config.openface,
        noise=config.noise,
        use_ray=config.use_ray,
        workers=config.workers,
    )
