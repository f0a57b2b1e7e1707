"""Shard parts written by parallel generator tasks, joined in order into one file."""

from __future__ import annotations

import csv
import io

from pipeline.storage import Location

SHARD_DIR = "_shards"


def csv_line(values: list[str]) -> str:
    """One CSV row (quoted where needed), without the line end."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def write_part(root: Location, name: str, lines: list[str]) -> None:
    """Write one task's rows as ``<root>/_shards/<name>``; parts are joined by name order."""
    text = "".join(line + "\n" for line in lines)
    root.join(SHARD_DIR, name).write_bytes(text.encode("utf-8"))


def join_parts(root: Location, suffix: str, target: Location, header: str | None = None) -> None:
    """Concatenate the parts ending in ``suffix``, sorted by name, into ``target``."""
    shard_dir = root.join(SHARD_DIR)
    parts = [p for p in shard_dir.list_files(recursive=False) if p.endswith(suffix)]
    target.fs.create_dir(root.path, recursive=True)
    with target.fs.open_output_stream(target.path) as sink:
        if header is not None:
            sink.write((header + "\n").encode("utf-8"))
        for path in parts:
            with shard_dir.fs.open_input_stream(path) as source:
                while chunk := source.read(16 * 1024 * 1024):
                    sink.write(chunk)


def clear_parts(root: Location) -> None:
    root.join(SHARD_DIR).delete_dir()
