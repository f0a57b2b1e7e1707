"""Change this process's environment variables for a block, and put them back exactly after."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def restored_environment(*names: str) -> Iterator[None]:
    """Whatever the block does to ``names`` (set, change, unset), they end as they began."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set (a string) or unset (None) variables for the block only."""
    with restored_environment(*values):
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
