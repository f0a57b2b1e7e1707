"""Split this process's file descriptor 2: Ray's C++ log lines to a callback, the rest through.

Ray's core worker in the driver writes its glog lines (``[2026-12-06 03:55:50,420 E 10284 10284]
core_worker.cc:2465: ...``) straight to file descriptor 2, below Python, so no logging handler
sees them. :func:`split_native_stderr` points descriptor 2 at a pipe; a thread reads it, hands
each such line to ``on_ray_line`` and copies every other byte, unchanged and at once, to where
descriptor 2 pointed before (Python's own stderr, tracebacks included, go that way too). At exit
the descriptor is put back and the pipe drained, so nothing written before then is lost.
"""

from __future__ import annotations

import atexit
import os
import re
import threading
from collections.abc import Callable

#: A glog line of Ray's C++ code: ``[date time,ms LEVEL pid tid] file.cc:line: message``.
RAY_NATIVE_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [IWE] \d+ \d+\] \S+:\d+: ")
#: An unfinished line starting with "[" waits for more bytes until this long (a glog prefix with
#: a long file name is about 80 bytes); then it is passed through.
_DECIDE_AFTER = 256

_active: dict[str, object] = {}


def _line_end(data: bytes) -> int:
    """Index of the first line end (a progress bar's ``\\r`` counts), or -1."""
    ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
    return min(ends) if ends else -1


def _could_be_ray_line(start: bytes) -> bool:
    """Whether an unfinished line may still turn out to be a glog line (so it waits for more)."""
    return start.startswith(b"[") and len(start) < _DECIDE_AFTER


class _Splitter:
    def __init__(self, read_fd: int, terminal_fd: int, on_ray_line: Callable[[str], None]) -> None:
        self.read_fd, self.terminal_fd, self.on_ray_line = read_fd, terminal_fd, on_ray_line
        self.pending = b""
        self.passing_line = False  # inside a line already decided to pass through

    def feed(self, data: bytes) -> None:
        out: list[bytes] = []
        while data:
            if self.passing_line:
                end = _line_end(data)
                piece, data = (data, b"") if end < 0 else (data[: end + 1], data[end + 1 :])
                out.append(piece)
                self.passing_line = end < 0
                continue
            self.pending += data
            data = b""
            end = _line_end(self.pending)
            line = self.pending if end < 0 else self.pending[: end + 1]
            if RAY_NATIVE_LINE.match(line):
                if end < 0:
                    break  # a Ray line, not finished yet
                self.on_ray_line(line.rstrip(b"\r\n").decode("utf-8", "replace"))
            elif end < 0 and _could_be_ray_line(line):
                break
            else:
                out.append(line)
                self.passing_line = end < 0
            data, self.pending = (b"", b"") if end < 0 else (self.pending[end + 1 :], b"")
        if out:
            os.write(self.terminal_fd, b"".join(out))

    def run(self) -> None:
        while chunk := os.read(self.read_fd, 65536):
            held = self.pending
            try:
                self.feed(chunk)
            except Exception:  # noqa: BLE001 - never stop draining: writers to fd 2 would block
                self.pending, self.passing_line = b"", False
                self._pass_on(held + chunk)
        self._pass_on(self.pending)
        os.close(self.read_fd)

    def _pass_on(self, data: bytes) -> None:
        """``data`` to the terminal as it is; a terminal that is gone loses it, nothing else."""
        try:
            if data:
                os.write(self.terminal_fd, data)
        except OSError:
            pass


def split_native_stderr(on_ray_line: Callable[[str], None]) -> bool:
    """Route Ray's C++ log lines on descriptor 2 to ``on_ray_line`` until exit; once per process.

    Returns False (and changes nothing) when it is already split.
    """
    if _active:
        return False
    terminal_fd = os.dup(2)
    read_fd, write_fd = os.pipe()
    splitter = _Splitter(read_fd, terminal_fd, on_ray_line)
    thread = threading.Thread(target=splitter.run, name="facs-native-stderr", daemon=True)
    thread.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    _active.update(terminal_fd=terminal_fd, thread=thread)
    atexit.register(restore_native_stderr)
    return True


def restore_native_stderr(timeout_s: float = 5.0) -> None:
    """Put descriptor 2 back and let the thread pass on what the pipe still holds."""
    if not _active:
        return
    terminal_fd = _active.pop("terminal_fd")
    thread = _active.pop("thread")
    os.dup2(terminal_fd, 2)  # closes the pipe's last write end: the reader sees its end
    thread.join(timeout_s)  # type: ignore[attr-defined]
    os.close(terminal_fd)  # type: ignore[arg-type]
