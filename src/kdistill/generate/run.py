"""`kdistill generate`: a teacher answers many prompts; the answers become a dataset.

    prompts file ──> load_prompts ──> plan: every (prompt, sample index) -> a record id; skip those done
                                        │
    workers (concurrency) ── rate limits ── teacher.complete ── retry policy (teachers/retry.py)
                                        │
                         judge each answer: row  |  reject (reason code)  |  error (after retries)
                                        │
                committer (group commit) ──> GenerationStore: journal -> shards + manifest

**Records.** A record is one sample of one prompt; its id (`kdistill.generate.records`) hashes everything
that changes the answer. Each record is requested in exactly one work item per run and committed at most
once (the store refuses a second commit), so rerunning the same command after a crash or Ctrl-C only
sends requests for records that have no row yet. A record with a reject line is final too (a rerun does
not ask again) unless `retry_rejects` is set; a record that ended in errors.jsonl is retried by the next
run.

**Judging.** A choice becomes a row only if it has text, a finish reason, is not cut off by the token
limit (`finish_reason: length`, unless `allow_length`), not filtered or a tool call, not empty, and all
its logprobs are finite. Otherwise it goes to rejects.jsonl with one of the reason codes in
`REJECT_REASONS`. A response whose body is not JSON or has no choices rejects every sample it was asked
for; samples missing from a response with too few choices are rejected as `missing_choice`.

**Rendering.** Each row's `teacher` JSON also says how its prompt was rendered (`rendering`, from an
endpoint teacher): by the server's own chat template, as plain text, or by a chat template applied here
(`teacher.render_with`, sent through /completions), which is then part of the record id too.

**Seeds.** With `sampling.seed`, request i of a prompt is sent with seed + (its first sample index),
so samples differ from each other yet are reproducible.

**Shards.** With `shard: i/N` a run plans only the records whose id hashes to part i
(`kdistill.runs.sharding`): N jobs, each with its own `out`, fill disjoint directories that
`load_generations([...])` reads as one.

**Before a run** (`check_servers`, which `kdistill generate` calls): one `GET /models` per server
(`teachers/preflight.py`) refuses in seconds a server that is not there and a model name it does not
list, instead of spending the retry policy on every request.

**Secrets.** The API key is read from the environment variable named in the config, passed to the
openai client only, and scrubbed from every string written to the output directory (rows, rejects,
errors, manifest) in case a server echoes it.

The config models live in `kdistill.generate.config`; `GenerationConfig` and `load_generation_config`
are importable from here too, as callers have always done.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from kdistill.generate.config import GenerationConfig, OpenAITeacherConfig, load_generation_config
from kdistill.generate.prompts import Prompt, load_prompts
from kdistill.generate.records import canonical_json, record_id, sampling_identity
from kdistill.generate.store import GenerationStore, OpenReport, utc_now
from kdistill.generate.teachers import CompletionRequest, SamplingParams, Teacher, TeacherResponse
from kdistill.generate.teachers.limits import RateLimiter, estimate_tokens
from kdistill.generate.teachers.retry import RetryPolicy, classify

REJECT_REASONS = {
    "unparsable_body": "the response body is not JSON or not shaped like a completion",
    "empty_choices": "the response has no choices",
    "missing_choice": "the response has fewer choices than samples asked for",
    "unparsable_logprobs": "the choice's logprobs are not in the expected shape",
    "no_content": "the choice has no text (null content)",
    "no_finish_reason": "the choice has no finish_reason, so it may be partial",
    "length": "cut off by max_tokens (finish_reason: length); allow with allow_length",
    "content_filter": "stopped by the server's content filter",
    "tool_calls": "the teacher called a tool instead of answering",
    "empty_completion": "the answer is the empty string",
    "nonfinite_logprobs": "a logprob is NaN or infinite",
}

#: below this length a "key" is not scrubbed from outputs: replacing a short string would corrupt text
MIN_SCRUB_LENGTH = 8


class GenerationError(RuntimeError):
    """A user-facing failure of a generation run (bad config, bad key, mixed output dir)."""


class TeacherAuthError(GenerationError):
    """The endpoint rejected the API key (HTTP 401); the run stopped."""


# ---------------------------------------------------------------------------------------------- results


@dataclass
class GenerationStats:
    """Live counters of a run, handed to the progress callback after every event."""

    total: int = 0  # records: prompts x samples
    already_done: int = 0  # committed or rejected before this run started
    committed: int = 0  # rows committed by this run
    rejected: int = 0
    errors: int = 0
    retries: int = 0
    requests: int = 0  # attempts sent
    answered: int = 0  # attempts that got an answer (the progress display's rate)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    # per server of a pool (teacher.endpoints): `EndpointStatus` snapshots, refreshed at every event
    endpoints: list[Any] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.already_done + self.committed + self.rejected + self.errors

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass
class GenerationSummary:
    out_dir: str
    total: int
    already_done: int
    committed: int
    rejected: int
    errors: int
    missing: int  # records with neither a row nor a reject line: rerun to fill them
    rows_in_dataset: int
    retries: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    elapsed_s: float
    cost: float | None
    stopped: str | None  # why the run stopped early, if it did
    reject_reasons: dict[str, int]
    error_codes: dict[str, int]
    rows_without_logprobs: int
    notes: list[str]
    recovery: dict[str, Any]
    endpoints: list[dict[str, Any]] = field(default_factory=list)  # per server of a pool, at the end

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- judging


def judge_choice(choice, *, allow_length: bool) -> str | None:
    """The reject reason code for one choice, or None if it may become a training row."""
    if choice.problem:
        return choice.problem
    if choice.text is None:
        return "no_content"
    if choice.finish_reason is None:
        return "no_finish_reason"
    if choice.finish_reason == "length" and not allow_length:
        return "length"
    if choice.finish_reason == "content_filter":
        return "content_filter"
    if choice.finish_reason in ("tool_calls", "function_call"):
        return "tool_calls"
    if choice.text == "":
        return "empty_completion"
    for entry in choice.logprobs or ():
        values = [entry["logprob"], *(t["logprob"] for t in entry["top"])]
        if not all(math.isfinite(v) for v in values):
            return "nonfinite_logprobs"
    return None


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class _WorkItem:
    prompt: Prompt
    sample_indices: list[int]
    record_ids: list[str]


def build_teacher(config: GenerationConfig, sampling: SamplingParams) -> tuple[Teacher, str | None]:
    """The teacher a config names, and the API key it uses (None: none configured)."""
    t = config.teacher
    if isinstance(t, OpenAITeacherConfig):
        from kdistill.generate.teachers.openai_endpoint import OpenAIEndpointTeacher

        key = os.environ.get(t.api_key_env) if t.api_key_env else None
        if t.endpoints is not None:
            return _endpoint_pool(t, key or None, sampling), key or None
        teacher = OpenAIEndpointTeacher(
            base_url=t.base_url,
            model=t.model or "",
            api_key=key or None,
            sampling=sampling,
            api="chat" if t.api == "auto" else t.api,
            timeout_s=t.timeout_s,
            send_org_headers=t.send_org_headers,
            template_tokenizer=None if t.render_with is None else _template_tokenizer(t.render_with),
        )
        return teacher, key or None
    from kdistill.generate.teachers.hf_local import HFLocalTeacher

    watermark = None
    if t.watermark is not None:
        from kdistill.provenance.watermark import GreenListWatermark, WatermarkKeyError, key_from_env

        try:
            key = key_from_env(t.watermark.key_env)
        except WatermarkKeyError as err:
            raise GenerationError(f"teacher.watermark.key_env: {err}") from None
        w = t.watermark
        watermark = GreenListWatermark(key, gamma=w.gamma, delta=w.delta, context_width=w.context_width)
    from kdistill.runs.locations import resolve_model

    try:  # a folder, a hub id, a .gguf file or pkg:<package>[/<path>], as everywhere a teacher is named
        ref = resolve_model(t.model or "", gguf_file=t.gguf_file, field="teacher.model")
    except (OSError, ValueError) as err:
        raise GenerationError(str(err)) from None
    teacher = HFLocalTeacher(
        model=ref.path,
        sampling=sampling,
        api=t.api,
        gguf_file=ref.gguf_file,
        revision=t.revision,
        dtype=t.dtype,
        device=t.device,
        batch_size=t.batch_size,
        trust_remote_code=t.trust_remote_code,
        watermark=watermark,
    )
    return teacher, None


def _template_tokenizer(ref: str) -> Any:
    """The tokenizer `teacher.render_with` names (directory, hub id or pkg:<name>), with a chat template."""
    from kdistill.lm.models import load_tokenizer_ref

    try:
        tokenizer = load_tokenizer_ref(ref, field="teacher.render_with")
    except (OSError, ValueError) as err:  # FileNotFoundError is an OSError; each names the field
        raise GenerationError(str(err)) from None
    if tokenizer.chat_template is None:
        raise GenerationError(
            f"teacher.render_with {ref!r}: the tokenizer has no chat template to render with"
        )
    return tokenizer


def _endpoint_pool(t: OpenAITeacherConfig, key: str | None, sampling: SamplingParams) -> Teacher:
    """An `EndpointPool` of one endpoint teacher per `teacher.endpoints` entry (teachers/pool.py)."""
    from kdistill.generate.teachers.openai_endpoint import OpenAIEndpointTeacher
    from kdistill.generate.teachers.pool import EndpointPool, PoolMember

    tokenizer = None if t.render_with is None else _template_tokenizer(t.render_with)
    members = [
        PoolMember(
            OpenAIEndpointTeacher(
                base_url=e.base_url,
                model=t.model or "",
                api_key=key,
                sampling=sampling,
                api="chat" if t.api == "auto" else t.api,
                timeout_s=t.timeout_s,
                send_org_headers=t.send_org_headers,
                template_tokenizer=tokenizer,
            ),
            concurrency=e.concurrency,
            weight=e.weight,
        )
        for e in t.endpoints or ()
    ]
    h = t.endpoint_health
    return EndpointPool(
        members, failures_to_eject=h.failures_to_eject, backoff_s=h.backoff_s, max_backoff_s=h.max_backoff_s
    )


def check_servers(config: GenerationConfig) -> list[str]:
    """Ask every server of an openai teacher what it serves before the run (`teachers/preflight.py`).

    Raises `GenerationError` for a single server that cannot be reached and for a model name a server
    does not list; returns notes (a server without a model list; a server of a pool that is down now,
    which the pool's health checks probe back). A local teacher has no server: no notes. Blocking.
    """
    from kdistill.generate.teachers.preflight import check_server, model_problem

    t = config.teacher
    if not isinstance(t, OpenAITeacherConfig):
        return []
    key = (os.environ.get(t.api_key_env) if t.api_key_env else None) or None
    urls = [t.base_url] if t.endpoints is None else [e.base_url for e in t.endpoints]

    async def check_all() -> list[Any]:
        return await asyncio.gather(
            *(check_server(url, api_key=key, send_org_headers=t.send_org_headers) for url in urls)
        )

    notes, problems = [], []
    for check in asyncio.run(check_all()):
        if check.wrong_path is not None:
            problems.append(check.wrong_path)
        elif check.unreachable is not None and t.endpoints is None:
            problems.append(check.unreachable)
        elif check.unreachable is not None:  # a pool goes on without it (teachers/pool.py, Health)
            notes.append(f"{check.unreachable} (left out of rotation until it answers)")
        elif check.note is not None:
            notes.append(check.note)
        problem = model_problem(check, t.model or "")
        if problem is not None:
            problems.append(problem + " (teacher.model / --model)")
    if problems:
        raise GenerationError("\n".join(problems))
    return notes


def generate(
    config: GenerationConfig,
    *,
    progress: Callable[[GenerationStats], None] | None = None,
    teacher: Teacher | None = None,
) -> GenerationSummary:
    """Run (or continue) a generation into `config.out`; see the module docstring. Blocking.

    `progress` is called with the live `GenerationStats` after every event (on the event loop: keep it
    cheap). `teacher` overrides the one the config names (tests, custom teachers); it is closed at the
    end, as its connections and workers belong to the event loop this call starts and ends (`agenerate`
    leaves a caller's teacher open). Raises `GenerationError` for user errors, `TeacherAuthError` if the
    endpoint rejects the key, `PromptFileError` for bad prompt files, `GenerationStoreError` for a corrupt
    output dir.
    """

    async def run_then_close() -> GenerationSummary:
        try:
            return await agenerate(config, progress=progress, teacher=teacher)
        finally:
            if teacher is not None:
                await teacher.aclose()

    return asyncio.run(run_then_close())


async def agenerate(
    config: GenerationConfig,
    *,
    progress: Callable[[GenerationStats], None] | None = None,
    teacher: Teacher | None = None,
) -> GenerationSummary:
    """The async form of `generate` (for callers already inside an event loop).

    A `teacher` the caller passes stays open, so one client can serve several runs; the caller closes it.
    """
    assert config.prompts is not None and config.out is not None  # the config validator saw to it
    prompts = load_prompts(config.prompts)
    s = config.sampling
    params = SamplingParams(
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        stop=tuple(s.stop) if s.stop else None,
        top_logprobs=s.top_logprobs,
    )
    secret = None
    owned = teacher is None  # a teacher the caller passed stays open for the caller's next use
    if teacher is None:
        teacher, secret = build_teacher(config, params)
    try:
        run = _Run(config, prompts, teacher, secret, progress)
        return await run.execute()
    finally:
        if owned:
            await teacher.aclose()


class _Run:
    def __init__(
        self,
        config: GenerationConfig,
        prompts: list[Prompt],
        teacher: Teacher,
        secret: str | None,
        progress: Callable[[GenerationStats], None] | None,
    ) -> None:
        self.config = config
        self.prompts = prompts
        self.teacher = teacher
        self.progress = progress
        self.secret = secret if secret and len(secret) >= MIN_SCRUB_LENGTH else None
        self.teacher_id = dict(teacher.identity)
        self.sampling_id = sampling_identity(config.sampling)
        # How the prompt was rendered (an endpoint teacher says): written into every row's teacher JSON,
        # so that a signal made of the rows can say what context it is conditioned on. It joins the record
        # id (teacher_id) only where it is our choice (render_with); the ids of other rows stay as they were.
        self.rendering: dict[str, Any] | None = getattr(teacher, "rendering", None)
        rendering = {} if self.rendering is None else {"rendering": self.rendering}
        self.teacher_json = canonical_json({**self.teacher_id, **rendering})
        self.sampling_json = canonical_json(self.sampling_id)
        self.policy = RetryPolicy(**config.retry.model_dump())
        self.limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute)
        self.stats = GenerationStats()
        self.reject_reasons: Counter[str] = Counter()
        self.error_codes: Counter[str] = Counter()
        self.not_found: Counter[str] = Counter()  # request URL -> records that got HTTP 404 there
        self.rows_without_logprobs = 0
        self.consecutive_errors = 0
        self.stopped: str | None = None
        self.notes: list[str] = []
        self.rng = random.Random()
        self.wanted: set[str] = set()  # every record id of this run's prompts x samples
        self.store = GenerationStore(config.out, shard_rows=config.shard_rows)  # type: ignore[arg-type]
        self._pending: list[tuple[list, list, list]] = []
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._closing = False

    # -- planning

    def _check_prompts(self) -> None:
        renders_chats = (self.rendering or {}).get("kind") == "chat_template"
        if self.teacher_id.get("api") == "completions" and not renders_chats:
            chat = next((p for p in self.prompts if p.messages is not None), None)
            if chat is not None:
                raise GenerationError(
                    f"{chat.where}: a chat prompt (messages), but teacher.api is 'completions' "
                    "(plain prompts only); use api: chat, or teacher.render_with to render chats here"
                )

    def _in_shard(self, rid: str) -> bool:
        """Whether this job asks for record `rid`: all records, or those of `config.shard` (by id hash)."""
        from kdistill.runs.sharding import parse_shard

        shard = parse_shard(self.config.shard, flag="shard")
        return shard is None or shard.holds(rid)

    def _plan(self) -> list[_WorkItem]:
        samples = self.config.sampling.samples
        per_request = getattr(self.config.teacher, "samples_per_request", 1)
        done, rejected = self.store.done_ids, self.store.rejected_ids
        items: list[_WorkItem] = []
        for prompt in self.prompts:
            missing: list[tuple[int, str]] = []
            for i in range(samples):
                rid = record_id(prompt, self.teacher_id, self.sampling_id, i)
                if not self._in_shard(rid):
                    continue  # another job's record (generation.shard)
                self.wanted.add(rid)
                if rid in done or (rid in rejected and not self.config.retry_rejects):
                    self.stats.already_done += 1
                else:
                    missing.append((i, rid))
            for start in range(0, len(missing), per_request):
                chunk = missing[start : start + per_request]
                items.append(_WorkItem(prompt, [i for i, _ in chunk], [r for _, r in chunk]))
        self.stats.total = len(self.prompts) * samples if self.config.shard is None else len(self.wanted)
        return items

    # -- the run

    async def execute(self) -> GenerationSummary:
        self._check_prompts()
        recovery = await asyncio.to_thread(self.store.open)
        try:
            self._check_source()
            items = self._plan()
            self._notify()
            committer = asyncio.create_task(self._committer())
            try:
                await self._work(items, committer)
            finally:
                self._closing = True
                self._wake.set()
                await asyncio.shield(committer)
        finally:
            await asyncio.to_thread(self.store.close)
        return self._summary(recovery)

    def _check_source(self) -> None:
        source = {"teacher": self.teacher_id, "sampling": self.sampling_id}
        known = self.store.sources
        if known and source not in known and not self.config.allow_mixed:
            last = known[-1]
            diff = [
                f"{part}.{key}: {last[part].get(key)!r} -> {source[part].get(key)!r}"
                for part in ("teacher", "sampling")
                for key in sorted(set(last[part]) | set(source[part]))
                if last[part].get(key) != source[part].get(key)
            ]
            raise GenerationError(
                f"{self.config.out}: holds rows of another teacher or sampling ({'; '.join(diff)}); "
                "use another output directory, or set allow_mixed: true to add to this one"
            )
        self.store.add_source(self._scrub(source))

    async def _work(self, items: list[_WorkItem], committer: asyncio.Task) -> None:
        queue: Iterator[_WorkItem] = iter(items)
        n_workers = max(self.config.concurrency, self.teacher.max_in_flight or 1)
        workers = {asyncio.create_task(self._worker(queue)) for _ in range(min(n_workers, len(items)))}
        try:
            # the first failure (a 401, a full disk, a bug) stops everything
            pending = workers | {committer}
            while pending & workers:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, queue: Iterator[_WorkItem]) -> None:
        for item in queue:  # a shared iterator: each item is taken by exactly one worker
            if self.stopped:
                return
            await self._process(item)
            if len(self._pending) > 4 * self.config.concurrency:  # backpressure on a slow disk
                await self._wait_flushed()

    async def _process(self, item: _WorkItem) -> None:
        p = item.prompt
        seed = (
            None if self.config.sampling.seed is None else self.config.sampling.seed + item.sample_indices[0]
        )
        request = CompletionRequest(
            prompt=p.prompt,
            messages=None if p.messages is None else [dict(m) for m in p.messages],
            n=len(item.sample_indices),
            seed=seed,
        )
        estimate = estimate_tokens(len(p.canonical()), self.config.sampling.max_tokens, request.n)
        attempt = 0
        while True:
            attempt += 1
            await self.limiter.acquire(estimate)
            self.stats.requests += 1
            try:
                response = await self.teacher.complete(request)
            except Exception as err:
                failure = classify(err)
                if failure is None:
                    raise
                if failure.retryable and not failure.fatal and attempt < self.policy.max_attempts:
                    self.stats.retries += 1
                    self._notify()
                    await asyncio.sleep(self.policy.delay(attempt, failure.retry_after, self.rng))
                    continue
                self._record_errors(item, failure, attempt)
                if failure.fatal:
                    raise self._auth_error() from None
                return
            self.consecutive_errors = 0
            self.stats.answered += 1
            used = (response.prompt_tokens or 0) + (response.completion_tokens or 0)
            self.limiter.settle_tokens(estimate, used if used else None)
            self._judge(item, response)
            return

    def _auth_error(self) -> TeacherAuthError:
        t = self.config.teacher
        env = getattr(t, "api_key_env", None)
        where = self.teacher_id.get("base_url", "the teacher")
        if self.secret is None and env and not os.environ.get(env):
            return TeacherAuthError(
                f"{where} needs an API key (HTTP 401): set the environment variable {env}"
            )
        return TeacherAuthError(
            f"{where} rejected the API key (HTTP 401); check the environment variable {env} "
            "(teacher.api_key_env / --api-key-env)"
        )

    def _record_errors(self, item: _WorkItem, failure, attempts: int) -> None:
        entries = [
            {
                "record_id": rid,
                "prompt_id": item.prompt.id,
                "sample_index": i,
                "code": failure.code,
                "retryable": failure.retryable,
                "attempts": attempts,
                "message": failure.message,
                "created": utc_now(),
            }
            for i, rid in zip(item.sample_indices, item.record_ids, strict=True)
        ]
        self.error_codes[failure.code] += len(entries)
        self.stats.errors += len(entries)
        self.consecutive_errors += 1
        limit = self.config.max_consecutive_errors
        if limit is not None and self.consecutive_errors >= limit and not self.stopped:
            at = f"; {failure.url}" if failure.url else ""
            self.stopped = f"{limit} requests in a row failed (last: {failure.code}: {failure.message}{at})"
        if failure.code == "http_404":  # a wrong base URL fails every request alike: say so once per server
            self.not_found[failure.url or "the teacher"] += len(entries)
        self._submit([], [], entries)

    def _judge(self, item: _WorkItem, response: TeacherResponse) -> None:
        p = item.prompt
        rows, rejects = [], []
        self.stats.prompt_tokens += response.prompt_tokens or 0
        self.stats.completion_tokens += response.completion_tokens or 0
        choices = response.choices
        for k, (i, rid) in enumerate(zip(item.sample_indices, item.record_ids, strict=True)):
            choice = choices[k] if k < len(choices) else None
            if response.problem:
                reason, detail = response.problem, response.detail
            elif choice is None:
                reason, detail = (
                    "missing_choice",
                    f"{len(choices)} choices for {len(item.record_ids)} samples",
                )
            else:
                reason, detail = judge_choice(choice, allow_length=self.config.allow_length), ""
            if reason is not None:
                rejects.append(
                    {
                        "record_id": rid,
                        "prompt_id": p.id,
                        "sample_index": i,
                        "reason": reason,
                        "detail": detail or REJECT_REASONS.get(reason, ""),
                        "finish_reason": choice.finish_reason if choice else None,
                        "completion": choice.text if choice else None,
                        "teacher": self.teacher_json,
                        "sampling": self.sampling_json,
                        "created": utc_now(),
                    }
                )
                self.reject_reasons[reason] += 1
                continue
            assert choice is not None and choice.text is not None
            if self.config.sampling.top_logprobs is not None and choice.logprobs is None:
                self.rows_without_logprobs += 1
            tokens = choice.completion_tokens
            if tokens is None:
                if len(choices) == 1:
                    tokens = response.completion_tokens
                elif choice.logprobs is not None:
                    tokens = len(choice.logprobs)
            rows.append(
                {
                    "record_id": rid,
                    "prompt_id": p.id,
                    "sample_index": i,
                    "prompt": p.prompt,
                    "messages": None if p.messages is None else [dict(m) for m in p.messages],
                    "completion": choice.text,
                    "finish_reason": choice.finish_reason,
                    "teacher": self.teacher_json,
                    "sampling": self.sampling_json,
                    "prompt_tokens": response.prompt_tokens,
                    "completion_tokens": tokens,
                    "logprobs": None if choice.logprobs is None else json.dumps(choice.logprobs),
                    "created": utc_now(),
                }
            )
        self._submit(rows, rejects, [])

    # -- committing (one writer: the committer task; each wake-up is one fsynced group)

    def _submit(self, rows: list, rejects: list, errors: list) -> None:
        self._pending.append((self._scrub(rows), self._scrub(rejects), self._scrub(errors)))
        self._wake.set()

    async def _wait_flushed(self) -> None:
        self._flushed.clear()
        await self._flushed.wait()

    async def _committer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                rows = [r for b in batch for r in b[0]]
                rejects = [r for b in batch for r in b[1]]
                errors = [e for b in batch for e in b[2]]
                await asyncio.to_thread(self._write, rows, rejects, errors)
                self.stats.committed += len(rows)
                self.stats.rejected += len(rejects)
                self._notify()
            self._flushed.set()
            if self._closing and not self._pending:
                return

    def _write(self, rows: list, rejects: list, errors: list) -> None:
        if rows:
            self.store.append_rows(rows)
        self.store.append_rejects(rejects)
        self.store.append_errors(errors)

    def _scrub(self, data: Any) -> Any:
        """Remove the API key from every string in `data` (rows, rejects, errors, manifest)."""
        if self.secret is None:
            return data
        if isinstance(data, str):
            return data.replace(self.secret, "[REDACTED]")
        if isinstance(data, list):
            return [self._scrub(x) for x in data]
        if isinstance(data, dict):
            return {k: self._scrub(v) for k, v in data.items()}
        return data

    def _notify(self) -> None:
        if self.progress is not None:
            self._endpoint_status()
            self.progress(self.stats)

    def _endpoint_status(self) -> list[Any]:
        """Refresh `stats.endpoints` from a pool (`teachers/pool.py`); a single endpoint has none."""
        status = getattr(self.teacher, "endpoint_status", None)
        self.stats.endpoints = status() if status is not None else []
        return self.stats.endpoints

    def _summary(self, recovery: OpenReport) -> GenerationSummary:
        final = self.store.done_ids | self.store.rejected_ids
        st = self.stats
        cost = None
        c = self.config
        if c.price_input_per_1m is not None or c.price_output_per_1m is not None:
            cost = (
                st.prompt_tokens * (c.price_input_per_1m or 0.0)
                + st.completion_tokens * (c.price_output_per_1m or 0.0)
            ) / 1e6
        if self.rows_without_logprobs:
            self.notes.append(
                f"{self.rows_without_logprobs} rows have no logprobs although top_logprobs was asked for "
                "(the endpoint did not return them)"
            )
        for url, records in sorted(self.not_found.items()):
            self.notes.append(f"{records} records got HTTP 404 (not found) from {url}{_not_found_hint(url)}")
        if recovery.journal_rows_sealed or recovery.journal_lines_skipped:
            self.notes.append(
                f"recovered an interrupted run: {recovery.journal_rows_sealed} journal rows sealed, "
                f"{recovery.journal_lines_skipped} torn or corrupt journal lines skipped"
            )
        return GenerationSummary(
            out_dir=str(c.out),
            total=st.total,
            already_done=st.already_done,
            committed=st.committed,
            rejected=st.rejected,
            errors=st.errors,
            missing=len(self.wanted - final),
            rows_in_dataset=len(self.store.done_ids),
            retries=st.retries,
            requests=st.requests,
            prompt_tokens=st.prompt_tokens,
            completion_tokens=st.completion_tokens,
            elapsed_s=round(st.elapsed, 3),
            cost=cost,
            stopped=self._scrub(self.stopped),
            reject_reasons=dict(self.reject_reasons),
            error_codes=dict(self.error_codes),
            rows_without_logprobs=self.rows_without_logprobs,
            notes=self.notes,
            recovery=asdict(recovery),
            endpoints=[asdict(e) for e in self._endpoint_status()],
        )


def _not_found_hint(url: str) -> str:
    """What to check when `url` (a request's: base URL + /chat/completions or /completions) answered 404."""
    from kdistill.generate.teachers.openai_endpoint import v1_hint

    base = url.removesuffix("/chat/completions").removesuffix("/completions")
    hint = v1_hint(base) if base != url else None
    return f": {hint}" if hint else ": check the base URL (up to and including /v1) and the model name"


__all__ = [
    "REJECT_REASONS",
    "check_servers",
    "GenerationConfig",  # kdistill.generate.config, kept importable from here
    "GenerationError",
    "GenerationStats",
    "GenerationSummary",
    "TeacherAuthError",
    "agenerate",
    "build_teacher",
    "generate",
    "judge_choice",
    "load_generation_config",  # kdistill.generate.config, kept importable from here
]
