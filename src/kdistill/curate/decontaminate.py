"""Removing training rows that overlap an evaluation set, so that a score measures skill, not recall.

The test is GPT-3's (Brown et al. 2020, appendix C): a training text is contaminated when it shares any
word n-gram (n = 13 by default) with any evaluation text. Words are the maximal runs of letters and
digits of the casefolded text; everything else (punctuation, symbols, whitespace, underscores) only
separates words, so "The cat, sat." and "the CAT sat" are the same three words. An evaluation text of
fewer than n words (but at least one) counts by its whole word sequence: a training text containing all
of its words, contiguously and in order, is contaminated. A very short evaluation text ("Paris", "4")
therefore removes every row that mentions it; pass evaluation *questions*, not bare answers. A training
text shorter than n words can only match such short evaluation texts.

Each of the `field`s of a row is tested on its own (an n-gram spanning the end of the prompt and the start
of the completion is an artefact of joining them, not a leak); a row is removed when any field overlaps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kdistill.curate.counts import FilterCounts

_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script


@dataclass(frozen=True)
class Overlap:
    """One removed row: the field and the eval text it overlaps, and the shared words."""

    record_id: str
    field: str
    eval_index: int
    ngram: str


@dataclass(frozen=True)
class DecontaminationResult:
    """Kept rows (input order); `counts.reasons == {"eval_overlap": k}`; a few `examples` of removed rows;
    `rows_per_eval_item`: eval index -> how many removed rows overlap it (an n-gram occurring in several
    eval texts is attributed to the first of them)."""

    rows: list[dict[str, Any]]
    counts: FilterCounts
    examples: list[Overlap]
    rows_per_eval_item: dict[int, int]


def words(text: str) -> list[str]:
    """The casefolded words of `text`, punctuation and symbols stripped (the tokenisation of the filter)."""
    return _WORD.findall(text.casefold())


def decontaminate(
    rows: Sequence[dict[str, Any]],
    eval_texts: Iterable[str],
    *,
    n: int = 13,
    field: str | Sequence[str] = ("prompt", "completion"),
    max_examples: int = 5,
) -> DecontaminationResult:
    """Drop the rows any of whose `field`s shares a word n-gram with an evaluation text (module docstring)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (words per n-gram), got {n!r}")
    if isinstance(eval_texts, str):
        raise ValueError("eval_texts must be a collection of strings, not one string")
    fields = (field,) if isinstance(field, str) else tuple(field)
    if not fields:
        raise ValueError("field must name at least one row field to test")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 0:
        raise ValueError(f"max_examples must be a non-negative int, got {max_examples!r}")

    # gram (tuple of words) -> index of the first eval text holding it; short eval texts give one gram each
    first_eval: dict[tuple[str, ...], int] = {}
    gram_lengths = {n}
    for e, text in enumerate(eval_texts):
        if not isinstance(text, str):
            raise ValueError(f"eval_texts[{e}] must be a string, got {type(text).__name__}")
        tokens = words(text)
        if 0 < len(tokens) < n:
            gram_lengths.add(len(tokens))
            first_eval.setdefault(tuple(tokens), e)
        for i in range(len(tokens) - n + 1):
            first_eval.setdefault(tuple(tokens[i : i + n]), e)

    kept: list[dict[str, Any]] = []
    examples: list[Overlap] = []
    rows_per_eval_item: dict[int, int] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"row {index}: expected a dict, got {type(row).__name__}")
        hits: dict[int, Overlap] = {}  # eval index -> first overlap with it
        for name in ("record_id", *fields):
            if not isinstance(row.get(name), str):
                raise ValueError(f"row {index}: field {name!r} must be a string, got {row.get(name)!r}")
        for name in fields:
            tokens = words(row[name])
            for length in sorted(gram_lengths, reverse=True):
                for i in range(len(tokens) - length + 1):
                    e = first_eval.get(tuple(tokens[i : i + length]))
                    if e is not None and e not in hits:
                        gram = " ".join(tokens[i : i + length])
                        hits[e] = Overlap(row["record_id"], name, e, gram)
        if not hits:
            kept.append(row)
            continue
        for e in hits:
            rows_per_eval_item[e] = rows_per_eval_item.get(e, 0) + 1
        if len(examples) < max_examples:
            examples.append(min(hits.values(), key=lambda o: o.eval_index))

    return DecontaminationResult(
        rows=kept,
        counts=FilterCounts.from_reasons("decontaminate", len(rows), {"eval_overlap": len(rows) - len(kept)}),
        examples=examples,
        rows_per_eval_item=dict(sorted(rows_per_eval_item.items())),
    )
