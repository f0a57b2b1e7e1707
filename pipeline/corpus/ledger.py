"""The build's ledger: counts the rows that enter the workers and keeps each image once.

One actor holds the content hashes of every image the corpus has (earlier versions and this
build so far). At millions of rows a Python ``set`` of hex strings costs about 130 bytes a row;
here a hash is its 16 raw bytes in a sorted NumPy array (16 bytes a row), plus a small set of
the newest hashes that is merged into the array every :data:`MERGE_EVERY` claims.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import ray

#: A hash as stored: the 16 bytes of the 32 hex digits of a row's ``content_hash``.
HASH_DTYPE = np.dtype("S16")
#: New hashes kept in a set before they are merged into the sorted array.
MERGE_EVERY = 65_536


def packed_hashes(hex_hashes: Iterable[str]) -> np.ndarray:
    """Hex content hashes (32 digits) as a sorted, unique ``S16`` array."""
    raw = b"".join(bytes.fromhex(value) for value in hex_hashes if value)
    return np.unique(np.frombuffer(raw, dtype=HASH_DTYPE))


class HashLedger:
    """Which content hashes have been seen; ``claim`` says which rows are first copies."""

    def __init__(self, known: np.ndarray | None = None) -> None:
        self.known = np.unique(known) if known is not None else np.zeros(0, HASH_DTYPE)
        self.recent: set[bytes] = set()
        self.rows_in = 0

    def __len__(self) -> int:
        return len(self.known) + len(self.recent)

    def _in_known(self, keys: np.ndarray) -> np.ndarray:
        if not len(self.known) or not len(keys):
            return np.zeros(len(keys), bool)
        at = np.searchsorted(self.known, keys)
        inside = at < len(self.known)
        found = np.zeros(len(keys), bool)
        found[inside] = self.known[at[inside]] == keys[inside]
        return found

    def claim(self, hashes: Sequence[str | None]) -> list[bool]:
        """For each hash (None = a row rejected already): True when this row is the first copy."""
        self.rows_in += len(hashes)
        slots = [i for i, value in enumerate(hashes) if value]
        keys = np.frombuffer(b"".join(bytes.fromhex(hashes[i]) for i in slots), dtype=HASH_DTYPE)  # type: ignore[arg-type]
        known = self._in_known(keys)
        first = [True] * len(hashes)
        for i, key, seen in zip(slots, keys.tolist(), known.tolist(), strict=True):
            if seen or key in self.recent:
                first[i] = False
            else:
                self.recent.add(key)
        if len(self.recent) >= MERGE_EVERY:
            self._merge()
        return first

    def _merge(self) -> None:
        fresh = np.array(sorted(self.recent), dtype=HASH_DTYPE)
        self.known = np.union1d(self.known, fresh).astype(HASH_DTYPE)
        self.recent = set()

    def rows(self) -> int:
        return self.rows_in


#: The ledger as the one Ray actor every build worker asks (no CPU of its own).
BuildLedger = ray.remote(num_cpus=0)(HashLedger)
