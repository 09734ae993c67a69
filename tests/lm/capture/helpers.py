"""Helpers of the capture tests (importable; fixtures live in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from kdistill.generate.store import GenerationStore

WORDS = "the value of an object is its identity type and contents while names refer to objects".split()


def generation_row(i: int, completion: str, *, logprobs: Any = None, chat: bool = False) -> dict[str, Any]:
    """A row in the generation store's schema (see kdistill.generate.store)."""
    prompt = f"Question {i}: what is item {i}?"
    return {
        "record_id": f"rec-{i:03d}",
        "prompt_id": str(i),
        "sample_index": 0,
        "prompt": None if chat else prompt,
        "messages": [{"role": "user", "content": prompt}] if chat else None,
        "completion": completion,
        "finish_reason": "stop",
        "teacher": json.dumps({"kind": "openai", "model": "scripted"}),
        "sampling": "{}",
        "prompt_tokens": None,
        "completion_tokens": None,
        "logprobs": None if logprobs is None else json.dumps(logprobs),
        "created": "2026-11-23T00:00:00.000Z",
    }


def write_generations(out: Path, n: int, rows: list[dict[str, Any]] | None = None) -> Path:
    """A generations directory holding `rows`, or n rows whose answers have 1 + 2i words."""
    if rows is None:
        rows = [
            generation_row(
                i, " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + 2 * i)), chat=i % 2 == 1
            )
            for i in range(n)
        ]
    store = GenerationStore(out, shard_rows=5)
    store.open()
    store.append_rows(rows)
    store.close()
    return out


def write_config(path: Path, **capture: Any) -> Path:
    path.write_text(yaml.safe_dump({"capture": json.loads(json.dumps(capture, default=str))}))
    return path
