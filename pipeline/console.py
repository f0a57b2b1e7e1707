"""A console a person reads: the product's own lines on the terminal, Ray's output in a log file.

Without ``--verbose``, the CLI calls :func:`quiet_console` once, before Ray starts. Then:

- lines that Ray streams from its workers, controllers and raylets reach the terminal only when
  they carry :data:`PRODUCT_TAG` (the product's per-epoch lines from its training workers); every
  line, tagged or not, goes to the console log file, whose path is printed once;
- Ray Data's per-dataset INFO lines and its ``UserWarning``s, and MLflow's INFO chatter on the
  driver, go to the same file;
- so do the C++ log lines that Ray's core worker in this process writes straight to file
  descriptor 2 (:mod:`pipeline.native_stderr`); every other byte written there passes through.

Ray offers no public hook to filter what it streams to the driver, so this swaps the handler of
``ray._private.worker`` that prints it (and the function that prints raylet messages). If a Ray
release moves them, the console stays as loud as before and says so once; nothing fails.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

from pipeline.native_stderr import split_native_stderr

#: The mark of the product's own lines, wherever they are printed.
PRODUCT_TAG = "[facs]"

_QUIET_LOGGERS = (
    "ray.data",
    "ray._private.authentication",  # "token authentication is enabled": facs always enables it
    "mlflow.store",
    "mlflow.utils.requirements_utils",
    "alembic",
)

_state: dict[str, Any] = {"path": None, "file": None, "announced": False}
_lock = threading.Lock()


def _sink() -> TextIO:
    if _state["file"] is None:
        path: Path = _state["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        _state["file"] = path.open("a", buffering=1, encoding="utf-8")
    if not _state["announced"]:
        _state["announced"] = True
        print(
            f"{PRODUCT_TAG} Ray's and the libraries' own output: {_state['path']} "
            "(--verbose prints it here)",
            flush=True,
        )
    return _state["file"]


def _write(lines: list[str], source: str) -> None:
    with _lock:
        sink = _sink()
        stamp = time.strftime("%H:%M:%S")
        for line in lines:
            sink.write(f"{stamp} ({source}) {line}\n")


def _ray_lines(data: dict[str, Any]) -> None:
    """The replacement of Ray's driver-side printer: tagged lines to the terminal, all to the file."""
    lines = [str(line) for line in data.get("lines", [])]
    source = data.get("actor_name") or data.get("task_name") or f"pid={data.get('pid')}"
    _write(lines, str(source))
    shown = [line for line in lines if PRODUCT_TAG in line]
    if shown:
        stream = sys.stderr if data.get("is_err") else sys.stdout
        for line in shown:
            print(line[line.index(PRODUCT_TAG) :], file=stream, flush=True)


class _FileHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write([self.format(record)], record.name)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _quiet_libraries() -> None:
    handler = _FileHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False
        for existing in list(logger.handlers):
            if existing is not handler:
                logger.removeHandler(existing)

    def to_file(message, category, filename, lineno, file=None, line=None) -> None:
        if "ray" in filename or "mlflow" in filename:
            _write(
                [warnings.formatwarning(message, category, filename, lineno, line).strip()],
                "warnings",
            )
        else:
            _show_warning(message, category, filename, lineno, file, line)

    warnings.showwarning = to_file


_show_warning = warnings.showwarning


def quiet_console(log_path: Path) -> None:
    """Route Ray's streamed output and the libraries' chatter to ``log_path`` (see the module)."""
    _state["path"] = Path(log_path)
    _quiet_libraries()


def move_console_log(log_path: Path) -> None:
    """From now on write the console log to ``log_path`` (a job's run directory, once it exists);
    a no-op while the console is not quiet."""
    if _state["path"] is None:
        return
    with _lock:
        if _state["file"] is not None:
            _state["file"].close()
        _state.update(path=Path(log_path), file=None, announced=False)


def route_ray_output() -> None:
    """Call right after ``ray.init`` in a quiet console: swap Ray's printer for :func:`_ray_lines`."""
    if _state["path"] is None:
        return
    try:
        from ray._private import worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", _ray_lines)
        worker.print_to_stdstream = lambda data, ignore_prefix=False: _ray_lines(data)
    except (ImportError, AttributeError) as error:
        print(f"{PRODUCT_TAG} cannot quiet Ray's output on this Ray ({error}); showing it all")
    split_native_stderr(lambda line: _write([line], "ray-core-worker"))
