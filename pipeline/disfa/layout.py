"""Where DISFA's inputs live: the release's video and label files, or a folder of extracted frames."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

import pyarrow.fs as pafs

from pipeline.names import IMAGE_EXTENSIONS
from pipeline.storage import Location
from pipeline.vocabulary import au_number

#: The release's folder of each camera's videos, and the prefix of its file and frame names.
VIDEO_FOLDERS: dict[str, str] = {"right": "Videos_RightCamera", "left": "Videos_LeftCamera"}
VIDEO_PREFIXES: dict[str, str] = {"right": "RightVideo", "left": "LeftVideo"}
LABEL_FOLDER = "ActionUnit_Labels"
VIDEO_EXTENSIONS: tuple[str, ...] = (".avi", ".mp4", ".mkv", ".mov")
#: ``RightVideoSN005_00003268.jpg`` -> camera prefix, subject, 0-based frame index.
FRAME_IMAGE_PATTERN = re.compile(
    r"^(?P<prefix>RightVideo|LeftVideo)(?P<subject>SN\d+)_(?P<frame>\d+)\.[A-Za-z]+$"
)
_FOLD_CSV_PATTERN = re.compile(r"^fold\d+_test\.csv$")


class DisfaLayoutError(ValueError):
    """The DISFA inputs are missing or malformed; the message names the path (and line)."""


@dataclass(frozen=True)
class FileStamp:
    """A file's URI with the size and modification time that identify this version of it."""

    uri: str
    size: int
    mtime_ns: int

    def key(self) -> list:
        return [self.uri, self.size, self.mtime_ns]


@dataclass(frozen=True)
class DisfaVideo:
    """One subject's video from one camera: ``Videos_RightCamera/RightVideoSN001_comp.avi``."""

    subject: str
    camera: str
    file: FileStamp

    @property
    def uri(self) -> str:
        return self.file.uri

    @property
    def frame_stem(self) -> str:
        """The stem of its frames' names in the release: ``RightVideoSN001``."""
        return f"{VIDEO_PREFIXES[self.camera]}{self.subject}"


def _stamps(location: Location, recursive: bool) -> list[FileStamp]:
    selector = pafs.FileSelector(location.path, recursive=recursive, allow_not_found=True)
    stamps = [
        FileStamp(location.uri_of(info.path), int(info.size or 0), int(info.mtime_ns or 0))
        for info in location.fs.get_file_info(selector)
        if info.type == pafs.FileType.File
    ]
    return sorted(stamps, key=lambda s: s.uri)


def file_stamp(location: Location) -> FileStamp:
    info = location.fs.get_file_info(location.path)
    if info.type != pafs.FileType.File:
        raise DisfaLayoutError(f"{location.uri}: file not found")
    return FileStamp(location.uri, int(info.size or 0), int(info.mtime_ns or 0))


def video_pattern(camera: str) -> re.Pattern[str]:
    """``RightVideoSN001_comp.avi`` (the ``_comp`` suffix optional) -> subject ``SN001``."""
    extensions = "|".join(re.escape(e) for e in VIDEO_EXTENSIONS)
    return re.compile(
        rf"^{VIDEO_PREFIXES[camera]}(?P<subject>SN\d+)(?:_comp)?(?:{extensions})$", re.IGNORECASE
    )


def find_videos(root: str, camera: str, subjects: list[str] | None = None) -> list[DisfaVideo]:
    """The camera's videos under ``root``, one per subject, sorted by subject."""
    folder = Location.of(root).join(VIDEO_FOLDERS[camera])
    if not folder.is_dir():
        raise DisfaLayoutError(
            f"{folder.uri}: folder not found; expected the DISFA layout "
            f"{VIDEO_FOLDERS[camera]}/{VIDEO_PREFIXES[camera]}SNxxx_comp.avi under {root}"
        )
    pattern = video_pattern(camera)
    videos: dict[str, DisfaVideo] = {}
    for stamp in _stamps(folder, recursive=False):
        match = pattern.match(posixpath.basename(stamp.uri))
        if match is None:
            continue
        subject = match["subject"].upper()
        if subject in videos:
            raise DisfaLayoutError(
                f"{folder.uri}: two videos for {subject}: {videos[subject].uri} and {stamp.uri}"
            )
        videos[subject] = DisfaVideo(subject, camera, stamp)
    if subjects:
        missing = sorted(set(subjects) - set(videos))
        if missing:
            raise DisfaLayoutError(f"{folder.uri}: no {camera}-camera video for {missing}")
        videos = {s: v for s, v in videos.items() if s in subjects}
    if not videos:
        raise DisfaLayoutError(
            f"{folder.uri}: no video named like {VIDEO_PREFIXES[camera]}SNxxx_comp.avi"
        )
    return [videos[s] for s in sorted(videos)]


def label_file(root: str, subject: str, au: str) -> Location:
    """``ActionUnit_Labels/SN001/SN001_au1.txt`` for subject ``SN001`` and ``AU01``."""
    return Location.of(root).join(LABEL_FOLDER, subject, f"{subject}_au{au_number(au)}.txt")


def find_frame_images(root: str, camera: str) -> tuple[list[FileStamp], int]:
    """The camera's frame images below ``root`` (named like the release's), and how many image
    files were passed over because their name is another camera's or not a DISFA frame name."""
    location = Location.of(root)
    if not location.is_dir():
        raise DisfaLayoutError(f"{location.uri}: frame folder not found")
    images, skipped = [], 0
    for stamp in _stamps(location, recursive=True):
        name = posixpath.basename(stamp.uri)
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        match = FRAME_IMAGE_PATTERN.match(name)
        if match is None or match["prefix"] != VIDEO_PREFIXES[camera]:
            skipped += 1
            continue
        images.append(stamp)
    if not images:
        raise DisfaLayoutError(
            f"{location.uri}: no frame image named like {VIDEO_PREFIXES[camera]}SN005_00003268.jpg "
            f"({skipped} other image files)"
        )
    return images, skipped


def find_fold_csvs(root: str) -> list[FileStamp]:
    """``fold1_test.csv``, ``fold2_test.csv``, ... directly under ``root``."""
    location = Location.of(root)
    found = [
        s
        for s in _stamps(location, recursive=False)
        if _FOLD_CSV_PATTERN.match(posixpath.basename(s.uri))
    ]
    if not found:
        raise DisfaLayoutError(
            f"{location.uri}: no fold<k>_test.csv label files; give them with fold_csvs"
        )
    return found


def label_stamps(root: str, subjects: list[str]) -> list[FileStamp]:
    """The files under ``ActionUnit_Labels/<subject>/`` of the given subjects (one listing)."""
    folder = Location.of(root).join(LABEL_FOLDER)
    wanted = set(subjects)
    prefix = folder.uri.rstrip("/") + "/"
    return [
        stamp
        for stamp in _stamps(folder, recursive=True)
        if stamp.uri[len(prefix) :].split("/", 1)[0] in wanted
    ]
