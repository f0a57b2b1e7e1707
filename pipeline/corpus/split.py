"""The train/validation split: 95/5 by identity, so no person is in both, stable as the corpus grows."""

from __future__ import annotations

import hashlib

VALIDATION_PER_MILLE = 50  # 5%


def split_of(identity: str, salt: str = "facs-split-v1") -> str:
    """``"val"`` for about 5% of identities, ``"train"`` otherwise; a pure function of the identity."""
    digest = hashlib.sha256(f"{salt}:{identity}".encode()).digest()
    return "val" if int.from_bytes(digest[:4], "little") % 1000 < VALIDATION_PER_MILLE else "train"
