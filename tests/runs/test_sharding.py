"""`--shard i/N`: the N parts are disjoint and together the whole, decided by each job alone."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kdistill.runs.sharding import WHOLE, Shard, ShardSpecError, parse_shard, shard_of

ids = st.lists(st.text(min_size=1, max_size=40), max_size=60, unique=True)


@given(ids, st.integers(1, 5))
def test_record_shards_are_disjoint_and_cover_every_id(record_ids, count):
    parts = [Shard(i, count).select(record_ids, str) for i in range(count)]
    flat = [r for part in parts for r in part]
    assert sorted(flat) == sorted(record_ids)  # every id in exactly one part
    for part in parts:  # and each part keeps the ids' order
        assert part == [r for r in record_ids if r in set(part)]


@given(st.integers(0, 200), st.integers(1, 5), st.integers(1, 3))
def test_position_shards_and_their_rank_splits_are_disjoint_and_cover(n, count, world):
    for shards in (
        [Shard(i, count) for i in range(count)],
        [Shard(i, count).split(r, world) for i in range(count) for r in range(world)],
    ):
        taken = sorted(j for s in shards for j in s.positions(n))
        assert taken == list(range(n))
    for i in range(count):  # the ranks of shard i together do exactly shard i's positions
        ranks = sorted(j for r in range(world) for j in Shard(i, count).split(r, world).positions(n))
        assert ranks == list(Shard(i, count).positions(n))


def test_the_hash_rule_is_sha256_not_the_salted_builtin_hash():
    rid = "0123456789abcdef"
    expected = int(hashlib.sha256(rid.encode()).hexdigest()[:16], 16) % 7
    assert shard_of(rid, 7) == expected and Shard(expected, 7).holds(rid)
    assert all(WHOLE.holds(r) for r in ("a", "b", rid))


def test_shards_are_about_even():
    counts = [0] * 4
    for n in range(4000):
        counts[shard_of(f"record-{n}", 4)] += 1
    assert all(900 < c < 1100 for c in counts), counts


def test_parse_shard_and_errors_name_the_flag():
    assert parse_shard("2/5") == Shard(2, 5) and str(parse_shard(" 0 / 1 ")) == "0/1"
    assert parse_shard(None) is None and Shard(1, 3).name == "shard-1-of-3"
    for bad in ("2/2", "1/0", "a/b", "-1/2", "3", "1/2/3"):
        with pytest.raises(ShardSpecError, match=r"^--shard: expected"):
            parse_shard(bad)
    with pytest.raises(ShardSpecError, match=r"^capture\.shard: "):
        parse_shard("5/5", flag="capture.shard")
    with pytest.raises(ShardSpecError):
        Shard(3, 3)
