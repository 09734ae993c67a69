"""Does a model's own text read well? Repetition and diversity of generated answers.

Agreement and perplexity on the teacher's answers score a student on the teacher's text; a student can do
well there and still loop when it writes its own ("The documentation provides X." ten times over). These
read the answers a model generated, in words (whitespace-split, so models with different tokenizers are
measured alike):

    repeated_ngram_rate   per answer, the share of its n-grams that already occurred earlier in the same
                          answer, 1 - distinct / total (Welleck et al. 2019's seq-rep-n); mean over answers
    distinct_n            over all answers pooled, distinct n-grams / n-grams (Li et al. 2016's distinct-n):
                          low when every answer says the same thing
    hit_max_tokens        the share of answers that used every allowed new token without ending (no EOS):
                          a looping answer runs until it is cut

An answer shorter than n words has no n-grams: it counts as 0 repetition (nothing repeated) and adds nothing
to distinct-n. When no answer has n words (a model that writes only whitespace) the repetition is None, not
0: there is nothing to judge, and 0 would read as perfect. `degeneration` gives all of them; compare a student's with its teacher's, not with 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["degeneration", "distinct_n", "ngrams", "repeated_ngram_rate"]


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def repeated_ngram_rate(text: str, n: int = 4) -> float:
    """1 - distinct n-grams / n-grams of one text's words; 0 for a text of fewer than n words."""
    grams = ngrams(text.split(), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct n-grams / n-grams over all texts pooled; None when no text has n words."""
    grams = [g for text in texts for g in ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else None


def degeneration(texts: Sequence[str], hit_limit: Sequence[bool], *, n: int = 4) -> dict[str, Any]:
    """Repetition (mean repeated n-gram rate), distinct-1/2 and the share of answers cut at the token limit."""
    if len(texts) != len(hit_limit):
        raise ValueError(f"{len(texts)} answers but {len(hit_limit)} hit_limit flags")
    if not texts:
        raise ValueError("no answers to measure")
    judged = any(len(t.split()) >= n for t in texts)
    return {
        f"repeated_{n}gram_rate": sum(repeated_ngram_rate(t, n) for t in texts) / len(texts)
        if judged
        else None,
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "hit_max_tokens": sum(map(bool, hit_limit)) / len(texts),
        "mean_words": sum(len(t.split()) for t in texts) / len(texts),
    }
