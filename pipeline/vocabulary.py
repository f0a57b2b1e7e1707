"""The project's shared vocabulary: AU lists, regions, genders, face size. Defined once, imported everywhere."""

from __future__ import annotations

#: The 17 presence AUs that OpenFace 2.0 outputs (``AUxx_c``); the pre-training targets.
OPENFACE_AUS: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU28",
)  # fmt: skip

#: The 12 AUs annotated in DISFA; the fine-tuning targets.
DISFA_AUS: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU09", "AU12", "AU15", "AU17", "AU20", "AU25", "AU26",
)  # fmt: skip

#: The 8 AUs on which the paper compares with OpenFace 2.0 and LP-Net.
PAPER_COMPARISON_AUS: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU06", "AU09", "AU12", "AU25", "AU26",
)  # fmt: skip

#: The paper's nationality regions (Table II), plus ``unknown`` when the biography does not say.
REGIONS: tuple[str, ...] = (
    "N. America/Europe",
    "S. Asia",
    "S. Africa",
    "Mid. East/C. Asia/N. Africa",
    "Central/South America",
    "N.E. Asia",
    "S.E. Asia",
    "unknown",
)

GENDERS: tuple[str, ...] = ("female", "male", "unknown")

#: Side of the square grayscale face crop stored in the corpus (bytes per image = FACE_SIZE**2).
FACE_SIZE: int = 64


def au_number(au: str) -> int:
    """``"AU04"`` -> 4."""
    return int(au[2:])
