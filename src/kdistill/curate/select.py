"""Which verified teacher answers the student trains on.

A prompt has several teacher samples, each verified (`ok`) and perhaps scored (`score`, e.g. by a judge).
`select_answers` keeps, per policy:

- ``"all_correct"``: every verified sample (rejection sampling, as in STaR / RFT);
- ``"best_of_n"``: one sample per prompt, the verified one with the highest score; a scored sample beats
  an unscored one, and ties (or no scores at all) go to the lowest `sample_index`, then to the earlier row;
  a prompt with no verified sample keeps nothing;
- ``"all"``: everything, verified or not (the unfiltered baseline a curated run is compared with).

`max_per_prompt` then caps the kept samples of each prompt at a seeded random subset. Each candidate gets
the key sha256(seed, prompt_id, sample_index) and the smallest keys stay, so which samples a prompt keeps
depends neither on the order of the rows nor on which other prompts are in the set, and a larger cap
keeps a superset of a smaller one. Taking the lowest sample indices instead would tie every prompt to
the same few generation seeds.

Kept rows come back in input order; the rows themselves are not copied or changed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from kdistill.curate.counts import FilterCounts

KeepPolicy = Literal["all_correct", "best_of_n", "all"]
KEEP_POLICIES: tuple[str, ...] = ("all_correct", "best_of_n", "all")


@dataclass(frozen=True)
class SelectionResult:
    """The kept rows, what was dropped and why (`counts.reasons`), and the prompts left with no answer."""

    rows: list[dict[str, Any]]
    counts: FilterCounts
    prompts_without_answer: list[str]


def _check_row(index: int, row: Any, needs_verdict: bool) -> None:
    def fail(name: str, expected: str) -> NoReturn:
        raise ValueError(f"row {index}: field {name!r} must be {expected}, got {row.get(name)!r}")

    if not isinstance(row, Mapping):
        raise ValueError(f"row {index}: expected a dict, got {type(row).__name__}")
    if not isinstance(row.get("prompt_id"), str):
        fail("prompt_id", "a string")
    sample_index = row.get("sample_index")
    if isinstance(sample_index, bool) or not isinstance(sample_index, int):
        fail("sample_index", "an int")
    if needs_verdict:
        if not isinstance(row.get("ok"), bool):
            fail("ok", "a bool (the verdict)")
        score = row.get("score")
        if score is not None and (
            isinstance(score, bool) or not isinstance(score, int | float) or math.isnan(score)
        ):
            fail("score", "a number or None")


def _best_key(position: int, row: Mapping[str, Any]) -> tuple[bool, float, int, int]:
    """Sort key whose maximum is the best-of-n answer: scored first, highest score, lowest index, earliest row."""
    score = row.get("score")
    return (score is not None, score if score is not None else 0.0, -row["sample_index"], -position)


def _cap_key(seed: int, prompt_id: str, sample_index: int, position: int) -> tuple[bytes, int]:
    """A seeded pseudo-random rank that depends only on this sample (duplicates: the earlier row first)."""
    digest = hashlib.sha256(f"{seed}\0{prompt_id}\0{sample_index}".encode()).digest()
    return (digest, position)


def select_answers(
    rows: Sequence[dict[str, Any]],
    *,
    keep: KeepPolicy = "all_correct",
    max_per_prompt: int | None = None,
    seed: int = 0,
) -> SelectionResult:
    """Keep the answers a student should train on (policies and the cap: see the module docstring)."""
    if keep not in KEEP_POLICIES:
        raise ValueError(f"unknown keep policy {keep!r}; expected one of {', '.join(KEEP_POLICIES)}")
    if max_per_prompt is not None and (
        isinstance(max_per_prompt, bool) or not isinstance(max_per_prompt, int) or max_per_prompt < 1
    ):
        raise ValueError(f"max_per_prompt must be a positive int or None, got {max_per_prompt!r}")
    for index, row in enumerate(rows):
        _check_row(index, row, needs_verdict=keep != "all")

    reasons: dict[str, int] = {}
    prompt_order = list(dict.fromkeys(row["prompt_id"] for row in rows))
    if keep == "all":
        kept = list(range(len(rows)))
    else:
        verified = [i for i, row in enumerate(rows) if row["ok"]]
        reasons["not_verified"] = len(rows) - len(verified)
        kept = verified
        if keep == "best_of_n":
            best: dict[str, int] = {}
            for i in verified:
                pid = rows[i]["prompt_id"]
                if pid not in best or _best_key(i, rows[i]) > _best_key(best[pid], rows[best[pid]]):
                    best[pid] = i
            kept = sorted(best.values())
            reasons["not_best_of_n"] = len(verified) - len(kept)

    if max_per_prompt is not None:
        by_prompt: dict[str, list[int]] = {}
        for i in kept:
            by_prompt.setdefault(rows[i]["prompt_id"], []).append(i)
        capped = []
        for pid, positions in by_prompt.items():
            positions.sort(key=lambda i, pid=pid: _cap_key(seed, pid, rows[i]["sample_index"], i))
            capped += positions[:max_per_prompt]
        reasons["over_max_per_prompt"] = len(kept) - len(capped)
        kept = sorted(capped)

    kept_prompts = {rows[i]["prompt_id"] for i in kept}
    return SelectionResult(
        rows=[rows[i] for i in kept],
        counts=FilterCounts.from_reasons(f"select:{keep}", len(rows), reasons),
        prompts_without_answer=[pid for pid in prompt_order if pid not in kept_prompts],
    )
