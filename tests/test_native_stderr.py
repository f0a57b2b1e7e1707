"""Descriptor 2 split: Ray's C++ log lines to the console log, every other byte to the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from pipeline.native_stderr import _Splitter

RAY_LINE = (
    b"[2026-12-06 03:55:50,420 E 10284 10284] core_worker.cc:2465: Actor with class name: "
    b"'MapWorker(MapBatches(CorpusRowMaker))' has constructor arguments in the object store\n"
)
LONG_FILE_LINE = b"[2026-12-06 03:55:50,420 W 1234567 1234567] normal_task_submitter.cc:1234: x\n"
OTHER = b"Traceback (most recent call last):\n  [not a log line] x.cc:1: still shown\n"


def split(chunks: list[bytes]) -> tuple[bytes, list[str]]:
    """Feed ``chunks`` through a splitter; what reached the terminal, and the Ray lines."""
    read_fd, terminal_write = os.pipe()
    ray_lines: list[str] = []
    splitter = _Splitter(-1, terminal_write, ray_lines.append)
    for chunk in chunks:
        splitter.feed(chunk)
    os.write(terminal_write, splitter.pending)
    os.close(terminal_write)
    with os.fdopen(read_fd, "rb") as terminal:
        return terminal.read(), ray_lines


@pytest.mark.parametrize("size", [1, 7, 50, 10_000])
def test_ray_lines_leave_the_terminal_whole_however_the_bytes_arrive(size):
    data = OTHER + RAY_LINE + b"progress 10%\r" + LONG_FILE_LINE + b"[facs] epoch 1\n" + OTHER
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    shown, ray_lines = split(chunks)
    assert shown == OTHER + b"progress 10%\r[facs] epoch 1\n" + OTHER
    assert ray_lines == [RAY_LINE.rstrip(b"\n").decode(), LONG_FILE_LINE.rstrip(b"\n").decode()]


def test_a_bracketed_line_that_is_not_rays_is_passed_on_once_it_is_too_long_to_be_one():
    shown, ray_lines = split([b"[" + b"x" * 300])  # no newline yet: not held back for ever
    assert shown == b"[" + b"x" * 300 and ray_lines == []


def test_a_failing_log_never_stops_the_drain_its_bytes_reach_the_terminal():
    read_fd, write_fd = os.pipe()
    terminal_read, terminal_write = os.pipe()
    calls = []

    def broken_log(line: str) -> None:
        calls.append(line)
        raise OSError("disk full")

    os.write(write_fd, RAY_LINE + b"after\n")
    os.close(write_fd)
    _Splitter(read_fd, terminal_write, broken_log).run()  # returns: the pipe was drained
    os.close(terminal_write)
    with os.fdopen(terminal_read, "rb") as terminal:
        assert terminal.read() == RAY_LINE + b"after\n"  # nothing lost, nothing twice
    assert calls  # the log was tried first


def test_a_process_keeps_its_own_stderr_and_logs_rays_lines(tmp_path):
    log = tmp_path / "ray.log"
    program = textwrap.dedent(
        f"""
        import os, sys
        from pipeline.native_stderr import split_native_stderr
        log = open({str(log)!r}, "w", buffering=1)
        assert split_native_stderr(lambda line: log.write(line + "\\n"))
        assert not split_native_stderr(print)  # once per process
        os.write(2, {RAY_LINE!r})
        print("python stderr", file=sys.stderr, flush=True)
        os.write(2, b"native, no newline at exit")
        raise SystemExit("the error a user must see")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, timeout=60, cwd=tmp_path.parent
    )
    assert done.returncode == 1
    assert b"python stderr\n" in done.stderr
    assert b"native, no newline at exit" in done.stderr
    assert b"the error a user must see" in done.stderr  # printed after exit began: not lost
    assert b"core_worker.cc" not in done.stderr
    assert "core_worker.cc:2465: Actor with class name" in log.read_text()
