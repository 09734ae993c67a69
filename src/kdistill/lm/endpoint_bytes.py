"""An endpoint's logprobs -> the tokenizer-agnostic teacher signal (layout "bytes"), no tokenizer needed.

`kdistill generate --top-logprobs K` stores per answer token what an OpenAI-compatible server said: its
text, log-probability, its UTF-8 `bytes` (chat logprobs; a token may hold part of a character) and the
top alternatives. Named by bytes, these are already the agnostic rows of `kdistill.lm.byte_signal`:

- a token's bytes are its `bytes` when the server sent them, else the UTF-8 of its text (exact for
  whole characters; a piece of a character has only U+FFFD as text, which is why `bytes` matters);
- spans are the running sum of the chosen tokens' byte lengths. Those bytes must spell the answer; where
  they do not (a server that stripped or rewrote text), the longest prefix of tokens that does is kept,
  the rest counted as mismatched (`ByteEndpointStats`) and noted; a row with no such token is skipped;
- a token with no bytes (an end-of-text or chat marker) covers no text: it gets no row, and as an
  alternative it is the one `special` candidate, whose mass the student counts as the tail;
- the candidate table is every distinct byte string of the directory's chosen tokens and alternatives,
  sorted (the special one first), so it is a pure function of the data, the same on a resumed run;
- a row's top-k: the chosen token and its alternatives, one entry per byte string (the highest
  log-probability kept; non-finite ones dropped), sorted descending, the first k; -1 / -inf pad it.

**Rendering.** The rows say how the teacher's prompt was rendered (`teacher.rendering` in each row's
teacher JSON, see `kdistill.generate.teachers.openai_endpoint`); `rendering_of_rows` returns the one all
rows share, and it is part of the content key, so a signal conditioned on another prompt rendering is
never mistaken for this one.

Resumable like every capture: a rerun after a kill commits only the examples no listed shard holds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdistill.lm.byte_signal import CANDIDATES, ByteRows, CandidateTable
from kdistill.lm.capture import CaptureResult, EndpointStats, Progress
from kdistill.lm.signal_store import (
    ABSENT_ID,
    BYTES,
    FORMAT,
    TeacherSignalWriter,
    data_fingerprint,
    default_signal_dir,
    signal_key,
    store_size_bytes,
)

ROW_FORMAT = (
    '[{"token": str, "logprob": float, "bytes": [int, ...] (optional), '
    '"top": [{"token": str, "logprob": float, "bytes": [int, ...] (optional)}, ...]}, ...]'
)


@dataclass(frozen=True)
class EndpointToken:
    """One answer token as the endpoint scored it: its bytes and log-probability, and the alternatives'."""

    data: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...]


@dataclass
class ByteEndpointStats(EndpointStats):
    """`EndpointStats` of a bytes conversion: `dropped_alternatives` counts those with a non-finite
    log-probability; `cut_tokens` stays 0 (no max_length applies here)."""

    unusable_rows: int = 0  # skipped: not one token spells the start of the answer
    mismatched_rows: int = 0  # rows whose tokens do not spell the whole answer (a prefix kept)
    mismatched_ids: list[str] = field(default_factory=list)  # the first few of those
    special_tokens: int = 0  # chosen tokens without bytes (end of text, markers): no row
    notes: list[str] = field(default_factory=list)  # what a user should hear about


# ---------------------------------------------------------------- reading the rows


def read_entries(raw: Any, record_id: str) -> list[EndpointToken] | None:
    """A row's `logprobs` column (JSON text or the parsed list) -> its tokens; None when it has none.

    Raises ValueError naming the row when it is not in the row format (what `kdistill generate` writes).
    """
    if raw is None:
        return None
    try:
        entries = json.loads(raw) if isinstance(raw, str) else raw
        if entries is not None and not isinstance(entries, list):
            raise TypeError
        tokens = [
            EndpointToken(
                _token_bytes(e),
                _logprob(e),
                tuple((_token_bytes(alt), _logprob(alt)) for alt in e.get("top") or []),
            )
            for e in entries or []
        ]
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(
            f"row {record_id!r}: logprobs are not in the row format {ROW_FORMAT} ({str(err) or type(err).__name__})"
        ) from None
    return tokens or None


def _token_bytes(entry: Mapping[str, Any]) -> bytes:
    if not isinstance(entry["token"], str):
        raise TypeError("a token's text is not a string")
    data = entry.get("bytes")
    if data is None:
        return entry["token"].encode("utf-8")
    if not isinstance(data, list) or not all(type(b) is int and 0 <= b < 256 for b in data):
        raise ValueError(f"bytes {data!r} is not a list of ints 0..255")
    return bytes(data)


def _logprob(entry: Mapping[str, Any]) -> float:
    value = entry["logprob"]
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        raise TypeError(f"logprob {value!r} is not a number")
    return float(value)


def agreeing_prefix(tokens: Sequence[EndpointToken], answer: bytes) -> int:
    """How many leading tokens spell a prefix of `answer` (all of them when their bytes are the answer)."""
    end = 0
    for n, token in enumerate(tokens):
        if answer[end : end + len(token.data)] != token.data:
            return n
        end += len(token.data)
    return len(tokens)


def ranked_entries(token: EndpointToken) -> list[tuple[bytes, float]]:
    """The chosen token and its alternatives, one entry per byte string with its highest finite
    log-probability, sorted by log-probability descending (ties by bytes, for determinism)."""
    best: dict[bytes, float] = {}
    for data, value in ((token.data, token.logprob), *token.top):
        if math.isfinite(value) and value > best.get(data, -math.inf):
            best[data] = value
    return sorted(best.items(), key=lambda item: (-item[1], item[0]))


def candidate_table(tokens: Iterable[EndpointToken]) -> tuple[CandidateTable, dict[bytes, int]]:
    """Every distinct byte string of the tokens and their alternatives, sorted: the table and bytes -> id.

    Empty bytes (a token with no text) are one `special` entry, first."""
    seen: set[bytes] = set()
    for token in tokens:
        seen.add(token.data)
        seen.update(data for data, _ in token.top)
    texts = sorted(seen - {b""})
    entries: list[bytes | None] = ([None] if b"" in seen else []) + list(texts)
    ids = {b"" if entry is None else entry: i for i, entry in enumerate(entries)}
    return CandidateTable(entries), ids


def byte_rows(tokens: Sequence[EndpointToken], ids: Mapping[bytes, int], *, k: int) -> ByteRows:
    """The "bytes"-layout rows of an answer's tokens (already checked to spell it): one row per token
    with bytes, its span the running sum of the byte lengths; `ids` maps bytes to candidate ids."""
    kept = [t for t in tokens if t.data]
    n = len(kept)
    spans = torch.zeros((n, 2), dtype=torch.int32)
    topk_ids = torch.full((n, k), ABSENT_ID, dtype=torch.int32)
    topk_logprobs = torch.full((n, k), -math.inf, dtype=torch.float32)
    start = 0
    for row, token in enumerate(kept):
        spans[row] = torch.tensor([start, start + len(token.data)], dtype=torch.int32)
        start += len(token.data)
        ranked = ranked_entries(token)[:k]
        topk_ids[row, : len(ranked)] = torch.tensor([ids[data] for data, _ in ranked], dtype=torch.int32)
        topk_logprobs[row, : len(ranked)] = torch.tensor([v for _, v in ranked], dtype=torch.float32)
    return ByteRows(
        spans=spans,
        token_ids=torch.tensor([ids[t.data] for t in kept], dtype=torch.int32),
        token_logprobs=torch.tensor([t.logprob for t in kept], dtype=torch.float32),
        topk_ids=topk_ids,
        topk_logprobs=topk_logprobs,
    )


# ---------------------------------------------------------------- rendering


def rendering_of_rows(gen_dir: str | Path) -> dict[str, Any] | None:
    """The prompt rendering every row of a generations directory records (None: rows from before it was
    recorded); ValueError naming two rows when they differ."""
    from kdistill.generate.store import iter_generations

    return shared_rendering(iter_generations(gen_dir))


def shared_rendering(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """`rendering_of_rows` over rows already read."""
    first: tuple[str, Any] | None = None
    for row in rows:
        rendering = _rendering(row)
        if first is None:
            first = (row["record_id"], rendering)
        elif rendering != first[1]:
            raise ValueError(
                f"rows {first[0]!r} and {row['record_id']!r} were rendered differently ({first[1]} vs "
                f"{rendering}): a signal must be conditioned on one prompt rendering; convert them apart"
            )
    return None if first is None else first[1]


def _rendering(row: Mapping[str, Any]) -> Any:
    teacher = row.get("teacher")
    try:
        identity = json.loads(teacher) if isinstance(teacher, str) else teacher
    except ValueError:
        raise ValueError(f"row {row['record_id']!r}: its teacher is not JSON") from None
    return identity.get("rendering") if isinstance(identity, dict) else None


# ---------------------------------------------------------------- the conversion


def signal_bytes_from_generations(
    gen_dir: str | Path,
    store_dir: str | Path | None = None,
    *,
    k: int | None = None,
    shard_examples: int = 256,
    info: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    cache_root: Path | None = None,
) -> CaptureResult:
    """Store the endpoint logprobs of a `kdistill generate` directory as an agnostic signal, by record_id.

    `k` defaults to the widest row (distinct byte strings of chosen token + alternatives). The content key
    hashes the rows' teacher identities, their (record_id, completion, logprobs), k, the candidate table
    and the shared prompt rendering. `store_dir` defaults to `<cache_root>/teacher_signal/<key>/`. A shard
    is committed every `shard_examples` examples; `progress(stored, total)` is called after each.
    """
    from kdistill.generate.store import load_generations

    start = time.perf_counter()
    stats = ByteEndpointStats()
    rows = [dict(r) for r in load_generations(gen_dir)]
    rendering = shared_rendering(rows)
    fingerprinted: list[dict[str, Any]] = []
    examples: list[tuple[str, list[EndpointToken]]] = []  # (record_id, the tokens that spell the answer)
    teachers: set[str] = set()
    for row in rows:
        record_id = str(row["record_id"])
        tokens = read_entries(row.get("logprobs"), record_id)
        if tokens is None:
            stats.rows_without_logprobs += 1
            if len(stats.skipped_ids) < 5:
                stats.skipped_ids.append(record_id)
            continue
        logprobs = row["logprobs"] if isinstance(row["logprobs"], str) else json.dumps(row["logprobs"])
        # the answer's UTF-8 stands in for input_ids: the key follows the text and what the endpoint said
        fingerprinted.append(
            {"record_id": record_id, "input_ids": list(row["completion"].encode()), "logprobs": logprobs}
        )
        teachers.add(str(row.get("teacher")))
        answer = row["completion"].encode("utf-8")
        agree = agreeing_prefix(tokens, answer)
        stats.endpoint_tokens += len(tokens)
        stats.mismatched_tokens += len(tokens) - agree
        kept = tokens[:agree]
        stats.special_tokens += sum(not t.data for t in kept)
        stats.dropped_alternatives += sum(not math.isfinite(v) for t in kept for _, v in t.top)
        spelled = sum(len(t.data) for t in kept)
        if spelled != len(answer):
            stats.mismatched_rows += 1
            if len(stats.mismatched_ids) < 5:
                stats.mismatched_ids.append(record_id)
        if not any(t.data for t in kept):
            stats.unusable_rows += 1
            continue
        examples.append((record_id, kept))
    if not examples:
        raise ValueError(
            f"{gen_dir}: no row has usable logprobs ({stats.rows_without_logprobs} rows without, "
            f"{stats.unusable_rows} whose tokens do not spell their answer); generate with top_logprobs "
            "(kdistill generate --top-logprobs K) to capture from an endpoint"
        )
    if stats.mismatched_rows:
        stats.notes.append(
            f"{stats.mismatched_rows} rows: the endpoint's tokens do not spell the whole answer (first: "
            f"{stats.mismatched_ids[0]!r}); only the tokens up to where they agree have a signal "
            f"({stats.mismatched_tokens} tokens left out, {stats.unusable_rows} rows without any)"
        )
    table, ids = candidate_table(t for _, tokens in examples for t in tokens)
    widest = max(len(ranked_entries(t)) for _, tokens in examples for t in tokens if t.data)
    k = k or widest
    inputs = {
        "format": FORMAT,
        "layout": BYTES.name,
        "source": "endpoint",
        "teacher": sorted(teachers),
        "data": data_fingerprint(fingerprinted, extra_field="logprobs"),
        "k": k,
        "candidates": table.fingerprint(),
        "rendering": rendering,
        "mapping": "token bytes (else UTF-8 of its text); spans = running byte sums",
    }
    key = signal_key(inputs)
    store_dir = Path(store_dir) if store_dir is not None else default_signal_dir(key, cache_root)
    attachments = {CANDIDATES: table.to_bytes()}
    writer = TeacherSignalWriter(
        store_dir, key=key, key_inputs=inputs, k=k, info=info, layout=BYTES, attachments=attachments
    )
    writer.open()
    try:
        todo = [(i, tokens) for i, tokens in examples if i not in writer.done_ids]
        already = len(examples) - len(todo)
        if progress is not None:
            progress(already, len(examples))
        for n, (record_id, tokens) in enumerate(todo, 1):
            writer.add(record_id, byte_rows(tokens, ids, k=k))
            if writer.buffered >= shard_examples:
                writer.commit()
                if progress is not None:
                    progress(already + n, len(examples))
        writer.close(complete=True)
    finally:
        writer.close(complete=None)  # after an error: commit what is done, release the lock
    if progress is not None:
        progress(len(examples), len(examples))
    answer_tokens = sum(1 for _, tokens in examples for t in tokens if t.data)
    return CaptureResult(
        store_dir=store_dir,
        key=key,
        k=k,
        examples=len(examples),
        computed=len(todo),
        already=already,
        tokens=answer_tokens,
        signal_rows=answer_tokens,
        bytes=store_size_bytes(store_dir),
        elapsed_s=time.perf_counter() - start,
        complete=True,
        endpoint=stats,
    )


__all__ = [
    "ByteEndpointStats",
    "EndpointToken",
    "agreeing_prefix",
    "byte_rows",
    "candidate_table",
    "ranked_entries",
    "read_entries",
    "rendering_of_rows",
    "shared_rendering",
    "signal_bytes_from_generations",
]
