"""The generation pipeline against a real loopback HTTP server: rows, retries, rejects, resume, limits."""

import asyncio
import json
import time
import types

import pytest
from tests.fixtures.openai_server import Fault, answer_text
from tests.generate.helpers import write_jsonl

from kdistill.generate.config import GenerationConfig, load_generation_config
from kdistill.generate.records import record_id
from kdistill.generate.run import GenerationError, TeacherAuthError, generate
from kdistill.generate.store import load_generations
from kdistill.schema import ConfigError

_real_sleep = asyncio.sleep  # the rate-limit tests replace the limiter's naps, never this

FAST_RETRY = {"base_delay_s": 0.01, "max_delay_s": 0.05, "max_attempts": 4}


def _config(server, prompts, out, **overrides) -> GenerationConfig:
    teacher = {"base_url": server.base_url, "model": "teacher-m", "api_key_env": None}
    teacher.update(overrides.pop("teacher", {}))
    data = {"prompts": prompts, "out": out, "teacher": teacher, "retry": FAST_RETRY, "concurrency": 4}
    data.update(overrides)
    return GenerationConfig.model_validate(data)


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_every_prompt_becomes_one_row_in_the_documented_schema(server, prompts_file, tmp_path):
    cfg = _config(server, prompts_file(6), tmp_path / "out", sampling={"top_logprobs": 2, "seed": 11})
    summary = generate(cfg)
    assert (summary.total, summary.committed, summary.rejected, summary.errors, summary.missing) == (
        6,
        6,
        0,
        0,
        0,
    )
    ds = load_generations(tmp_path / "out")
    assert ds["prompt_id"] == [str(i) for i in range(1, 7)]  # line numbers stand in for ids
    row = ds[0]
    assert row["prompt"] == "p0" and row["messages"] is None and row["sample_index"] == 0
    assert row["completion"] == answer_text("p0", 11, 0)
    assert row["finish_reason"] == "stop"
    assert json.loads(row["teacher"]) == {
        "kind": "openai",
        "base_url": server.base_url,
        "model": "teacher-m",
        "api": "chat",
        "rendering": {"api": "chat"},  # the server applied its own chat template
    }
    assert json.loads(row["sampling"]) == {
        "max_tokens": 512,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": 11,
        "stop": None,
        "top_logprobs": 2,
    }
    logprobs = json.loads(row["logprobs"])
    assert [e["token"] for e in logprobs] == ["answer(p0)", " seed=11", " sample=0"]
    assert logprobs[1] == {
        "token": " seed=11",
        "logprob": pytest.approx(-0.2),
        "bytes": list(b" seed=11"),
        "top": [
            {"token": " seed=11", "logprob": pytest.approx(-0.2), "bytes": list(b" seed=11")},
            {"token": " seed=1", "logprob": pytest.approx(-1.2), "bytes": list(b" seed=1")},
        ],
    }
    assert (row["prompt_tokens"], row["completion_tokens"]) == (1, 3)
    assert row["created"].endswith("Z")
    sent = server.requests[0].body
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2 and sent["max_tokens"] == 512


def test_completions_api_and_chat_messages(server, tmp_path):
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "hello"}]
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"id": "a", "prompt": "plain"}, {"id": "b", "messages": chat}]
    )
    generate(_config(server, prompts, tmp_path / "chat"))
    ds = load_generations(tmp_path / "chat")
    assert ds["messages"] == [None, chat] and ds["prompt"] == ["plain", None]
    assert [r.body["messages"] for r in server.requests if r.key == "hello"] == [chat]

    plain = write_jsonl(tmp_path / "plain.jsonl", [{"id": "a", "prompt": "plain"}])
    cfg = _config(
        server, plain, tmp_path / "cmpl", teacher={"api": "completions"}, sampling={"top_logprobs": 1}
    )
    generate(cfg)
    row = load_generations(tmp_path / "cmpl")[0]
    assert server.requests[-1].path == "/v1/completions" and server.requests[-1].body["logprobs"] == 1
    assert json.loads(row["logprobs"])[0] == {
        "token": "answer(plain)",
        "logprob": pytest.approx(-0.1),
        "top": [{"token": "answer(plain)", "logprob": pytest.approx(-0.1)}],
    }
    with pytest.raises(
        GenerationError, match=r"p.jsonl: line 2: a chat prompt .* teacher.api is 'completions'"
    ):
        generate(_config(server, prompts, tmp_path / "cmpl2", teacher={"api": "completions"}))


def test_rerun_sends_nothing_and_more_samples_only_ask_for_the_new_ones(server, prompts_file, tmp_path):
    prompts = prompts_file(4)
    generate(_config(server, prompts, tmp_path / "out", sampling={"samples": 2, "seed": 100}))
    assert server.count() == 8
    assert sorted(r.seed for r in server.requests if r.key == "p0") == [100, 101]
    again = generate(_config(server, prompts, tmp_path / "out", sampling={"samples": 2, "seed": 100}))
    assert server.count() == 8 and (again.already_done, again.committed, again.requests) == (8, 0, 0)
    more = generate(_config(server, prompts, tmp_path / "out", sampling={"samples": 3, "seed": 100}))
    assert server.count() == 12 and more.committed == 4
    assert sorted(r.seed for r in server.requests if r.key == "p0") == [100, 101, 102]
    ds = load_generations(tmp_path / "out")
    assert len(ds) == 12 and len(set(ds["record_id"])) == 12
    assert ds.filter(lambda r: r["prompt_id"] == "1")["completion"] == [
        answer_text("p0", 100 + i, 0) for i in range(3)
    ]


def test_samples_per_request_asks_for_n_at_once(server, prompts_file, tmp_path):
    cfg = _config(
        server, prompts_file(2), tmp_path / "out", sampling={"samples": 3}, teacher={"samples_per_request": 3}
    )
    summary = generate(cfg)
    assert server.count() == 2 and [r.body["n"] for r in server.requests] == [3, 3]
    assert summary.committed == 6
    ds = load_generations(tmp_path / "out")
    assert ds["sample_index"] == [0, 1, 2, 0, 1, 2]
    assert ds["completion"][:3] == [answer_text("p0", None, j) for j in range(3)]


def test_duplicate_prompt_texts_are_separate_records(server, tmp_path):
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "same"}, {"prompt": "same"}, {"id": "x", "prompt": "same"}]
    )
    summary = generate(_config(server, prompts, tmp_path / "out"))
    ds = load_generations(tmp_path / "out")
    assert summary.committed == 3 and server.count("same") == 3
    assert ds["prompt_id"] == ["1", "2", "x"] and len(set(ds["record_id"])) == 3


@pytest.mark.parametrize(
    "faults",
    [
        [Fault.status(429)],
        [Fault.status(500), Fault.status(502)],
        [Fault.status(503), Fault.status(408), Fault.status(409)],
        [Fault.drop()],
    ],
    ids=["429", "500-502", "503-408-409", "dropped-connection"],
)
def test_transient_failures_are_retried_until_success(server, prompts_file, tmp_path, faults):
    server.script("p1", list(faults))
    summary = generate(_config(server, prompts_file(3), tmp_path / "out"))
    assert server.count("p1") == len(faults) + 1
    assert (summary.committed, summary.errors, summary.retries) == (3, 0, len(faults))


@pytest.mark.parametrize("code", [400, 403, 404, 422])
def test_client_errors_are_not_retried_and_land_in_errors_jsonl(server, prompts_file, tmp_path, code):
    server.script("p1", [Fault.status(code)])
    summary = generate(_config(server, prompts_file(3), tmp_path / "out"))
    assert server.count("p1") == 1
    assert (summary.committed, summary.errors, summary.missing) == (2, 1, 1)
    (error,) = _lines(tmp_path / "out" / "errors.jsonl")
    assert (error["prompt_id"], error["code"], error["retryable"], error["attempts"]) == (
        "2",
        f"http_{code}",
        False,
        1,
    )
    # a rerun retries what errored, and only that
    again = generate(_config(server, prompts_file(3), tmp_path / "out"))
    assert server.count("p1") == 2 and (again.committed, again.missing) == (1, 0)


def test_exhausted_retries_go_to_errors_jsonl_never_dropped(server, prompts_file, tmp_path):
    server.script("p0", [Fault.status(500)] * 4)
    summary = generate(_config(server, prompts_file(2), tmp_path / "out"))
    assert server.count("p0") == FAST_RETRY["max_attempts"]
    (error,) = _lines(tmp_path / "out" / "errors.jsonl")
    assert (error["code"], error["retryable"], error["attempts"]) == ("http_500", True, 4)
    assert summary.error_codes == {"http_500": 1} and summary.missing == 1


def test_timeouts_are_retried(server, prompts_file, tmp_path):
    server.script("p0", [Fault.latency(1.0)])
    summary = generate(_config(server, prompts_file(1), tmp_path / "out", teacher={"timeout_s": 0.25}))
    assert summary.committed == 1 and summary.retries == 1 and server.count("p0") == 2


def test_retry_after_is_honoured_and_capped(server, prompts_file, tmp_path):
    server.script("p0", [Fault.status(429, retry_after=0.6)])
    server.script("p1", [Fault.status(503, retry_after=30)])
    cfg = _config(server, prompts_file(2), tmp_path / "out", retry={**FAST_RETRY, "retry_after_cap_s": 0.3})
    started = time.monotonic()
    summary = generate(cfg)
    assert summary.committed == 2 and time.monotonic() - started < 5  # not 30 s

    def gap(key):
        first, second = [r.time for r in server.requests if r.key == key]
        return second - first

    assert 0.3 <= gap("p1") < 0.3 + 0.5  # capped
    server.clear()
    cfg = _config(server, prompts_file(1), tmp_path / "out2", retry={**FAST_RETRY, "retry_after_cap_s": 5})
    server.script("p0", [Fault.status(429, retry_after=0.6)])
    generate(cfg)
    assert 0.6 <= gap("p0") < 0.6 + 0.5  # honoured, not the 10 ms backoff


def test_401_stops_the_run_with_a_clear_message(server, prompts_file, tmp_path, monkeypatch):
    server.state.require_key = "the-right-key-123"
    monkeypatch.setenv("TEACHER_KEY", "a-wrong-key-456")
    cfg = _config(
        server, prompts_file(40), tmp_path / "out", teacher={"api_key_env": "TEACHER_KEY"}, concurrency=2
    )
    with pytest.raises(TeacherAuthError, match=r"rejected the API key \(HTTP 401\).*TEACHER_KEY"):
        generate(cfg)
    assert server.count() <= 2  # stopped at once, not 40 failing requests
    assert {e["code"] for e in _lines(tmp_path / "out" / "errors.jsonl")} == {"http_401"}
    monkeypatch.delenv("TEACHER_KEY")
    with pytest.raises(
        TeacherAuthError, match=r"needs an API key \(HTTP 401\): set the environment variable TEACHER_KEY"
    ):
        generate(cfg)
    monkeypatch.setenv("TEACHER_KEY", "the-right-key-123")
    assert generate(cfg).missing == 0


def test_bad_answers_become_rejects_with_reason_codes(server, prompts_file, tmp_path):
    server.script("p0", [Fault.malformed()])
    server.script("p1", [Fault.length()])
    server.script("p2", [Fault.empty_choices()])
    server.script("p3", [Fault.nonfinite()])
    cfg = _config(server, prompts_file(5), tmp_path / "out", sampling={"top_logprobs": 1})
    summary = generate(cfg)
    expected = {"unparsable_body": 1, "length": 1, "empty_choices": 1, "nonfinite_logprobs": 1}
    assert summary.reject_reasons == expected and summary.committed == 1 and summary.missing == 0
    rejects = {r["prompt_id"]: r for r in _lines(tmp_path / "out" / "rejects.jsonl")}
    assert {k: v["reason"] for k, v in rejects.items()} == {
        "1": "unparsable_body",
        "2": "length",
        "3": "empty_choices",
        "4": "nonfinite_logprobs",
    }
    assert (
        rejects["2"]["completion"] == answer_text("p1", None, 0) and rejects["2"]["finish_reason"] == "length"
    )
    assert load_generations(tmp_path / "out")["prompt"] == ["p4"]
    # rejects are final: a rerun does not ask again ...
    assert generate(cfg).requests == 0
    # ... unless asked to; and a truncated answer may be kept when allowed
    server.script("p1", [Fault.length()])
    retried = generate(cfg.model_copy(update={"retry_rejects": True, "allow_length": True}))
    assert retried.requests == 4 and retried.committed == 4
    ds = load_generations(tmp_path / "out")
    assert sorted(ds["finish_reason"]) == ["length", "stop", "stop", "stop", "stop"]


def test_concurrency_bounds_requests_in_flight(server, prompts_file, tmp_path):
    server.latency = 0.1
    generate(_config(server, prompts_file(12), tmp_path / "out", concurrency=3))
    assert server.max_in_flight == 3


class _LimiterTime:
    """Time for the rate limiter that passes only while it waits, and only once every request it let through
    has been answered: as if the server answered instantly. Admission times are then exact (no wall clock),
    so a limit can be checked from above as well as from below."""

    def __init__(self) -> None:
        self.now = 0.0
        self.admitted: list[float] = []  # the (fake) time each request was let through
        self.used: list[int | None] = []  # the tokens each answered request reported
        self.in_flight = 0

    async def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + 60  # a hang, not slowness
        while self.in_flight:  # the loopback server answers what was let through, in real time
            assert time.monotonic() < deadline, "a request let through was never answered"
            await _real_sleep(0.001)
        self.now += seconds

    def install(self, monkeypatch) -> None:
        """The generation run's limiter on this time: its buckets read `now` and nap in `sleep`."""
        import kdistill.generate.run
        from kdistill.generate.teachers import limits

        fake = self

        class Limiter(limits.RateLimiter):
            def __init__(self, requests_per_minute, tokens_per_minute) -> None:
                clock = lambda: fake.now  # noqa: E731
                self.requests = (
                    limits.TokenBucket(requests_per_minute, clock=clock) if requests_per_minute else None
                )
                self.tokens = (
                    limits.TokenBucket(tokens_per_minute, clock=clock) if tokens_per_minute else None
                )

            async def acquire(self, estimated_tokens: int) -> None:
                await super().acquire(estimated_tokens)
                fake.admitted.append(fake.now)
                fake.in_flight += 1

            def settle_tokens(self, estimated_tokens: int, used_tokens: int | None) -> None:
                super().settle_tokens(estimated_tokens, used_tokens)
                fake.used.append(used_tokens)
                fake.in_flight -= 1

        monkeypatch.setattr(kdistill.generate.run, "RateLimiter", Limiter)
        monkeypatch.setattr(limits, "asyncio", types.SimpleNamespace(Lock=asyncio.Lock, sleep=self.sleep))


def test_requests_per_minute_limit(server, prompts_file, tmp_path, monkeypatch):
    """300/min = 5/s with a bucket of 5: 5 requests at once, then exactly one every 0.2 s."""
    clock = _LimiterTime()
    clock.install(monkeypatch)
    generate(_config(server, prompts_file(10), tmp_path / "out", requests_per_minute=300, concurrency=10))
    assert clock.admitted == pytest.approx([0.0] * 5 + [0.2, 0.4, 0.6, 0.8, 1.0], abs=1e-6)
    assert len(server.requests) == 10  # every request the server saw was let through by the limiter


def test_tokens_per_minute_limit(server, prompts_file, tmp_path, monkeypatch):
    """660 tokens/min = 11/s with a bucket of 11. Each request reserves its estimate (15 prompt characters
    / 4 + 1 + 10 = 14, more than the bucket: it waits for a full one) and gives back what it did not use,
    so with instant answers request k waits exactly until the tokens its predecessors used have refilled:
    t_k = (used_0 + ... + used_{k-1}) / 11 s (naps add at most 1 ms each)."""
    clock = _LimiterTime()
    clock.install(monkeypatch)
    cfg = _config(
        server,
        prompts_file(8),
        tmp_path / "out",
        tokens_per_minute=660,
        sampling={"max_tokens": 10},
        concurrency=8,
    )
    generate(cfg)
    assert len(clock.used) == 8 and all(u is not None and 0 < u < 14 for u in clock.used)
    expected = [sum(clock.used[:k]) / 11 for k in range(8)]
    assert clock.admitted == pytest.approx(expected, abs=0.01)
    assert len(server.requests) == 8


def test_a_dead_endpoint_stops_after_consecutive_errors(server, prompts_file, tmp_path):
    server.fault_all = Fault.status(500)
    cfg = _config(
        server,
        prompts_file(50),
        tmp_path / "out",
        concurrency=1,
        max_consecutive_errors=3,
        retry={**FAST_RETRY, "max_attempts": 2},
    )
    summary = generate(cfg)
    assert summary.stopped.startswith("3 requests in a row failed (last: http_500")
    assert summary.errors == 3 and server.count() == 6 and summary.missing == 50


def test_another_teacher_or_sampling_in_the_same_dir_is_refused(server, prompts_file, tmp_path):
    prompts = prompts_file(2)
    generate(_config(server, prompts, tmp_path / "out"))
    with pytest.raises(
        GenerationError,
        match=r"holds rows of another teacher or sampling \(sampling.temperature: 1.0 -> 0.5\)",
    ):
        generate(_config(server, prompts, tmp_path / "out", sampling={"temperature": 0.5}))
    mixed = generate(
        _config(server, prompts, tmp_path / "out", sampling={"temperature": 0.5}, allow_mixed=True)
    )
    assert mixed.committed == 2 and mixed.rows_in_dataset == 4


def test_progress_and_cost(server, prompts_file, tmp_path):
    seen = []
    cfg = _config(server, prompts_file(5), tmp_path / "out", price_input_per_1m=1.0, price_output_per_1m=2.0)
    summary = generate(cfg, progress=lambda s: seen.append((s.done, s.total)))
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert summary.prompt_tokens == 5 and summary.completion_tokens == 15
    assert summary.cost == pytest.approx((5 * 1.0 + 15 * 2.0) / 1e6)


def test_record_ids_depend_on_everything_that_changes_an_answer():
    from kdistill.generate.prompts import Prompt

    p = Prompt(id="1", prompt="x")
    teacher = {"kind": "openai", "base_url": "u", "model": "m", "api": "chat"}
    sampling = {
        "max_tokens": 5,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": None,
        "stop": None,
        "top_logprobs": None,
    }
    base = record_id(p, teacher, sampling, 0)
    assert record_id(Prompt(id="1", prompt="x"), dict(reversed(teacher.items())), sampling, 0) == base
    variants = [
        record_id(Prompt(id="2", prompt="x"), teacher, sampling, 0),
        record_id(Prompt(id="1", prompt="y"), teacher, sampling, 0),
        record_id(Prompt(id="1", messages=({"role": "user", "content": "x"},)), teacher, sampling, 0),
        record_id(p, {**teacher, "model": "m2"}, sampling, 0),
        record_id(p, {**teacher, "base_url": "v"}, sampling, 0),
        record_id(p, teacher, {**sampling, "temperature": 0.5}, 0),
        record_id(p, teacher, {**sampling, "seed": 1}, 0),
        record_id(p, teacher, sampling, 1),
    ]
    assert len({base, *variants}) == len(variants) + 1


class _CountingTeacher:
    """Wraps a built teacher; records whether generate() closed it."""

    def __init__(self, inner):
        self.inner, self.closed = inner, False
        self.identity, self.max_in_flight = inner.identity, inner.max_in_flight

    async def complete(self, request):
        assert not self.closed, "used after close"
        return await self.inner.complete(request)

    async def aclose(self):
        self.closed = True
        await self.inner.aclose()


def test_a_teacher_the_caller_passes_stays_open_between_async_runs(server, prompts_file, tmp_path):
    """agenerate() closes only a teacher it built: one client serves two runs in the caller's loop;
    generate(), which owns its event loop, closes the teacher at the end of that loop."""
    import asyncio

    from kdistill.generate.run import agenerate, build_teacher
    from kdistill.generate.teachers import SamplingParams

    params = SamplingParams(max_tokens=512, temperature=1.0, top_p=1.0)
    first, second = (
        _config(server, prompts_file(2, "two.jsonl"), tmp_path / "a"),
        _config(server, prompts_file(3, "three.jsonl"), tmp_path / "b"),
    )

    async def two_runs():
        teacher = _CountingTeacher(build_teacher(first, params)[0])
        done = [(await agenerate(cfg, teacher=teacher)).committed for cfg in (first, second)]
        still_open = not teacher.closed
        await teacher.aclose()
        return done, still_open

    assert asyncio.run(two_runs()) == ([2, 3], True)

    teacher = _CountingTeacher(build_teacher(first, params)[0])
    assert (
        generate(_config(server, prompts_file(1, "one.jsonl"), tmp_path / "c"), teacher=teacher).committed
        == 1
    )
    assert teacher.closed


# ---------------------------------------------------------------- OpenAI organization headers

ORG_ENV = {
    "OPENAI_ORG_ID": "org-canary-1",
    "OPENAI_PROJECT_ID": "proj-canary-2",
    "OPENAI_ORGANIZATION": "org-canary-3",
}


def _org_headers(request) -> dict[str, str]:
    return {
        k.lower(): v
        for k, v in request.headers.items()
        if k.lower() in ("openai-organization", "openai-project")
    }


def test_org_and_project_ids_reach_another_server_only_when_asked(
    server, prompts_file, tmp_path, monkeypatch
):
    for name, value in ORG_ENV.items():
        monkeypatch.setenv(name, value)
    prompts = prompts_file(2)
    generate(_config(server, prompts, tmp_path / "auto"))
    generate(_config(server, prompts, tmp_path / "off", teacher={"send_org_headers": False}))
    assert server.count() == 4 and [_org_headers(r) for r in server.requests] == [{}] * 4
    assert not [v for r in server.requests for v in r.headers.values() if "canary" in v]

    server.clear()
    generate(_config(server, prompts, tmp_path / "on", teacher={"send_org_headers": True}))
    assert [_org_headers(r) for r in server.requests] == [
        {"openai-organization": "org-canary-1", "openai-project": "proj-canary-2"}
    ] * 2
    # where the headers go does not change an answer: same record ids, so turning it on asks nothing again
    assert load_generations(tmp_path / "on")["record_id"] == load_generations(tmp_path / "auto")["record_id"]


def test_org_headers_default_to_openais_own_api_only(monkeypatch):
    import asyncio

    from kdistill.generate.teachers import SamplingParams
    from kdistill.generate.teachers.openai_endpoint import OpenAIEndpointTeacher, is_openai_api

    official = ["https://api.openai.com/v1", "https://eu.api.openai.com/v1", "https://API.OpenAI.com:443/v1"]
    other = [
        "http://127.0.0.1:8000/v1",
        "http://api.openai.com/v1",  # not TLS: not where an account's ids should travel
        "https://api.openai.com.example.net/v1",
        "https://example.net/api.openai.com/v1",
        "https://notapi.openai.com/v1",
        "https://user:pw@example.net/v1?host=api.openai.com",
    ]
    assert [is_openai_api(u) for u in official + other] == [True] * len(official) + [False] * len(other)

    for name, value in ORG_ENV.items():
        monkeypatch.setenv(name, value)

    def sent(base_url: str, send: bool | None) -> dict[str, str]:
        teacher = OpenAIEndpointTeacher(
            base_url=base_url, model="m", api_key="k", sampling=SamplingParams(), send_org_headers=send
        )
        headers = teacher._client.default_headers  # what the client adds to every request
        asyncio.run(teacher.aclose())
        # a header the client leaves out is an `Omit` marker here, not a string
        return {k: v for k, v in headers.items() if k.startswith("OpenAI-") and isinstance(v, str)}

    ids = {"OpenAI-Organization": "org-canary-1", "OpenAI-Project": "proj-canary-2"}
    assert sent("https://api.openai.com/v1", None) == ids
    assert sent("https://api.openai.com/v1", False) == {}
    assert sent("http://127.0.0.1:8000/v1", None) == {}
    assert sent("http://127.0.0.1:8000/v1", True) == ids


def test_send_org_headers_is_validated_and_optional():
    base = {"prompts": "p.jsonl", "out": "o", "teacher": {"model": "m"}}
    assert load_generation_config(None, base).teacher.send_org_headers is None
    with pytest.raises(
        ConfigError,
        match=r"^command line: generation.teacher.send_org_headers: Input should be a valid boolean",
    ):
        load_generation_config(None, {**base, "teacher": {"model": "m", "send_org_headers": "sometimes"}})
    with pytest.raises(ConfigError, match=r"generation.teacher.send_org_headers: unknown key"):
        load_generation_config(
            None, {**base, "teacher": {"kind": "hf_local", "model": "m", "send_org_headers": True}}
        )


def test_the_old_import_paths_still_work():
    """lm/, benchmarks and user code import the config from kdistill.generate.run, and the store through
    kdistill.data: the same objects as their new homes."""
    import kdistill.data
    import kdistill.generate.config
    import kdistill.generate.run
    import kdistill.generate.store

    for name in ("GenerationConfig", "load_generation_config"):
        assert getattr(kdistill.generate.run, name) is getattr(kdistill.generate.config, name)
    for name in ("load_generations", "export_generations"):
        assert getattr(kdistill.data, name) is getattr(kdistill.generate.store, name)
