"""Verified answers -> the rows a student trains on: select, then deduplicate, then decontaminate.

The order matters and is fixed: selection first (a duplicate of a wrong answer should not cost a right one
its place), deduplication next (near copies of one right answer add no knowledge), decontamination last
(so its count says how many otherwise-kept rows the evaluation would have leaked). Each step's
`FilterCounts` goes to the report, so a reader sees where the training set went.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kdistill.curate.counts import FilterCounts


@dataclass(frozen=True)
class CuratedRows:
    rows: list[dict[str, Any]]
    counts: list[FilterCounts]  # one per filter that ran, in order
    prompts_without_answer: list[str]

    def table(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.counts]


def with_verdicts(rows: Sequence[Mapping[str, Any]], records: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The generation rows that have a verdict, each with `ok`, `reason` and `extracted` added (and `prompt`
    as the question text, which the filters read)."""
    from kdistill.verify.run import prompt_question

    out = []
    for row in rows:
        record = records.get(str(row["record_id"]))
        if record is None:
            continue
        out.append(
            {
                **row,
                "ok": record.ok,
                "reason": record.reason,
                "extracted": record.extracted,
                "question": prompt_question(row),
            }
        )
    return out


def curate(
    rows: Sequence[dict[str, Any]],
    cfg: Any,
    *,
    eval_texts: Iterable[str] = (),
    keep: str | None = None,
) -> CuratedRows:
    """`rows` (with verdicts: `with_verdicts`) through the `verify:` section's select, dedup and
    decontaminate settings; `keep` overrides `cfg.select.keep` (a run's unfiltered comparison arm)."""
    from kdistill.curate.decontaminate import decontaminate
    from kdistill.curate.dedup import drop_duplicates
    from kdistill.curate.select import select_answers

    s = cfg.select
    selected = select_answers(rows, keep=keep or s.keep, max_per_prompt=s.max_per_prompt, seed=s.seed)
    counts = [selected.counts]
    kept = selected.rows
    if cfg.dedup.enabled:
        deduped = drop_duplicates(
            kept,
            field="completion",
            near=cfg.dedup.near,
            threshold=cfg.dedup.threshold,
            within_prompt=cfg.dedup.within_prompt,
        )
        counts.append(deduped.counts)
        kept = deduped.rows
    texts = list(eval_texts)
    if cfg.decontaminate.enabled and texts:
        clean = decontaminate(kept, texts, n=cfg.decontaminate.n, field=tuple(cfg.decontaminate.fields))
        counts.append(clean.counts)
        kept = clean.rows
    return CuratedRows(kept, counts, selected.prompts_without_answer)
