"""Subsets (gender/region balance, determinism) and the identity-disjoint 95/5 split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.corpus.manifest import CorpusError
from pipeline.corpus.split import split_of
from pipeline.corpus.subset import SubsetConfig, allocate, choose_rows

REGIONS = ["N. America/Europe", "N.E. Asia", "S. Asia"]


def metadata(people: int = 60, seed: int = 0) -> pa.Table:
    """People with 1-9 images each; 2/3 men, regions skewed; a few of unknown gender."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(people):
        gender = "unknown" if p % 20 == 19 else ("male" if p % 3 else "female")
        region = REGIONS[0] if p % 4 else REGIONS[1 + (p // 4) % 2]
        for k in range(int(rng.integers(1, 10))):
            rows.append(
                {
                    "content_hash": f"{p}-{k}",
                    "identity": f"id{p}",
                    "gender": gender,
                    "region": region,
                }
            )
    return pa.Table.from_pylist(rows)


def chosen(table: pa.Table, **kwargs) -> pa.Table:
    return table.take(pa.array(choose_rows(table, SubsetConfig(**kwargs)), type=pa.int64()))


def test_identities_subset_has_equal_women_and_men():
    table = metadata()
    sub = chosen(table, identities=20, seed=1)
    people = {r["identity"]: r["gender"] for r in sub.to_pylist()}
    assert len(people) == 20
    assert sorted(people.values()).count("female") == 10
    assert "unknown" not in people.values()
    # every image of each chosen person comes along
    for who in people:
        assert sub.column("identity").to_pylist().count(who) == table.column(
            "identity"
        ).to_pylist().count(who)


def test_images_subset_has_equal_images_per_gender():
    sub = chosen(metadata(), images=50, seed=3)
    genders = sub.column("gender").to_pylist()
    assert len(genders) == 50 and genders.count("female") == 25


def test_same_seed_same_subset_other_seed_other_subset():
    table = metadata()
    a = chosen(table, identities=10, seed=5).column("content_hash").to_pylist()
    b = chosen(table, identities=10, seed=5).column("content_hash").to_pylist()
    c = chosen(table, identities=10, seed=6).column("content_hash").to_pylist()
    assert a == b and a != c


def test_region_balance_spreads_people_over_regions():
    sub = chosen(metadata(people=200), identities=24, balance="region", seed=0)
    people = {r["identity"]: (r["gender"], r["region"]) for r in sub.to_pylist()}
    per_cell = {}
    for cell in people.values():
        per_cell[cell] = per_cell.get(cell, 0) + 1
    assert sorted(per_cell.values()) == [4] * 6  # 2 genders x 3 regions, 4 people each


def test_too_large_a_balanced_subset_is_a_clear_error():
    with pytest.raises(CorpusError, match="cannot balance"):
        choose_rows(metadata(), SubsetConfig(identities=55))
    with pytest.raises(CorpusError, match="give --images N, --identities N, or both"):
        choose_rows(metadata(), SubsetConfig())


def test_people_at_a_fixed_image_budget_share_it_evenly():
    table = metadata(people=200)
    for people in (4, 10):
        sub = chosen(table, identities=people, images=20, seed=2)
        counts: dict[str, int] = {}
        for who in sub.column("identity").to_pylist():
            counts[who] = counts.get(who, 0) + 1
        assert sub.num_rows == 20 and len(counts) == people
        assert sorted(set(counts.values())) == [20 // people]
        genders = {r["identity"]: r["gender"] for r in sub.to_pylist()}
        assert list(genders.values()).count("female") == people // 2
    uneven = chosen(table, identities=3, images=14, seed=2)  # 5 + 5 + 4
    assert uneven.num_rows == 14


def test_a_budget_the_people_cannot_give_is_a_clear_error():
    with pytest.raises(CorpusError, match="images each: only .* people have"):
        choose_rows(metadata(), SubsetConfig(identities=4, images=400))
    with pytest.raises(CorpusError, match="at least one image"):
        choose_rows(metadata(), SubsetConfig(identities=10, images=5))


def test_allocate_fills_small_strata_then_spreads_the_rest():
    assert allocate({"a": 2, "b": 10, "c": 10}, 12) == {"a": 2, "b": 5, "c": 5}
    assert sum(allocate({"a": 3, "b": 4}, 7).values()) == 7


def test_split_is_about_five_percent_by_identity_and_stable():
    identities = [f"m.0{i:05x}" for i in range(20000)]
    splits = [split_of(i) for i in identities]
    assert 0.04 < splits.count("val") / len(splits) < 0.06
    assert splits == [split_of(i) for i in identities]


def test_dictionary_encoded_shards_choose_the_rows_plain_strings_choose():
    """make_subset reads shards with dictionary-encoded columns (each shard its own dictionary):
    the same rows must be chosen as from plain strings."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 400, 6000)
    gender_of = rng.choice(["female", "male", "unknown"], 400, p=[0.45, 0.45, 0.1])
    region_of = rng.choice(["europe", "asia", "africa"], 400)
    plain = pa.table(
        {
            "identity": [f"m.{i}" for i in ids],
            "gender": list(gender_of[ids]),
            "region": list(region_of[ids]),
        }
    )
    shards = [
        pa.table(
            {
                c: pa.array(plain[c].to_pylist()[i : i + 1000]).dictionary_encode()
                for c in plain.column_names
            }
        )
        for i in range(0, len(ids), 1000)
    ]
    coded = pa.concat_tables(shards)
    for spec in (
        {"images": 1500},
        {"identities": 40},
        {"images": 200, "identities": 20},
        {"images": 900, "balance": "region"},
    ):
        config = SubsetConfig(corpus="x", **spec)
        expected = choose_rows(plain, config)
        assert len(expected) > 0
        assert np.array_equal(choose_rows(coded, config), expected), spec
