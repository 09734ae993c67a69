"""select_answers: each policy keeps what it promises, counts add up, and the choice is deterministic."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kdistill.curate import FilterCounts, select_answers


def row(prompt_id: str, sample_index: int, ok: bool, score: float | None = None) -> dict:
    return {
        "record_id": f"{prompt_id}/{sample_index}",
        "prompt_id": prompt_id,
        "sample_index": sample_index,
        "completion": f"answer {sample_index} to {prompt_id}",
        "ok": ok,
        "score": score,
    }


@st.composite
def row_sets(draw) -> list[dict]:
    rows = []
    for p in range(draw(st.integers(0, 5))):
        indices = draw(st.lists(st.integers(0, 9), max_size=8, unique=True))
        for i in indices:
            score = draw(st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0])))
            rows.append(row(f"p{p}", i, draw(st.booleans()), score))
    return draw(st.permutations(rows))


def ids(rows: list[dict]) -> list[str]:
    return [r["record_id"] for r in rows]


@given(row_sets(), st.sampled_from(["all_correct", "best_of_n", "all"]), st.sampled_from([None, 1, 2, 3]))
def test_counts_add_up_and_each_policy_keeps_what_it_promises(rows, keep, cap):
    result = select_answers(rows, keep=keep, max_per_prompt=cap)
    counts = result.counts
    assert counts.before == len(rows) and counts.after == len(result.rows)
    assert len(result.rows) + sum(counts.reasons.values()) == len(rows)
    assert counts.reasons.get("not_verified", 0) == (0 if keep == "all" else sum(not r["ok"] for r in rows))

    positions = [rows.index(r) for r in result.rows]
    assert positions == sorted(positions)  # a subsequence of the input, in input order
    per_prompt = {}
    for r in result.rows:
        per_prompt[r["prompt_id"]] = per_prompt.get(r["prompt_id"], 0) + 1
    limit = 1 if keep == "best_of_n" else cap
    assert limit is None or max(per_prompt.values(), default=0) <= limit
    if keep != "all":
        assert all(r["ok"] for r in result.rows)
    if keep == "all_correct" and cap is None:
        assert ids(result.rows) == ids([r for r in rows if r["ok"]])
    if keep == "all" and cap is None:
        assert ids(result.rows) == ids(rows)
    if keep == "best_of_n":  # one per prompt that has a verified sample
        assert set(per_prompt) == {r["prompt_id"] for r in rows if r["ok"]}
    prompts = list(dict.fromkeys(r["prompt_id"] for r in rows))
    assert result.prompts_without_answer == [p for p in prompts if p not in per_prompt]


def test_best_of_n_takes_the_highest_verified_score():
    rows = [row("a", 0, True, 0.2), row("a", 1, False, 0.99), row("a", 2, True, 0.7), row("a", 3, True, 0.5)]
    result = select_answers(rows, keep="best_of_n")
    assert ids(result.rows) == ["a/2"]  # the unverified 0.99 is never chosen
    assert result.counts.reasons == {"not_verified": 1, "not_best_of_n": 2}


def test_best_of_n_breaks_ties_and_missing_scores_by_the_lowest_sample_index_in_any_row_order():
    tied = [row("a", 4, True, 0.5), row("a", 2, True, 0.5), row("a", 7, True, 0.1)]
    unscored = [row("b", 5, True), row("b", 3, True), row("b", 1, False)]
    mixed = [row("c", 0, True), row("c", 6, True, 0.0)]  # a scored answer beats an unscored one
    rows = tied + unscored + mixed
    for seed in range(5):
        shuffled = random.Random(seed).sample(rows, len(rows))
        assert sorted(ids(select_answers(shuffled, keep="best_of_n").rows)) == ["a/2", "b/3", "c/6"]


def test_best_of_n_keeps_nothing_for_a_prompt_without_a_verified_sample():
    rows = [row("a", 0, False, 0.9), row("b", 0, True), row("a", 1, False)]
    result = select_answers(rows, keep="best_of_n")
    assert ids(result.rows) == ["b/0"]
    assert result.prompts_without_answer == ["a"]


def test_max_per_prompt_caps_each_prompt_independently_of_row_order_and_of_other_prompts():
    rows = [row(f"p{p}", i, True) for p in range(6) for i in range(8)]
    kept = set(ids(select_answers(rows, max_per_prompt=3, seed=7).rows))
    for p in range(6):
        assert sum(r.startswith(f"p{p}/") for r in kept) == 3
    shuffled = random.Random(0).sample(rows, len(rows))
    assert set(ids(select_answers(shuffled, max_per_prompt=3, seed=7).rows)) == kept
    only_p0 = [r for r in rows if r["prompt_id"] == "p0"]
    assert set(ids(select_answers(only_p0, max_per_prompt=3, seed=7).rows)) == {
        r for r in kept if r.startswith("p0/")
    }
    result = select_answers(rows, max_per_prompt=3, seed=7)
    assert result.counts.reasons == {"not_verified": 0, "over_max_per_prompt": 6 * 5}


def test_a_larger_cap_keeps_a_superset_and_the_seed_changes_the_choice():
    rows = [row(f"p{p}", i, True) for p in range(10) for i in range(8)]
    by_cap = [set(ids(select_answers(rows, max_per_prompt=cap, seed=3).rows)) for cap in range(1, 9)]
    assert all(a < b for a, b in zip(by_cap, by_cap[1:], strict=False))
    assert by_cap[-1] == set(ids(rows))
    by_seed = {frozenset(ids(select_answers(rows, max_per_prompt=2, seed=s).rows)) for s in range(5)}
    assert len(by_seed) > 1  # not the lowest indices whatever the seed


def test_cap_applies_after_the_verdict_filter():
    rows = [row("a", i, i % 2 == 0) for i in range(10)]  # 5 verified
    result = select_answers(rows, keep="all_correct", max_per_prompt=2)
    assert len(result.rows) == 2 and all(r["ok"] for r in result.rows)
    assert result.counts.reasons == {"not_verified": 5, "over_max_per_prompt": 3}


def test_same_input_same_output():
    rows = [row(f"p{p}", i, (p + i) % 3 != 0, (i * 7 % 5) / 5) for p in range(4) for i in range(6)]
    for keep in ("all_correct", "best_of_n", "all"):
        first = select_answers(rows, keep=keep, max_per_prompt=2, seed=11)
        again = select_answers([dict(r) for r in rows], keep=keep, max_per_prompt=2, seed=11)
        assert ids(first.rows) == ids(again.rows) and first.counts == again.counts


def test_all_needs_no_verdict():
    rows = [{"record_id": "x", "prompt_id": "p", "sample_index": 0, "completion": "c"}]
    assert select_answers(rows, keep="all").rows == rows


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        ([], {"keep": "best"}, "unknown keep policy 'best'; expected one of all_correct, best_of_n, all"),
        ([], {"max_per_prompt": 0}, "max_per_prompt must be a positive int or None, got 0"),
        (
            [{"prompt_id": "p", "sample_index": 0}],
            {},
            "row 0: field 'ok' must be a bool (the verdict), got None",
        ),
        (
            [{**row("p", 0, True), "score": "high"}],
            {},
            "row 0: field 'score' must be a number or None, got 'high'",
        ),
        (
            [{**row("p", 0, True), "sample_index": "0"}],
            {},
            "row 0: field 'sample_index' must be an int, got '0'",
        ),
        (
            [row("p", 0, True), {"sample_index": 1}],
            {"keep": "all"},
            "row 1: field 'prompt_id' must be a string",
        ),
    ],
)
def test_bad_input_names_the_row_and_field(rows, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        select_answers(rows, **kwargs)


def test_filter_counts_refuse_numbers_that_do_not_add_up():
    assert FilterCounts.from_reasons("f", 10, {"x": 3, "y": 4}).to_dict() == {
        "name": "f",
        "before": 10,
        "after": 3,
        "removed": 7,
        "reasons": {"x": 3, "y": 4},
    }
    with pytest.raises(ValueError, match=re.escape("f: removed (2) must equal before - after (10 - 7)")):
        FilterCounts("f", 10, 7, 2, {"x": 2})
    with pytest.raises(
        ValueError, match=re.escape("f: the reasons {'x': 1} add up to 1, not to the 3 rows removed")
    ):
        FilterCounts("f", 10, 7, 3, {"x": 1})
    with pytest.raises(ValueError, match=re.escape("f: after must be a non-negative int, got -1")):
        FilterCounts.from_reasons("f", 2, {"x": 3})
