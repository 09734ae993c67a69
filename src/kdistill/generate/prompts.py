"""Prompt files -> a list of `Prompt`s, the input of `kdistill generate`.

Accepted sources (chosen by suffix, or a directory):

- **JSONL** (`.jsonl`, `.ndjson`): one object per line, `{"id": ..., "prompt": "..."}` or
  `{"id": ..., "messages": [{"role": "user", "content": "..."}, ...]}`. Blank lines are skipped.
- **CSV** (`.csv`): a header row with a `prompt` column (or a `messages` column holding the JSON list),
  optionally an `id` column.
- **Parquet** (`.parquet`): columns `prompt` (string) or `messages` (list of {role, content}), optional `id`.
- **A Hugging Face dataset directory** written by `Dataset.save_to_disk`, same columns. A `DatasetDict`
  directory must be narrowed to one split (`DIR/train`).

Other columns (a reference `answer`, `tests`, ...) are read only when asked for: `load_prompts(path,
columns=("answer",))` puts them in each prompt's `extra` (not part of the prompt's identity: editing a
reference never asks the teacher again), and a prompt that lacks one is an error naming its line or row.

`id` is optional: without it the JSONL line number (1-based, counting blank lines) or the 1-based row
number (CSV, Parquet, dataset) stands in. Give explicit ids if you may reorder or edit the file later: the
id is part of every generated row's record id, so a renumbered prompt counts as a new one. Ids must be
unique; the same prompt *text* under two ids is legitimate and generated twice (two records). Other keys
or columns are ignored. Every error names the file, the line or row, and what was expected.

A prompt that is empty or only whitespace (or a chat whose last message is) is an error, not skipped: a
server answers it anyway (with whatever it makes of nothing), and skipping it silently would leave a hole
in the data set that nobody asked for.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MESSAGE_KEYS = ("role", "content")


class PromptFileError(ValueError):
    """A prompt file that cannot be read; the message names the file and the line or row."""


@dataclass(frozen=True)
class Prompt:
    """One prompt: either plain text (`prompt`) or a chat (`messages`), never both."""

    id: str
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    where: str = ""  # "file:line 3", for error messages
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # the asked-for columns

    def canonical(self) -> str:
        """The prompt as canonical JSON: what the record id hashes (key order and spacing fixed)."""
        body: dict[str, Any] = (
            {"prompt": self.prompt} if self.messages is None else {"messages": list(self.messages)}
        )
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def as_messages(self) -> list[dict[str, str]]:
        """Chat form: the messages, or the plain prompt as one user message."""
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]


def load_prompts(path: str | Path, *, columns: Sequence[str] = ()) -> list[Prompt]:
    """Read a prompt file or dataset directory (see the module docstring) into validated `Prompt`s, with
    the other `columns` asked for in each one's `extra` (every prompt must have them)."""
    path = Path(path)
    if not path.exists():
        raise PromptFileError(f"{path}: no such file or directory")
    if path.is_dir():
        records = _dataset_rows(path, columns)
        unit = "row"
    else:
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            records, unit = _jsonl_rows(path), "line"
        elif suffix == ".csv":
            records, unit = _csv_rows(path, columns), "row"
        elif suffix == ".parquet":
            records, unit = _parquet_rows(path, columns), "row"
        else:
            raise PromptFileError(
                f"{path}: unsupported prompt file type {suffix or '(no suffix)'!r}; "
                "expected .jsonl, .csv, .parquet or a dataset directory (save_to_disk)"
            )
    prompts: list[Prompt] = []
    first_seen: dict[str, str] = {}
    for number, record in records:
        where = f"{path}: {unit} {number}"
        prompt = _to_prompt(record, number, where)
        if columns:
            prompt = replace(prompt, extra=_extra_columns(record, columns, where))
        if prompt.id in first_seen:
            raise PromptFileError(
                f"{where}: duplicate id {prompt.id!r} (first at {first_seen[prompt.id]}); ids must be unique"
            )
        first_seen[prompt.id] = f"{unit} {number}"
        prompts.append(prompt)
    if not prompts:
        raise PromptFileError(f"{path}: no prompts found")
    return prompts


def _to_prompt(record: Any, number: int, where: str) -> Prompt:
    if not isinstance(record, dict):
        raise PromptFileError(
            f"{where}: expected an object with 'prompt' or 'messages', got {type(record).__name__}"
        )
    raw_id = record.get("id")
    if raw_id is None:
        prompt_id = str(number)
    elif isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise PromptFileError(f"{where}: 'id' must be a string or an integer, got {raw_id!r}")
    else:
        prompt_id = str(raw_id)
        if not prompt_id:
            raise PromptFileError(f"{where}: 'id' is empty")
    text, messages = record.get("prompt"), record.get("messages")
    if (text is None) == (messages is None):
        both = "both" if text is not None else "neither"
        raise PromptFileError(
            f"{where}: expected exactly one of 'prompt' (a string) or 'messages' (a list of "
            f"{{role, content}}), got {both}"
        )
    if text is not None:
        if not isinstance(text, str) or not text:
            raise PromptFileError(f"{where}: 'prompt' must be a non-empty string, got {text!r:.60}")
        if not text.strip():
            raise PromptFileError(
                f"{where}: 'prompt' is only whitespace ({text!r:.20}); expected text for the teacher to answer"
            )
        return Prompt(id=prompt_id, prompt=text, where=where)
    checked = _check_messages(messages, where)
    if not checked[-1]["content"].strip():
        raise PromptFileError(
            f"{where}: messages[{len(checked) - 1}] (the last message) has no text, only "
            f"{checked[-1]['content']!r:.20}; expected text for the teacher to answer"
        )
    return Prompt(id=prompt_id, messages=checked, where=where)


def _extra_columns(record: dict[str, Any], columns: Sequence[str], where: str) -> dict[str, Any]:
    missing = [c for c in columns if record.get(c) is None]
    if missing:
        raise PromptFileError(
            f"{where}: no {', '.join(repr(c) for c in missing)} (expected a value in every row: "
            f"{', '.join(columns)}; the verifiers read them)"
        )
    return {c: record[c] for c in columns}


def _check_messages(messages: Any, where: str) -> tuple[dict[str, str], ...]:
    if isinstance(messages, str):  # CSV cells hold the list as JSON
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{where}: 'messages' is not valid JSON ({err.msg})") from None
    if not isinstance(messages, list) or not messages:
        raise PromptFileError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    checked = []
    for i, message in enumerate(messages):
        ok = (
            isinstance(message, dict)
            and set(message) == set(MESSAGE_KEYS)
            and all(isinstance(message[k], str) for k in MESSAGE_KEYS)
            and message["role"]
        )
        if not ok:
            raise PromptFileError(
                f'{where}: messages[{i}] must be {{"role": str, "content": str}}, got {message!r:.80}'
            )
        checked.append({"role": message["role"], "content": message["content"]})
    return tuple(checked)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PromptFileError(f"{path}: line {number}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                # without its line break, so that an error at the line's end is placed there (the break
                # would put it at column 1 of a "line 2" of this one line)
                yield number, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                at_end = ", the end of the line" if err.pos >= len(err.doc.rstrip()) else ""
                raise PromptFileError(
                    f"{path}: line {number}: invalid JSON ({err.msg} at column {err.colno}{at_end}); "
                    "expected one object per line"
                ) from None


def _csv_rows(path: Path, extra: Sequence[str] = ()) -> Iterator[tuple[int, Any]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "prompt" not in columns and "messages" not in columns:
                raise PromptFileError(
                    f"{path}: row 0 (header): expected a 'prompt' or 'messages' column, got {columns}"
                )
            for number, row in enumerate(reader, start=1):
                # an empty cell means "no value", so a file may mix prompt and messages rows
                yield (
                    number,
                    {k: (v if v != "" else None) for k, v in row.items() if k in _COLUMNS or k in extra},
                )
    except UnicodeDecodeError:
        raise PromptFileError(f"{path}: not valid UTF-8") from None
    except csv.Error as err:
        raise PromptFileError(f"{path}: invalid CSV ({err})") from None


_COLUMNS = ("id", "prompt", "messages")


def _table_rows(source: str, table: Any, extra: Sequence[str] = ()) -> Iterator[tuple[int, Any]]:
    columns = list(table.column_names)
    if "prompt" not in columns and "messages" not in columns:
        raise PromptFileError(f"{source}: expected a 'prompt' or 'messages' column, got {columns}")
    table = table.select([c for c in columns if c in _COLUMNS or c in extra])
    number = 0
    for batch in table.to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def _parquet_rows(path: Path, extra: Sequence[str] = ()) -> Iterable[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise PromptFileError(f"{path}: not a readable Parquet file ({err})") from None
    return _table_rows(str(path), table, extra)


def _dataset_rows(path: Path, extra: Sequence[str] = ()) -> Iterable[tuple[int, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise PromptFileError(
            f"{path}: not a Hugging Face dataset directory written by save_to_disk ({err})"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = ", ".join(loaded)
        raise PromptFileError(
            f"{path}: a DatasetDict with splits [{splits}]; point at one split, e.g. {path / next(iter(loaded))}"
        )
    return _table_rows(str(path), loaded.data.table, extra)
