"""Knowledge recovery on plain text (Minitron, Muralidharan et al. 2024): before a pruned student learns the
teacher's answers, it learns the teacher's next-token distributions on ordinary text.

Why: a few hundred answers cannot rebuild what pruning removed; the student then learns to imitate their
surface and its own answers loop. The teacher's forward pass over text is more than ten times cheaper per
token than generating answers, so text buys many more teacher-labelled tokens for the same minutes.

The text (`student.recover.text`): Python's reference manual and stdlib docstrings (`python_docs`, built into
every CPython, kdistill.encoders.python_docs), or a .jsonl file of {id, text}, or a .txt file. Every text is
tokenized with the teacher's tokenizer, followed by EOS, packed into chunks of `chunk_length` tokens; a seeded
sample of whole chunks up to `max_tokens` is kept. The teacher's top-k log-probs over the chunks are captured
once into the content-addressed signal cache (kdistill.lm.capture, shared by every run with the same teacher,
text and k); the student trains on every position with the chosen divergence (forward KL by default) in one
resumable job (`jobs/recover`, run by kdistill.lm.recipe.recover_on_text), saved to `student_recovered/`.
Every arm of the run starts from it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdistill.lm.config import LMDistillConfig, LMRecoverConfig

__all__ = ["BUILTIN_TEXT", "pack_chunks", "recovery_objective_config", "recovery_texts"]

BUILTIN_TEXT = "python_docs"


def recovery_texts(text: str) -> list[dict[str, Any]]:
    """Rows {"id", "text"} of `student.recover.text`; a missing or unreadable source is named."""
    from kdistill.lm.capture import read_text_rows

    if text == BUILTIN_TEXT:
        from kdistill.encoders.python_docs import python_docs_paragraphs

        return [{"id": f"{BUILTIN_TEXT}/{i}", "text": p} for i, p in enumerate(python_docs_paragraphs())]
    path = Path(text)
    if not path.is_file():
        raise ValueError(
            f"student.recover.text: {text!r} is neither {BUILTIN_TEXT!r} nor a file (expected a .jsonl of "
            "{id, text} objects or a .txt file)"
        )
    if path.suffix == ".jsonl":
        rows = read_text_rows(path)
        for n, row in enumerate(rows, 1):
            if not isinstance(row.get("text"), str):
                raise ValueError(f"{path}: row {n}: expected a string 'text', got keys {sorted(row)}")
        return [{"id": str(row.get("id", n)), "text": row["text"]} for n, row in enumerate(rows, 1)]
    if path.suffix == ".txt":
        try:
            return [{"id": path.name, "text": path.read_text(encoding="utf-8")}]
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    raise ValueError(
        f"student.recover.text: {path}: expected a .jsonl or .txt file, got {path.suffix or 'no suffix'!r}"
    )


def pack_chunks(
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    chunk_length: int,
    max_tokens: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Examples {"input_ids", "labels", "record_id"}: every text's tokens then EOS, packed end to end and cut
    into chunks of `chunk_length` (a last shorter chunk of >= 2 tokens kept); a seeded sample of whole chunks,
    as many as fit in `max_tokens` (at least one). Record ids name the chunk's place in the packed stream, so
    the same text, tokenizer and length give the same ids whatever the sample."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the teacher's tokenizer has no EOS token to separate packed texts")
    stream: list[int] = []
    for row in rows:
        stream.extend(tokenizer(row["text"], add_special_tokens=False)["input_ids"])
        stream.append(eos)
    chunks = [stream[i : i + chunk_length] for i in range(0, len(stream), chunk_length)]
    chunks = [c for c in chunks if len(c) >= 2]
    if not chunks:
        raise ValueError("student.recover.text: the text has fewer than 2 tokens")
    order = list(range(len(chunks)))
    random.Random(seed).shuffle(order)
    kept: list[int] = []
    tokens = 0
    for index in order:
        if kept and tokens + len(chunks[index]) > max_tokens:
            break
        kept.append(index)
        tokens += len(chunks[index])
    return [
        {"input_ids": chunks[i], "labels": list(chunks[i]), "record_id": f"text-{chunk_length}-{i}"}
        for i in sorted(kept)
    ]


def recovery_objective_config(cfg: LMRecoverConfig) -> LMDistillConfig:
    """The token-distillation knobs of the recovery phase: the divergence alone, on the cached top-k, T = 1."""
    return LMDistillConfig(signal="cached", top_k=cfg.top_k, divergence=cfg.divergence, kd_weight=1.0)
