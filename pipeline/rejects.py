"""Why an input row did not become a corpus row: the closed set of reject reasons."""

from __future__ import annotations

from enum import Enum


class RejectReason(str, Enum):
    """Every rejected input row carries exactly one of these, stored as its string value."""

    EMPTY_FILE = "empty file"
    UNDECODABLE = "undecodable image"
    NO_FACE = "no face"
    BAD_BASE64 = "bad base64"
    TRUNCATED_ROW = "truncated row"
    NO_LABEL = "no label"
    INVALID_LABEL = "invalid label"
    OPENFACE_FAILURE = "openface failure"
    LOW_CONFIDENCE = "low confidence"
    DUPLICATE = "duplicate"
    READ_ERROR = "read error"

    def __str__(self) -> str:
        return self.value
