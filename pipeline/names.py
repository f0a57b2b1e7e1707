"""How images are named and matched across sources (MS-Celeb names, DISFA frames, label join keys)."""

from __future__ import annotations

import posixpath

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")

#: The released MS-Celeb label CSV codes gender as 0/1. Checked against the biographies'
#: pronoun counts for the 1,920 people in test_label.csv: code 1 -> "he" (1,020), code 0 -> "she" (900).
#: (MIDs may contain "_": the person is the part before the *last* underscore of an image name.)
RELEASE_GENDER_CODES: dict[int, str] = {0: "female", 1: "male"}


def image_key(name: str) -> str:
    """The join key of an image: its base name without a trailing image extension.

    OpenFace names its per-image CSV after the image stem, while the released label CSVs and
    our corpus keep the extension; both meet on this key.
    """
    base = posixpath.basename(name.replace("\\", "/"))
    lower = base.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext):
            return base[: -len(ext)]
    return base


def msceleb_image_name(mid: str, rank: int | str, face_id: int | str) -> str:
    """``<MID>_<ImageSearchRank>-FaceId-<FaceID>.jpg``, as in the paper's released labels."""
    return f"{mid}_{rank}-FaceId-{face_id}.jpg"


def identity_of_msceleb_name(name: str) -> str:
    """``m.059w4s_84-FaceId-0.jpg`` -> ``m.059w4s`` (the person's Freebase MID)."""
    return posixpath.basename(name).rsplit("_", 1)[0]


def frame_name(video_stem: str, frame_index: int) -> str:
    """DISFA-release style frame image name: ``RightVideoSN005_00003268.jpg`` (0-based index)."""
    return f"{video_stem}_{frame_index:08d}.jpg"
