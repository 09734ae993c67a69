"""Removing duplicate teacher answers, so that the student does not learn one answer many times over.

Two passes, each keeping the first row (in input order) of what it groups together:

1. **Exact**: texts equal after normalisation (casefolded, runs of whitespace collapsed to one space).
2. **Near**: among the rows left, a row is removed when its Jaccard similarity to an earlier *kept* row
   is at least `threshold`. Texts are compared as sets of character `shingle`-grams of the normalised
   text (a text shorter than `shingle` is one shingle). Characters rather than words, because one changed
   word in a 60-word answer changes about word-length + shingle - 1 of its ~350 character shingles
   (Jaccard ~0.94), while with word 5-grams it changes 5 of 56 (Jaccard 0.84, under the usual 0.85);
   characters also need no tokeniser for code or maths. Candidates come from MinHash + LSH
   (`datasketch`), so the pass is near-linear, and each candidate is confirmed with the exact Jaccard of
   the two shingle sets, so a removal never rests on a MinHash estimate. Because false candidates cost
   only that check, the LSH bands favour recall (`LSH_WEIGHTS`): with 128 permutations and threshold
   0.85 a pair at Jaccard 0.85 is found ~87% of the time, at 0.9 ~98%, at 0.95 >99.99% (datasketch's
   balanced default finds only ~46% and ~81% of the first two).

Scope: by default duplicates are removed across the whole set, both within one prompt and across
prompts. Across prompts this also removes short answers that are legitimately shared ("4", "Yes."); use
`within_prompt=True` to compare only samples of the same prompt, or dedupe on ("prompt", "completion").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from datasketch import MinHash, MinHashLSH

from kdistill.curate.counts import FilterCounts

#: (false-positive, false-negative) weights with which datasketch picks the LSH bands: favour recall,
#: since every candidate is confirmed with its exact Jaccard similarity.
LSH_WEIGHTS = (0.1, 0.9)


@dataclass(frozen=True)
class DuplicateMatch:
    """One removed row and the earlier row it duplicates (`matched_id` may itself be removed later as a
    near duplicate of a third row, when the exact pass matched it first)."""

    removed_id: str
    matched_id: str
    kind: Literal["exact", "near"]
    similarity: float  # 1.0 for exact; the exact shingle Jaccard for near


@dataclass(frozen=True)
class DedupResult:
    """The kept rows (input order), `counts.reasons == {"exact": n, "near": m}`, and every match."""

    rows: list[dict[str, Any]]
    counts: FilterCounts
    duplicates: list[DuplicateMatch]


def normalise_text(text: str) -> str:
    """Casefolded, whitespace runs collapsed to one space, trimmed: what 'the same text' means here."""
    return " ".join(text.casefold().split())


def char_shingles(text: str, size: int) -> set[str]:
    """The set of `size`-character substrings of `text`; a shorter non-empty text is its own shingle."""
    if len(text) <= size:
        return {text} if text else set()
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets are identical (1.0)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _texts(rows: Sequence[Any], fields: tuple[str, ...], within_prompt: bool) -> list[str]:
    texts = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"row {index}: expected a dict, got {type(row).__name__}")
        needed = ("record_id", *fields) + (("prompt_id",) if within_prompt else ())
        for name in needed:
            if not isinstance(row.get(name), str):
                raise ValueError(f"row {index}: field {name!r} must be a string, got {row.get(name)!r}")
        texts.append("\n".join(row[name] for name in fields))
    return texts


def drop_duplicates(
    rows: Sequence[dict[str, Any]],
    *,
    field: str | Sequence[str] = "completion",
    near: bool = True,
    threshold: float = 0.85,
    num_perm: int = 128,
    shingle: int = 5,
    seed: int = 1,
    within_prompt: bool = False,
) -> DedupResult:
    """Drop exact, then near, duplicates of `field` (several fields are joined by a newline).

    `threshold` is the shingle Jaccard similarity at or above which two texts are near duplicates;
    `num_perm` and `seed` set the MinHash permutations (more permutations: fewer missed pairs).
    """
    fields = (field,) if isinstance(field, str) else tuple(field)
    if not fields:
        raise ValueError("field must name at least one row field to compare")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    if isinstance(num_perm, bool) or not isinstance(num_perm, int) or num_perm < 2:
        raise ValueError(f"num_perm must be an int >= 2, got {num_perm!r}")
    if isinstance(shingle, bool) or not isinstance(shingle, int) or shingle < 1:
        raise ValueError(f"shingle must be a positive int (characters), got {shingle!r}")
    texts = [normalise_text(t) for t in _texts(rows, fields, within_prompt)]

    def scope(i: int) -> str | None:
        return rows[i]["prompt_id"] if within_prompt else None

    duplicates: list[DuplicateMatch] = []
    first_of: dict[tuple[str | None, str], int] = {}
    survivors = []
    for i, text in enumerate(texts):
        j = first_of.setdefault((scope(i), text), i)
        if j == i:
            survivors.append(i)
        else:
            duplicates.append(DuplicateMatch(rows[i]["record_id"], rows[j]["record_id"], "exact", 1.0))
    exact_removed = len(duplicates)

    kept = survivors
    if near:
        kept = []
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
        for i in survivors:
            shingles = char_shingles(texts[i], shingle)
            signature = MinHash(num_perm=num_perm, seed=seed)
            signature.update_batch([s.encode() for s in shingles])
            best: tuple[float, int] | None = None
            for j in lsh.query(signature):
                if scope(j) != scope(i):
                    continue
                similarity = jaccard(shingles, char_shingles(texts[j], shingle))
                # the most similar earlier kept row; among equals, the earliest
                if similarity >= threshold and (best is None or (similarity, -j) > (best[0], -best[1])):
                    best = (similarity, j)
            if best is None:
                lsh.insert(i, signature)
                kept.append(i)
            else:
                duplicates.append(
                    DuplicateMatch(rows[i]["record_id"], rows[best[1]]["record_id"], "near", best[0])
                )

    return DedupResult(
        rows=[rows[i] for i in kept],
        counts=FilterCounts.from_reasons(
            "dedup", len(rows), {"exact": exact_removed, "near": len(duplicates) - exact_removed}
        ),
        duplicates=duplicates,
    )
