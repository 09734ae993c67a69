"""Repetition and diversity of generated answers, against counts done by hand."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kdistill.lm.degeneration import degeneration, distinct_n, ngrams, repeated_ngram_rate

LOOP = "The docs explain it. " * 10  # the looping answer of a student that never stops


def test_a_looping_answer_repeats_almost_every_4gram_and_a_plain_one_none() -> None:
    # 40 words, 37 4-grams; the loop has period 4, so only 4 of them are distinct
    assert repeated_ngram_rate(LOOP, 4) == pytest.approx(1 - 4 / 37)
    assert repeated_ngram_rate("a for loop binds each item to the target in turn", 4) == 0.0
    assert repeated_ngram_rate("too short", 4) == 0.0  # no 4-gram: nothing repeated


def test_distinct_n_pools_the_answers() -> None:
    texts = ["a b c", "a b d"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # a b c d of 6 words
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # (a b) (b c) (a b) (b d)
    assert distinct_n(["one"], 2) is None


def test_degeneration_summarises_answers_and_their_cut_flags() -> None:
    out = degeneration([LOOP, "a b c d e"], [True, False])
    assert out["repeated_4gram_rate"] == pytest.approx((1 - 4 / 37 + 0.0) / 2)
    assert out["hit_max_tokens"] == 0.5
    assert out["mean_words"] == pytest.approx((40 + 5) / 2)
    assert out["distinct_1"] == pytest.approx((4 + 5) / 45)
    with pytest.raises(ValueError, match="2 answers but 1 hit_limit flags"):
        degeneration(["a", "b"], [True])
    with pytest.raises(ValueError, match="no answers"):
        degeneration([], [])
    blank = degeneration(["\n\n", "a b c"], [True, True])  # no answer of 4 words: nothing to judge, not 0
    assert (
        blank["repeated_4gram_rate"] is None and blank["distinct_2"] == 1.0 and blank["hit_max_tokens"] == 1.0
    )
    with pytest.raises(ValueError, match="n must be >= 1"):
        ngrams(["a"], 0)


@given(st.lists(st.sampled_from("abcde"), min_size=0, max_size=30), st.integers(1, 4))
def test_repetition_is_a_rate_and_zero_iff_all_ngrams_differ(words: list[str], n: int) -> None:
    text = " ".join(words)
    rate = repeated_ngram_rate(text, n)
    grams = ngrams(words, n)
    assert 0.0 <= rate < 1.0
    assert (rate == 0.0) == (len(set(grams)) == len(grams))
