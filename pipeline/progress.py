"""Progress of long row-by-row work (corpus builds, DISFA ingests) as periodic ``[facs]`` lines.

A thread polls a count (e.g. the build ledger's rows so far) every ``every`` seconds and prints
rows done / total, the rate and the time left. One line per period rather than a redrawn bar:
the console may be a log file, a ``ray job logs`` stream or a CI log, where a bar is noise.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from pipeline.console import PRODUCT_TAG

#: Seconds between progress lines.
PROGRESS_EVERY = 15.0


def format_duration(seconds: float) -> str:
    """``59s``, ``1m01s``, ``1h01m``; ``?`` for a time not known (NaN, infinite)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def progress_line(
    what: str, done: int, total: int | None, seconds: float, *, estimated: bool = False
) -> str:
    """``[facs] build: 120,000 / ~1,000,000 rows (12%), 2,000 rows/s, ETA 7m20s``."""
    rate = done / seconds if seconds > 0 else 0.0
    text = f"{PRODUCT_TAG} {what}: {done:,}"
    if total:
        share = min(done / total, 1.0)
        text += f" / {'~' if estimated else ''}{total:,} rows ({share:.0%})"
    else:
        text += " rows"
    text += f", {rate:,.0f} rows/s"
    if total and rate > 0:
        left = max(total - done, 0) / rate
        text += f", ETA {format_duration(left)}" if done < total else ", finishing"
    return text


class RowProgress:
    """Prints :func:`progress_line` every ``every`` s while the ``with`` block runs.

    ``count`` is called from the reporting thread; an exception from it skips that line (the
    work itself reports its own failures). Nothing is printed for work shorter than ``every``
    (default :data:`PROGRESS_EVERY`).
    """

    def __init__(
        self,
        what: str,
        count: Callable[[], int],
        total: int | None = None,
        *,
        estimated: bool = False,
        every: float | None = None,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self.what, self.count, self.total, self.estimated = what, count, total, estimated
        self.every = PROGRESS_EVERY if every is None else every
        self.emit = emit or (lambda line: print(line, flush=True))
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"progress-{what}")
        self._started = 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                done = self.count()
            except Exception:  # noqa: BLE001 - a missed progress line must not stop the work
                continue
            seconds = time.perf_counter() - self._started
            line = progress_line(self.what, done, self.total, seconds, estimated=self.estimated)
            self.lines.append(line)
            self.emit(line)

    def __enter__(self) -> RowProgress:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
