"""The Labeler interface (AU presence for a batch of faces) and its label-table lookup implementation."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.names import image_key
from pipeline.rejects import RejectReason
from pipeline.schema import LABEL_TABLE_SCHEMA
from pipeline.vocabulary import OPENFACE_AUS

#: The value of ``LabelBatch.au`` where a row has no usable label.
NO_LABEL: int = -1


@dataclass
class LabelBatch:
    """The labels of one batch, row i for image i."""

    au: np.ndarray  # (N, 17) int8 in OPENFACE_AUS order: 0/1, NO_LABEL (-1) where no usable label
    gender: list[str | None]
    label_source: list[str]
    label_reject: list[str | None]  # a RejectReason value, or None

    def __post_init__(self) -> None:
        rows = len(self.au)
        if self.au.shape != (rows, len(OPENFACE_AUS)) or self.au.dtype != np.int8:
            raise ValueError(
                f"LabelBatch.au must be ({rows}, {len(OPENFACE_AUS)}) int8, "
                f"got {self.au.shape} {self.au.dtype}"
            )
        lengths = {len(self.gender), len(self.label_source), len(self.label_reject)}
        if lengths != {rows}:
            raise ValueError(
                f"LabelBatch lists must all have {rows} entries, got lengths {lengths}"
            )

    def __len__(self) -> int:
        return len(self.au)


class Labeler(abc.ABC):
    """Gives the 17 OpenFace AU presence bits for a batch of images.

    The corpus build calls ``label_batch`` inside Ray Data ``map_batches``, so implementations
    must be picklable and cheap to ship to workers.
    """

    name: str  # provenance, written to each corpus row's label_source

    @abc.abstractmethod
    def label_batch(self, image_names: Sequence[str], faces: np.ndarray) -> LabelBatch:
        """Label ``image_names[i]`` whose ``(64, 64)`` uint8 face crop is ``faces[i]``.

        ``faces`` is ``(N, 64, 64)``; lookup labelers may ignore it.
        """


class TableLabeler(Labeler):
    """Looks labels up by ``image_key(image_name)`` in one or more ``LABEL_TABLE_SCHEMA`` tables.

    A name that is not in the tables gets ``label_reject = "no label"``; a table row with a
    ``label_reject`` keeps it (its AUs are ``NO_LABEL``). When several rows share a key the first
    (in table order, then row order) wins; ``duplicate_keys`` counts the rows that lost.

    State is NumPy arrays (the key index, an int8 AU matrix and small code arrays): built once,
    put into Ray's object store once, read zero-copy by every worker.
    """

    duplicate_keys: int  # rows dropped because an earlier row had the same image key

    def __init__(self, table: pa.Table, *, name: str | None = None) -> None:
        table = _conform(table)
        names = table["image_name"]
        keys = pa.concat_arrays(
            [pa.array([], pa.string())]
            + [
                pa.array(
                    [image_key(n) for n in names.slice(i, HASH_CHUNK).to_pylist()], pa.string()
                )
                for i in range(0, len(names), HASH_CHUNK)
            ]
        )
        numbered = pa.table({"key": keys, "row": pa.array(np.arange(len(keys), dtype=np.int64))})
        first = np.sort(numbered.group_by("key").aggregate([("row", "min")])["row_min"].to_numpy())
        self.duplicate_keys = len(keys) - len(first)
        table = table.take(pa.array(first))
        self._index = KeyIndex(keys.take(pa.array(first)))
        self._au = np.column_stack(
            [table[au].fill_null(NO_LABEL).to_numpy().astype(np.int8) for au in OPENFACE_AUS]
        ).reshape(table.num_rows, len(OPENFACE_AUS))
        self._gender_codes, self._genders = _encode(table["gender"])
        self._source_codes, self._sources = _encode(table["label_source"])
        self._reject_codes, self._rejects = _encode(table["label_reject"])
        self.name = name if name is not None else "+".join(self._sources[:-1]) or "table"

    @classmethod
    def from_tables(cls, tables: Sequence[pa.Table], *, name: str | None = None) -> TableLabeler:
        """One labeler over several tables; on a shared key the earlier table wins."""
        conformed = [_conform(table) for table in tables]
        merged = pa.concat_tables(conformed) if conformed else LABEL_TABLE_SCHEMA.empty_table()
        return cls(merged, name=name)

    def __len__(self) -> int:
        """The number of distinct image keys with a label row."""
        return len(self._index.order)

    def label_batch(
        self, image_names: Sequence[str], faces: np.ndarray | None = None
    ) -> LabelBatch:
        if faces is not None and len(faces) != len(image_names):
            raise ValueError(f"{len(image_names)} image names but {len(faces)} faces")
        rows = self._index.rows([image_key(name) for name in image_names])
        found = rows >= 0
        au = np.full((len(rows), len(OPENFACE_AUS)), NO_LABEL, dtype=np.int8)
        au[found] = self._au[rows[found]]
        gender = _decode(self._gender_codes, self._genders, rows, found, None)
        source = _decode(self._source_codes, self._sources, rows, found, self.name)
        reject = _decode(
            self._reject_codes, self._rejects, rows, found, RejectReason.NO_LABEL.value
        )
        return LabelBatch(au=au, gender=gender, label_source=source, label_reject=reject)


def _key_hashes(keys: Sequence[str]) -> np.ndarray:
    """A 64-bit hash of each key (blake2b: stable across processes, unlike ``hash``)."""
    return np.fromiter(
        (int.from_bytes(blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys),
        dtype=np.uint64,
        count=len(keys),
    )


#: Keys turned into Python strings at a time while an index is built (bounds its memory).
HASH_CHUNK = 65_536


class KeyIndex:
    """Row of each key in a string array: sorted 64-bit hashes, each match checked on the key.

    Built once (by the driver) and held as NumPy arrays only: the keys' UTF-8 bytes and offsets,
    16 bytes a key for the hashes and their order. Shipped through Ray's object store, the arrays
    are shared by every build worker instead of copied into each (a label table of millions of
    rows otherwise costs each worker its own copy, and its own index build).
    """

    def __init__(self, keys: pa.Array) -> None:
        keys = pc.cast(keys, pa.large_string()) if len(keys) else pa.array([], pa.large_string())
        offsets = np.frombuffer(keys.buffers()[1], dtype=np.int64)[
            keys.offset : keys.offset + len(keys) + 1
        ]
        data = keys.buffers()[2]
        self.data = (
            np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        )
        self.offsets = offsets.copy()
        hashes = np.concatenate(
            [np.zeros(0, np.uint64)]
            + [
                _key_hashes(keys.slice(start, HASH_CHUNK).to_pylist())
                for start in range(0, len(keys), HASH_CHUNK)
            ]
        )
        self.order = np.argsort(hashes, kind="stable")
        self.sorted = hashes[self.order]

    def key(self, row: int) -> str:
        return self.data[self.offsets[row] : self.offsets[row + 1]].tobytes().decode("utf-8")

    def rows(self, names: Sequence[str]) -> np.ndarray:
        """Each name's row in ``keys``, or -1."""
        if not len(names) or not len(self.sorted):
            return np.full(len(names), -1, dtype=np.int64)
        wanted = _key_hashes(names)
        at = np.searchsorted(self.sorted, wanted)
        result = np.full(len(names), -1, dtype=np.int64)
        for i in np.flatnonzero(at < len(self.sorted)):
            j = at[i]
            while j < len(self.sorted) and self.sorted[j] == wanted[i]:  # equal hashes: check keys
                row = int(self.order[j])
                if self.key(row) == names[i]:
                    result[i] = row
                    break
                j += 1
        return result


def _conform(table: pa.Table) -> pa.Table:
    missing = [name for name in LABEL_TABLE_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ValueError(f"label table lacks columns {missing}; expected LABEL_TABLE_SCHEMA")
    return table.select(LABEL_TABLE_SCHEMA.names).cast(LABEL_TABLE_SCHEMA)


def _encode(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str | None]]:
    """Dictionary codes (int32, -1 for null) and the values with ``None`` last, so code -1 -> None."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    codes = encoded.indices.fill_null(-1).to_numpy().astype(np.int32)
    return codes, [*encoded.dictionary.to_pylist(), None]


def _decode(
    codes: np.ndarray, values: list, rows: np.ndarray, found: np.ndarray, missing: str | None
) -> list:
    lookup = np.array(values, dtype=object)
    result = (
        lookup[codes[np.where(found, rows, 0)]] if len(codes) else lookup[np.full(len(rows), -1)]
    )
    result[~found] = missing
    return result.tolist()
