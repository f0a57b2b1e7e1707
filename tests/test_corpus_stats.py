"""Table II's people counts from a scan shard by shard: distinct people per cell, first gender."""

from __future__ import annotations

import pyarrow as pa

from pipeline.corpus import stats
from pipeline.vocabulary import OPENFACE_AUS


def shard(rows: list[tuple[str, str, str]]) -> pa.Table:
    """Metadata rows ``(identity, region, gender)``, unlabelled."""
    identity, region, gender = (list(column) for column in zip(*rows, strict=True))
    return pa.table(
        {
            "identity": identity,
            "region": region,
            "gender": gender,
            "split": ["train"] * len(rows),
            "label_source": ["none"] * len(rows),
            **{au: pa.nulls(len(rows), pa.int8()) for au in OPENFACE_AUS},
        }
    )


def test_people_are_counted_once_per_cell_across_shards_and_merges(monkeypatch):
    monkeypatch.setattr(stats, "MERGE_EVERY", 2)  # merges happen inside this scan
    tally = stats._Tally()
    shards = [
        [("a", "Europe", "female"), ("a", "Europe", "female"), ("b", "Asia", "male")],
        [("a", "Europe", "male"), ("c", "Asia", "male")],  # a's later rows say male
        [("b", "Asia", "male"), ("d", "Europe", "female")],
        [("c", "Asia", "male")],
        [("e", "Asia", "female")],
    ]
    for rows in shards:
        tally.add(shard(rows))
    people = stats._counts(tally.people_cells(), ["region", "gender"])
    assert people == {
        ("Europe", "female"): 2,  # a, d
        ("Europe", "male"): 1,  # a again: the cell saw a's male rows
        ("Asia", "male"): 2,  # b, c: each once, though each is in two shards
        ("Asia", "female"): 1,
    }
    firsts = dict(zip(*tally.first_genders().to_pydict().values(), strict=True))
    assert firsts == {"a": "female", "b": "male", "c": "male", "d": "female", "e": "female"}
    assert tally.images == 9
    assert tally.cell_images[("Asia", "male")] == 4
    assert tally.splits["train"] == 9
