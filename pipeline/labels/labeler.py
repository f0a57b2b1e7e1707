"""The Labeler interface (AU presence for a batch of faces) and its label-table lookup implementation."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
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

    State is columnar (an Arrow key array, an int8 AU matrix and small code arrays), so pickling
    to Ray workers is cheap; the key -> row hash index is built on first lookup in each process.
    """

    duplicate_keys: int  # rows dropped because an earlier row had the same image key

    def __init__(self, table: pa.Table, *, name: str | None = None) -> None:
        table = _conform(table)
        keys = pd.Index([image_key(n) for n in table["image_name"].to_pylist()], dtype=object)
        first = ~keys.duplicated(keep="first")
        self.duplicate_keys = int((~first).sum())
        rows = pa.array(np.flatnonzero(first))
        table = table.take(rows)
        self._keys = pa.array(keys[first], pa.string())
        self._au = np.column_stack(
            [table[au].fill_null(NO_LABEL).to_numpy().astype(np.int8) for au in OPENFACE_AUS]
        ).reshape(table.num_rows, len(OPENFACE_AUS))
        self._gender_codes, self._genders = _encode(table["gender"])
        self._source_codes, self._sources = _encode(table["label_source"])
        self._reject_codes, self._rejects = _encode(table["label_reject"])
        self.name = name if name is not None else "+".join(self._sources[:-1]) or "table"
        self._index: pd.Index | None = None

    @classmethod
    def from_tables(cls, tables: Sequence[pa.Table], *, name: str | None = None) -> TableLabeler:
        """One labeler over several tables; on a shared key the earlier table wins."""
        conformed = [_conform(table) for table in tables]
        merged = pa.concat_tables(conformed) if conformed else LABEL_TABLE_SCHEMA.empty_table()
        return cls(merged, name=name)

    def __len__(self) -> int:
        """The number of distinct image keys with a label row."""
        return len(self._keys)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_index"] = None  # rebuilt lazily on the worker
        return state

    def label_batch(
        self, image_names: Sequence[str], faces: np.ndarray | None = None
    ) -> LabelBatch:
        if faces is not None and len(faces) != len(image_names):
            raise ValueError(f"{len(image_names)} image names but {len(faces)} faces")
        if self._index is None:
            self._index = pd.Index(self._keys.to_pylist(), dtype=object)
        rows = self._index.get_indexer([image_key(name) for name in image_names])
        found = rows >= 0
        au = np.full((len(rows), len(OPENFACE_AUS)), NO_LABEL, dtype=np.int8)
        au[found] = self._au[rows[found]]
        gender = _decode(self._gender_codes, self._genders, rows, found, None)
        source = _decode(self._source_codes, self._sources, rows, found, self.name)
        reject = _decode(
            self._reject_codes, self._rejects, rows, found, RejectReason.NO_LABEL.value
        )
        return LabelBatch(au=au, gender=gender, label_source=source, label_reject=reject)


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
