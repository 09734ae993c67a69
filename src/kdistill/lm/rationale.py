"""What a student learns from a verified reasoning answer: the rationale with the answer, the answer alone,
or both as two tasks (distilling step-by-step, Hsieh et al. 2023).

- `rationale`: the teacher's whole answer (its reasoning, then its final answer) is the target;
- `answer`: the target is only `Answer: <the verified final answer>` (what the verifier extracted);
- `multitask`: each answer gives two rows, the prompt prefixed with a task tag: `[answer]` -> the final
  answer, `[rationale]` -> the whole answer. At inference the student is asked with `[answer]` (the
  paper's choice: the rationale task shapes the representation, the answer task is what is served, so
  the served student writes no rationale and is faster).

Rows are generation rows (`prompt` or `messages`, `completion`, `record_id`, ...); only the prompt text and
the completion change, and a multitask row's record id gets `#answer` / `#rationale`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TRAIN_ON = ("rationale", "answer", "multitask")
TASK_TAGS = {"answer": "[answer] ", "rationale": "[rationale] "}


def answer_target(extracted: str) -> str:
    """The target of the answer task: the final answer in the form the verifier reads first."""
    return f"Answer: {extracted}"


def with_task_tag(row: Mapping[str, Any], task: str) -> dict[str, Any]:
    """`row` with its prompt (or its chat's last user message) prefixed by the task's tag."""
    tag = TASK_TAGS[task]
    out = dict(row)
    if row.get("messages") is not None:
        messages = [dict(m) for m in row["messages"]]
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last_user]["content"] = tag + messages[last_user]["content"]
        out["messages"] = messages
    else:
        out["prompt"] = tag + str(row["prompt"])
    return out


def training_rows(rows: Sequence[Mapping[str, Any]], train_on: str) -> list[dict[str, Any]]:
    """The training rows of `train_on` (module docstring); `answer` and `multitask` need each row's
    `extracted` final answer (from the answer_match verifier)."""
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    if train_on == "rationale":
        return [dict(r) for r in rows]
    missing = [r["record_id"] for r in rows if not r.get("extracted")]
    if missing:
        raise ValueError(
            f"train_on {train_on!r} needs the verified final answer of every row (an answer_match verifier); "
            f"{len(missing)} rows have none, e.g. {missing[0]}"
        )
    out = []
    for row in rows:
        short = {**row, "completion": answer_target(str(row["extracted"]))}
        if train_on == "answer":
            out.append(short)
            continue
        out.append({**with_task_tag(short, "answer"), "record_id": f"{row['record_id']}#answer"})
        out.append({**with_task_tag(row, "rationale"), "record_id": f"{row['record_id']}#rationale"})
    return out


def inference_rows(rows: Sequence[Mapping[str, Any]], train_on: str) -> list[dict[str, Any]]:
    """The prompts a student trained with `train_on` is asked at evaluation (multitask: the answer task)."""
    if train_on == "multitask":
        return [with_task_tag(r, "answer") for r in rows]
    return [dict(r) for r in rows]
