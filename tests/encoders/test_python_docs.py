"""The built-in distillation text (Python's docs) and its held-out query -> document pairs."""

from __future__ import annotations

import pytest

from kdistill.encoders.python_docs import (
    held_out_pairs,
    python_docs_paragraphs,
    split_paragraphs,
    split_query,
)


def test_split_paragraphs_collapses_whitespace_and_drops_short_and_doctest_blocks() -> None:
    text = "A first   paragraph\nthat wraps.  It has two sentences.\n\n  \nshort\n\n>>> print('x')  # a doctest\n"
    assert split_paragraphs(text, min_chars=10) == ["A first paragraph that wraps. It has two sentences."]


def test_split_query_is_the_first_sentence_and_the_rest() -> None:
    paragraph = "The loop runs once per item. Each item is bound to the target, then the body runs (again)."
    assert split_query(paragraph) == (
        "The loop runs once per item.",
        "Each item is bound to the target, then the body runs (again).",
    )
    assert split_query("One sentence only, with no second one at all here to retrieve.") is None
    assert split_query("Too short. " + "x" * 100) is None  # the query would be 10 characters


def test_python_docs_give_thousands_of_distinct_paragraphs_deterministically() -> None:
    paragraphs = python_docs_paragraphs()
    assert len(paragraphs) >= 2000
    assert len(set(paragraphs)) == len(paragraphs)
    assert min(len(p) for p in paragraphs) >= 150
    assert python_docs_paragraphs() == paragraphs
    topics_only = python_docs_paragraphs(docstrings=False)
    assert 300 < len(topics_only) < len(paragraphs)
    assert paragraphs[: len(topics_only)] == topics_only  # topics first, docstrings after


def test_held_out_pairs_never_leak_into_training_text() -> None:
    paragraphs = python_docs_paragraphs(docstrings=False)
    pairs = held_out_pairs(paragraphs, 50, seed=3)
    assert len(pairs.queries) == len(pairs.documents) == 50
    assert len(pairs.train_paragraphs) == len(paragraphs) - 50
    held = [p for p in paragraphs if p not in set(pairs.train_paragraphs)]
    assert len(held) == 50
    for query, document, paragraph in zip(pairs.queries, pairs.documents, held, strict=True):
        assert paragraph == f"{query} {document}"  # pairs in corpus order, each from one held-out paragraph
    for query in pairs.queries:  # a query names one text only: it occurs in no training paragraph
        assert not any(query in p for p in pairs.train_paragraphs)
    assert held_out_pairs(paragraphs, 50, seed=3) == pairs
    assert held_out_pairs(paragraphs, 50, seed=4).queries != pairs.queries
    with pytest.raises(ValueError, match="asked to hold out 5"):
        held_out_pairs(["no sentence break here at all"] * 3, 5)
    twice = "This opening sentence appears twice. " + "And the rest differs in each of the two texts " * 2
    assert held_out_pairs(
        [twice + "a.", twice + "b.", "Unique first sentence here. " + "Yes, " * 20], 1
    ).queries == ["Unique first sentence here."]
