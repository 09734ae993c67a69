"""Score existing answers through a server: a teacher served elsewhere (vLLM on GPUs) gives the top-k
log-probabilities of the answers of a generations directory, for white-box distillation.

**The contract** (the OpenAI completions API's prompt log-probs, as vLLM serves them). Per row one
`POST /completions` with `prompt` = the prompt rendered as the student sees it (`prompt_text`: the
tokenizer's chat template, or the plain text) followed by the answer, `echo: true`, `logprobs: k`,
`max_tokens: 0` (vLLM answers with the prompt alone; `max_tokens: 1` for a server that needs a token to
generate: what it generates lies past the answer and is dropped). The answer's `logprobs` cover the
echoed text: `tokens`, `token_logprobs`, `top_logprobs` ({text: logprob} per token) and `text_offset`
(each token's character offset in the echoed text). The tokens whose offset falls inside the answer are
the answer's (`answer_entries`); a token that straddles the prompt's end is the prompt's (its position
gets no signal). OpenAI's form of a token that is part of a character, `bytes:\\xe2\\x80`, keeps its bytes.

**Two steps, each resumable and exactly once.** (1) The scores are written as a generations directory
(`GenerationStore`, the one `kdistill generate` writes: a row per answer, committed exactly once, a
rerun asks only for the rows it lacks): each row as it was, its `logprobs` column the answer's scored
tokens in the row format, its `teacher` the scorer's identity (`scorer_identity`: model, API, prompt
rendering; not the URL, so another replica of the same model resumes the same scores). (2) That
directory is converted as any endpoint's logprobs are: `signal_from_generations` (token ids of this
tokenizer, aligned with the SFT examples) or, with `cross_tokenizer`, `signal_bytes_from_generations`
(the bytes layout). Both write through `TeacherSignalWriter`, content-keyed by what the server said.

Requests run concurrently on the async openai client (`max_retries=0`); failures are classified and
retried as `kdistill generate` does (`teachers.retry`: connection errors, timeouts, 408/409/429, 5xx,
with backoff and Retry-After); a row whose retries run out stops the capture with its record id (the
rows scored before it stay committed).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from kdistill.generate.teachers.retry import RetryPolicy, classify
from kdistill.lm.capture import DEFAULT_K, CaptureResult, Progress, prompt_rendering
from kdistill.lm.signal_store import signal_key

SCORING = "completions echo=true logprobs=k: the answer's part of the echoed prompt"


class ServerScoringError(RuntimeError):
    """A row the server could not score (its retries ran out, or its answer breaks the contract)."""


@dataclass(frozen=True)
class ScoringServer:
    """The OpenAI-compatible server that scores, and how to talk to it."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 600.0
    max_tokens: int = 0  # 0: prompt log-probs only (vLLM); 1 for a server that must generate a token
    concurrency: int = 8
    dialect: Literal["openai", "llama-cpp-python"] = "openai"  # how it reads the contract: `answer_entries`


def prompt_text(tokenizer: PreTrainedTokenizerBase, row: Mapping[str, Any]) -> str:
    """The text before the answer, rendered as `sft_data.encode_prompt` renders it (chat template with
    its generation prompt, or the plain prompt): what the student's examples hold."""
    messages, prompt = row.get("messages"), row.get("prompt")
    if (messages is None) == (prompt is None):
        raise ValueError(f"row {row.get('record_id')!r}: exactly one of 'prompt' and 'messages' must be set")
    if messages is None and tokenizer.chat_template is None:
        return str(prompt)
    if messages is None:
        messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def scoring_request(text: str, *, model: str, k: int, max_tokens: int = 0) -> dict[str, Any]:
    """The /completions body that scores `text` (prompt + answer) without generating (beyond max_tokens)."""
    return {
        "model": model,
        "prompt": text,
        "echo": True,
        "logprobs": k,
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def scorer_identity(model: str, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Who scored: the served model, the API and the prompt rendering (the `teacher` of each scored row)."""
    return {
        "kind": "openai",
        "model": model,
        "api": "completions",
        "scoring": "echo",
        "rendering": {"api": "completions", **prompt_rendering(tokenizer)},
    }


def answer_entries(
    body: Mapping[str, Any],
    *,
    start: int,
    end: int,
    dialect: str = "openai",
    starts_with_bos: bool = False,
) -> list[dict[str, Any]]:
    """A /completions echo answer -> the row-format entries of the tokens at characters [start, end).

    `dialect="llama-cpp-python"` reads the echo of llama-cpp-python's server (0.3.x, measured with 0.3.36),
    which differs from the contract twice: (1) it pairs echoed token i with the logits *after* it, except
    that it drops a leading BOS token from the tokens but not from the logits, which pairs them right
    again: unless the tokenized text starts with BOS (`starts_with_bos`), each token's distribution is
    read one entry earlier, its own log-prob from that entry's alternatives (-inf when it is not among
    them: the position gets no signal), and the first echoed token has none; (2) its `text_offset`s leave
    out the text of
    special tokens (a chat template's), so offsets are recomputed from the tokens' texts backwards from the
    end of the echoed text, as far as they spell it (the answer, which holds no special token).

    Raises ValueError saying what is missing when the answer has no echoed prompt log-probs."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices in the answer")
    logprobs = choices[0].get("logprobs")
    needed = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    if not isinstance(logprobs, dict) or any(not isinstance(logprobs.get(n), list) for n in needed):
        raise ValueError(
            "no prompt log-probs in the answer: expected choices[0].logprobs with lists "
            f"{', '.join(needed)} (a server that supports echo with logprobs, e.g. vLLM)"
        )
    tokens, lps, tops, offsets = (logprobs[n] for n in needed)
    if not len(tokens) == len(lps) == len(tops) == len(offsets):
        raise ValueError("logprob lists of different lengths")
    if dialect == "llama-cpp-python":
        offsets = _offsets_from_the_end(tokens, str(choices[0].get("text", "")))
        if not starts_with_bos:
            tops = [None, *tops[:-1]]  # token i's distribution is entry i-1's
            lps = [
                None if top is None else float(top.get(token, -math.inf))
                for token, top in zip(tokens, tops, strict=True)
            ]
    entries = []
    for token, lp, top, offset in zip(tokens, lps, tops, offsets, strict=True):
        if offset is None or not start <= int(offset) < end or lp is None:
            continue
        entry = {**_token(token), "logprob": float(lp)}
        alternatives = sorted((top or {}).items(), key=lambda kv: -float(kv[1]))
        entry["top"] = [{**_token(t), "logprob": float(v)} for t, v in alternatives]
        entries.append(entry)
    return entries


def _starts_with_bos(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    """Whether `text` tokenizes (special tokens parsed, BOS added as the tokenizer adds it) to BOS first."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer(text[:256])["input_ids"][:1] == [bos]


def _offsets_from_the_end(tokens: Sequence[Any], text: str) -> list[int | None]:
    """Each token's character offset in `text`, found by laying the tokens' texts back to back from its end;
    None for the tokens before the first one (from the end) that does not spell its place."""
    offsets: list[int | None] = [None] * len(tokens)
    end = len(text)
    for i in range(len(tokens) - 1, -1, -1):
        piece = str(tokens[i])
        if piece.startswith("bytes:") or not text.endswith(piece, 0, end):
            break
        end -= len(piece)
        offsets[i] = end
    return offsets


def _token(text: Any) -> dict[str, Any]:
    """A token's text; OpenAI's `bytes:\\xNN...` form of a partial character keeps its bytes too."""
    text = str(text)
    if text.startswith("bytes:"):
        data = text[len("bytes:") :].encode("latin-1").decode("unicode_escape").encode("latin-1")
        return {"token": data.decode("utf-8", errors="replace"), "bytes": list(data)}
    return {"token": text}


# ---------------------------------------------------------------- step 1: scoring into a generations dir


async def _score_one(
    client: Any,
    text: str,
    start: int,
    starts_with_bos: bool,
    server: ScoringServer,
    k: int,
    policy: RetryPolicy,
    record_id: str,
) -> list[dict[str, Any]]:
    import httpx2

    rng = random.Random(record_id)
    attempt = 0
    while True:
        attempt += 1
        try:
            response = await client.post(
                "/completions",
                body=scoring_request(text, model=server.model, k=k, max_tokens=_max_tokens(server)),
                cast_to=httpx2.Response,
            )
        except Exception as err:
            failure = classify(err)
            if failure is None:
                raise
            if failure.retryable and not failure.fatal and attempt < policy.max_attempts:
                await asyncio.sleep(policy.delay(attempt, failure.retry_after, rng))
                continue
            raise ServerScoringError(
                f"row {record_id!r}: {failure.code} after {attempt} attempts ({failure.message})"
            ) from None
        try:
            body = json.loads(response.content)
            choice = body["choices"][0]
            if isinstance(choice.get("text"), str) and not choice["text"].startswith(text):
                raise ValueError("the echoed text is not the prompt sent (echo: true not honoured)")
            return answer_entries(
                body, start=start, end=len(text), dialect=server.dialect, starts_with_bos=starts_with_bos
            )
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise ServerScoringError(
                f"row {record_id!r}: the server's answer breaks the contract: {err}"
            ) from None


def _max_tokens(server: ScoringServer) -> int:
    """llama-cpp-python reads max_tokens 0 as "until the context is full": it generates one token."""
    return max(server.max_tokens, 1) if server.dialect == "llama-cpp-python" else server.max_tokens


async def _score_rows(
    rows: Sequence[dict[str, Any]],
    texts: Sequence[tuple[str, int, bool]],
    store: Any,
    server: ScoringServer,
    *,
    k: int,
    policy: RetryPolicy,
    identity: str,
    progress: Progress | None,
    total: int,
) -> int:
    """Score `rows` (concurrently, `server.concurrency` at once), committing each group as it completes."""
    from kdistill.generate.store import utc_now
    from kdistill.generate.teachers.openai_endpoint import endpoint_client

    # a scoring server is never OpenAI's own API: no account headers
    client = endpoint_client(
        server.base_url, api_key=server.api_key, timeout_s=server.timeout_s, send_org_headers=False
    )
    tokens = 0
    done = total - len(rows)
    try:
        group = max(server.concurrency, 1)
        for first in range(0, len(rows), group):
            part = rows[first : first + group]
            scored = await asyncio.gather(
                *(
                    _score_one(client, *texts[first + n], server, k, policy, str(row["record_id"]))
                    for n, row in enumerate(part)
                ),
                return_exceptions=True,
            )
            good = [
                {**row, "logprobs": json.dumps(entries), "teacher": identity, "created": utc_now()}
                for row, entries in zip(part, scored, strict=True)
                if not isinstance(entries, BaseException)
            ]
            store.append_rows(good)  # committed before any error of the group is raised
            tokens += sum(len(json.loads(r["logprobs"])) for r in good)
            for result in scored:
                if isinstance(result, BaseException):
                    raise result
            done += len(part)
            if progress is not None:
                progress(done, total)
    finally:
        await client.close()
    return tokens


def score_generations(
    gen_dir: str | Path | Sequence[str | Path],
    tokenizer: PreTrainedTokenizerBase,
    scores_dir: str | Path | None,
    server: ScoringServer,
    *,
    k: int = DEFAULT_K,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
    cache_root: Path | None = None,
) -> tuple[Path, int, float]:
    """Step 1: every row of `gen_dir` scored by `server` into a generations directory (module docstring).

    `scores_dir` defaults to `<cache>/server_scores/<key>/`, the key hashing the scorer's identity, k and
    the scored texts. Returns (the directory, answer tokens scored by this run, seconds spent scoring).
    """
    from kdistill.generate.store import GenerationStore, load_generations

    rows = [dict(r) for r in load_generations(gen_dir)]
    if not rows:
        raise ValueError(f"{gen_dir}: no rows to score")
    texts = []
    for row in rows:
        prompt = prompt_text(tokenizer, row)
        text = prompt + row["completion"]
        texts.append((text, len(prompt), _starts_with_bos(tokenizer, text)))
    identity = scorer_identity(server.model, tokenizer)
    source = {"scorer": identity, "k": k, "scoring": SCORING}
    if server.dialect != "openai":  # read otherwise: other scores
        source["dialect"] = server.dialect
    if scores_dir is None:
        fingerprint = [(str(r["record_id"]), text) for r, (text, _, _) in zip(rows, texts, strict=True)]
        scores_dir = default_scores_root(cache_root) / signal_key({**source, "data": sorted(fingerprint)})
    store = GenerationStore(scores_dir, shard_rows=10_000)
    store.open()
    try:
        if store.sources and source not in store.sources:
            raise ValueError(
                f"{scores_dir}: holds scores of another scorer or k ({store.sources[0]}); give another directory"
            )
        wanted = {str(r["record_id"]) for r in rows}
        foreign = sorted(store.done_ids - wanted)
        if foreign:
            raise ValueError(f"{scores_dir}: holds scores of rows not in {gen_dir} (e.g. {foreign[0]!r})")
        store.add_source(source)
        todo = [n for n, r in enumerate(rows) if str(r["record_id"]) not in store.done_ids]
        if progress is not None:
            progress(len(rows) - len(todo), len(rows))
        tick = time.perf_counter()
        tokens = asyncio.run(
            _score_rows(
                [rows[n] for n in todo],
                [texts[n] for n in todo],
                store,
                server,
                k=k,
                policy=retry or RetryPolicy(),
                identity=json.dumps(identity, sort_keys=True),
                progress=progress,
                total=len(rows),
            )
        )
        elapsed = time.perf_counter() - tick
    finally:
        store.close()
    return Path(scores_dir), tokens, elapsed


# ---------------------------------------------------------------- both steps


def capture_from_server(
    gen_dir: str | Path | Sequence[str | Path],
    tokenizer: PreTrainedTokenizerBase,
    store_dir: str | Path | None = None,
    *,
    server: ScoringServer,
    max_length: int,
    k: int = DEFAULT_K,
    cross_tokenizer: bool = False,
    scores_dir: str | Path | None = None,
    retry: RetryPolicy | None = None,
    shard_examples: int = 256,
    info: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    cache_root: Path | None = None,
    max_mismatch: float | None = None,
) -> CaptureResult:
    """The teacher signal of `gen_dir`'s answers as `server` scores them: same-tokenizer rows (aligned
    with the SFT examples of `max_length`) or, with `cross_tokenizer`, the bytes layout. Rerun after a
    kill: scored rows are kept, and the store is the one an uninterrupted run writes.
    `progress(rows scored, rows)` follows the scoring; `max_mismatch` as in `signal_from_generations`."""
    from kdistill.lm.capture import signal_from_generations
    from kdistill.lm.endpoint_bytes import signal_bytes_from_generations

    scored, tokens, seconds = score_generations(
        gen_dir, tokenizer, scores_dir, server, k=k, retry=retry, progress=progress, cache_root=cache_root
    )
    if cross_tokenizer:
        result = signal_bytes_from_generations(
            scored, store_dir, k=k, shard_examples=shard_examples, info=info, cache_root=cache_root
        )
    else:
        result = signal_from_generations(
            scored,
            tokenizer,
            store_dir,
            max_length=max_length,
            k=k,
            shard_examples=shard_examples,
            info=info,
            cache_root=cache_root,
            max_mismatch=max_mismatch,
        )
    result.computed_tokens, result.teacher_s = tokens, seconds
    return result


def default_scores_root(cache_root: Path | None = None) -> Path:
    """Where scores go when no `scores_dir` is given (one directory per content key below it)."""
    from kdistill.runs.locations import default_cache_root

    return (cache_root or default_cache_root()) / "server_scores"


__all__ = [
    "SCORING",
    "ScoringServer",
    "ServerScoringError",
    "answer_entries",
    "capture_from_server",
    "default_scores_root",
    "prompt_text",
    "score_generations",
    "scorer_identity",
    "scoring_request",
]
