"""Distillation text for encoders: plain-text files, JSONL files or records (a `datasets.Dataset`, dicts).

Every loader returns a dict text id -> text, the input of `cache_teacher_embeddings`. Without an id field a
text's id is its content hash (16 hex of sha256), so identical texts collapse into one and an id names
the same text in every corpus; with `id_field`, ids come from the records and must be unique.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["corpus_from_files", "corpus_from_records", "text_id"]


def text_id(text: str) -> str:
    """The content id of a text: 16 hex of the sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _add(corpus: dict[str, str], text_id_: str | None, text: str, where: str) -> None:
    if text_id_ is None:
        corpus.setdefault(text_id(text), text)
        return
    if text_id_ in corpus:
        raise ValueError(f"{where}: text id {text_id_!r} appears twice; ids must be unique")
    corpus[text_id_] = text


def corpus_from_records(
    records: Iterable[Mapping[str, Any] | str], *, field: str = "text", id_field: str | None = None
) -> dict[str, str]:
    """Texts from records (a `datasets.Dataset` split, dicts, or plain strings); empty texts are skipped."""
    corpus: dict[str, str] = {}
    for n, record in enumerate(records):
        if isinstance(record, str):
            text, rid = record, None
        else:
            if field not in record:
                raise KeyError(f"record {n} has no field {field!r} (fields: {sorted(record)[:8]})")
            text = record[field]
            rid = None if id_field is None else str(record[id_field])
        if not isinstance(text, str):
            raise TypeError(f"record {n}: {field!r} is a {type(text).__name__}, not a str")
        if text.strip():
            _add(corpus, rid, text, f"record {n}")
    return corpus


def corpus_from_files(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    field: str = "text",
    id_field: str | None = None,
) -> dict[str, str]:
    """Texts from `.jsonl` files (one JSON object per line, text in `field`) and any other file read as
    plain text, one text per non-empty line (the line's newline removed, nothing else)."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    corpus: dict[str, str] = {}
    for path in map(Path, paths):
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                if path.suffix == ".jsonl":
                    try:
                        record = json.loads(line)
                    except ValueError as err:
                        raise ValueError(f"{where}: not JSON ({err})") from None
                    part = corpus_from_records([record], field=field, id_field=id_field)
                    for rid, text in part.items():
                        _add(corpus, rid if id_field is not None else None, text, where)
                else:
                    _add(corpus, None, line, where)
    return corpus
