"""The `verify:` stage of a `task: lm` run: the teacher's answers are verified, its pass@k measured, the
right ones selected and cleaned, and each student's training rows built (rationale, answer or both).

    teacher answers (n samples per prompt) --verify_rows--> verdicts (run_dir/verdicts, exactly once)
        train prompts --curate--> kept answers --rationale.training_rows--> one training set per data arm
        held-out prompts --> the teacher's pass@k, and one prompt row each for the students' accuracy

Data arms: the run's student trains on the verified answers in `verify.train_on` form; each name in
`verify.compare_with` adds a student from the same start and for the same steps: `unfiltered` (every
answer, right or wrong: plain data distillation), or `rationale` / `answer` / `multitask` (the verified
answers in that form). Students are scored on the held-out problems by the same verifiers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASS_AT = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class DataArm:
    name: str  # "verified" (the run's student), or a compare_with entry
    label: str
    train_on: str
    rows: list[dict[str, Any]]
    filters: list[dict[str, Any]]


@dataclass
class ReasoningData:
    arms: list[DataArm]  # the run's student first
    eval_prompts: list[dict[str, Any]]  # one row per held-out prompt (its first sample)
    references: dict[str, dict[str, Any]]
    checks: list[tuple[Any, Any]]
    require: str
    teacher: dict[str, Any] = field(default_factory=dict)  # pass@k on train and held-out problems
    verification: dict[str, Any] = field(default_factory=dict)

    def arm(self, name: str) -> DataArm:
        return next(a for a in self.arms if a.name == name)


def arm_label(name: str, train_on: str) -> str:
    if name == "unfiltered":
        return f"student (all answers, {train_on})"
    return f"student (verified, {train_on})"


def verified_data(
    cfg: Any,
    train_rows: Sequence[dict[str, Any]],
    eval_rows: Sequence[dict[str, Any]],
    *,
    prompts_file: Path,
    verdicts_dir: Path,
    progress: Any = None,
) -> ReasoningData:
    """Verify every answer (train and held-out), then build each data arm's training rows (module docstring).

    `cfg` is the run's `verify:` section; `prompts_file` holds the references."""
    from kdistill.curate.pipeline import curate, with_verdicts
    from kdistill.generate.prompts import load_prompts
    from kdistill.lm.rationale import training_rows
    from kdistill.verify.run import prompt_question, verify_rows

    references = {p.id: p.extra for p in load_prompts(prompts_file, columns=cfg.columns())}
    checks = cfg.checks()
    rows = [*train_rows, *eval_rows]
    result = verify_rows(
        rows,
        references,
        checks,
        verdicts_dir,
        require=cfg.require,
        concurrency=cfg.concurrency,
        progress=progress,
    )
    if result.failures:
        first = result.failures[0]
        raise RuntimeError(
            f"{len(result.failures)} answers could not be verified (e.g. {first['record_id']}, "
            f"{first['verifier']}: {first['error']}); the verdicts so far are kept: rerun the same command"
        )
    train_ids = sorted({str(r["prompt_id"]) for r in train_rows})
    held_ids = sorted({str(r["prompt_id"]) for r in eval_rows})
    teacher = {
        "train": _pass_at(result, train_ids),
        "held_out": _pass_at(result, held_ids),
    }
    eval_prompts = first_sample_per_prompt(eval_rows)
    eval_texts = [prompt_question(r) for r in eval_prompts]
    annotated = with_verdicts(train_rows, result.records)

    def arm(name: str, train_on: str, keep: str | None) -> DataArm:
        curated = curate(annotated, cfg, eval_texts=eval_texts, keep=keep)
        return DataArm(
            name,
            arm_label(name, train_on),
            train_on,
            training_rows(curated.rows, train_on),
            curated.table(),
        )

    arms = [arm("verified", cfg.train_on, None)]
    for name in cfg.compare_with:
        if name == "unfiltered":
            arms.append(arm(name, cfg.train_on, "all"))
        else:
            arms.append(arm(name, name, None))
    if not arms[0].rows:
        raise RuntimeError(
            "no training answer is left after verification and filtering "
            f"({arms[0].filters}): the teacher solved none of the training problems"
        )
    summary = result.to_dict()
    summary.pop("failures", None)
    return ReasoningData(arms, eval_prompts, references, checks, cfg.require, teacher, summary)


def _pass_at(result: Any, prompts: list[str]) -> dict[str, Any]:
    per_prompt = result.per_prompt()
    n_c = [per_prompt[p] for p in prompts if p in per_prompt]
    samples = min((n for n, _ in n_c), default=0)
    out: dict[str, Any] = {
        "problems": len(n_c),
        "answers": sum(n for n, _ in n_c),
        "accepted": sum(c for _, c in n_c),
    }
    for k in PASS_AT:
        if k <= samples:
            out[f"pass@{k}"] = result.pass_at(k, prompts)
    return out


def first_sample_per_prompt(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per prompt, the lowest sample index, in prompt order of first appearance."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        pid = str(row["prompt_id"])
        if pid not in best or row["sample_index"] < best[pid]["sample_index"]:
            best[pid] = dict(row)
    return list(best.values())


def verified_accuracy(data: ReasoningData, answers: Sequence[str]) -> dict[str, Any]:
    """The held-out problems answered (`answers`, one per `data.eval_prompts` row) as the verifiers judge."""
    from kdistill.verify.run import prompt_question

    if len(answers) != len(data.eval_prompts):
        raise ValueError(f"{len(answers)} answers for {len(data.eval_prompts)} held-out problems")
    built = [(spec.name, spec.build(options)) for spec, options in data.checks]
    correct = 0
    reasons: Counter = Counter()
    for row, answer in zip(data.eval_prompts, answers, strict=True):
        prompt_row = {"prompt": prompt_question(row), **data.references[str(row["prompt_id"])]}
        verdicts = [(name, check(answer, prompt_row)) for name, check in built]
        oks = [v.ok for _, v in verdicts]
        ok = all(oks) if data.require == "all" else any(oks)
        correct += ok
        for name, v in verdicts:
            reasons[f"{name}:{v.reason}"] += 1
    n = len(answers)
    return {
        "accuracy": correct / n if n else float("nan"),
        "correct": correct,
        "problems": n,
        "reasons": dict(reasons),
    }
