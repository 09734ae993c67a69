"""Several teacher servers (`teacher.endpoints`, repeated --base-url): dispatch, health, failover, identity.

The dispatch and health rules are checked on fake teachers whose requests finish when the test says
(deterministic); the whole pipeline against real loopback servers that are killed and restarted mid-run.
"""

import asyncio
import json
import threading

import httpx2
import openai
import pytest
import yaml
from tests.fixtures.openai_server import Fault, ScriptedServer, answer_text
from tests.generate.cli_main import cli_app
from tests.generate.helpers import write_jsonl
from typer.testing import CliRunner

from kdistill.generate.config import GenerationConfig, load_generation_config
from kdistill.generate.records import record_id, sampling_identity
from kdistill.generate.run import generate
from kdistill.generate.store import load_generations
from kdistill.generate.teachers import CompletionRequest, TeacherResponse
from kdistill.generate.teachers.pool import EndpointPool, PoolMember, pool_identity
from kdistill.generate.teachers.retry import classify
from kdistill.schema import ConfigError

FAST_RETRY = {"base_delay_s": 0.01, "max_delay_s": 0.05, "max_attempts": 3}
FAST_HEALTH = {"backoff_s": 0.05, "max_backoff_s": 0.2}
REQUEST = CompletionRequest(prompt="p", messages=None)


# ------------------------------------------------------------------------------- fake teachers (unit)


class FakeTeacher:
    """Requests wait until `answer()` / `fail()` releases them, oldest first."""

    max_in_flight = None

    def __init__(self, url: str, api: str = "chat") -> None:
        self.identity = {"kind": "openai", "base_url": url, "model": "m", "api": api}
        self.rendering = {"api": api}
        self.waiting: list[asyncio.Future] = []
        self.received = 0
        self.fail_next: list[Exception] = []  # raised at once by the next requests

    async def complete(self, request: CompletionRequest) -> TeacherResponse:
        self.received += 1
        if self.fail_next:
            raise self.fail_next.pop(0)
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        return await future

    def answer(self) -> None:
        self.waiting.pop(0).set_result(TeacherResponse(detail=self.identity["base_url"]))

    def fail(self, err: Exception) -> None:
        self.waiting.pop(0).set_exception(err)

    async def aclose(self) -> None:
        pass


def _request(url: str) -> httpx2.Request:
    return httpx2.Request("POST", url)


def connection_error(url="http://a") -> Exception:
    return openai.APIConnectionError(request=_request(url))


def status_error(code: int, url="http://a") -> Exception:
    return openai.APIStatusError(
        f"Error code: {code}", response=httpx2.Response(code, request=_request(url)), body=None
    )


async def settle() -> None:
    for _ in range(20):  # let every ready task run until it blocks
        await asyncio.sleep(0)


def _pool(*teachers, caps=None, weights=None, clock=None, **health):
    caps = caps or [None] * len(teachers)
    weights = weights or [1.0] * len(teachers)
    members = [PoolMember(t, c, w) for t, c, w in zip(teachers, caps, weights, strict=True)]
    return EndpointPool(members, clock=clock or (lambda: 0.0), **health)


def test_requests_go_where_outstanding_over_weight_is_least():
    async def main():
        a, b, c = FakeTeacher("http://a"), FakeTeacher("http://b"), FakeTeacher("http://c")
        pool = _pool(a, b, weights=[3.0, 1.0])
        tasks = [asyncio.create_task(pool.complete(REQUEST)) for _ in range(8)]
        await settle()
        assert (len(a.waiting), len(b.waiting)) == (6, 2)  # 6/3 == 2/1
        for _ in range(3):
            a.answer()
        await settle()
        assert sum(t.done() for t in tasks) == 3
        tasks.append(asyncio.create_task(pool.complete(REQUEST)))
        await settle()
        assert (len(a.waiting), len(b.waiting)) == (4, 2)  # 3/3 < 2/1: the new one went to a

        even = _pool(FakeTeacher("http://x"), FakeTeacher("http://y"), c)
        more = [asyncio.create_task(even.complete(REQUEST)) for _ in range(7)]
        await settle()
        assert sorted(s.outstanding for s in even.endpoint_status()) == [2, 2, 3]
        for t in (*tasks, *more):
            t.cancel()
        await asyncio.gather(*tasks, *more, return_exceptions=True)
        assert [s.outstanding for s in pool.endpoint_status()] == [0, 0]  # cancelled slots are freed

    asyncio.run(main())


def test_a_full_endpoint_takes_no_more_and_a_freed_slot_takes_the_next_request():
    async def main():
        a, b = FakeTeacher("http://a"), FakeTeacher("http://b")
        pool = _pool(a, b, caps=[2, 1])
        assert pool.max_in_flight == 3
        tasks = [asyncio.create_task(pool.complete(REQUEST)) for _ in range(5)]
        await settle()
        assert (len(a.waiting), len(b.waiting)) == (2, 1)  # two requests wait on our side
        b.answer()
        await settle()
        done = [t for t in tasks if t.done()]
        assert (len(a.waiting), len(b.waiting)) == (2, 1) and len(done) == 1  # b took a waiting one
        assert (await done[0]).detail == "http://b"
        while a.waiting or b.waiting:
            (a if a.waiting else b).answer()
            await settle()
        assert sum(t.done() for t in tasks) == 5 and a.received + b.received == 5

    asyncio.run(main())


def test_a_connection_error_ejects_at_once_and_the_request_is_answered_elsewhere():
    async def main():
        now = [0.0]
        a, b = FakeTeacher("http://a"), FakeTeacher("http://b")
        pool = _pool(a, b, clock=lambda: now[0], backoff_s=1.0, max_backoff_s=4.0)
        first = asyncio.create_task(pool.complete(REQUEST))
        await settle()
        assert len(a.waiting) == 1  # ties go to the first listed
        a.fail(connection_error())
        await settle()
        assert len(b.waiting) == 1  # re-sent to b at once, no retry backoff
        b.answer()
        assert (await first).detail == "http://b"
        state = {s.url: s for s in pool.endpoint_status()}
        assert state["http://a"].state == "down" and state["http://a"].retry_in_s == 1.0
        assert (state["http://a"].failed, state["http://a"].ejections) == (1, 1)

        # out of rotation: everything goes to b until the backoff is over
        tasks = [asyncio.create_task(pool.complete(REQUEST)) for _ in range(3)]
        await settle()
        assert (a.received, len(b.waiting)) == (1, 3)
        # then exactly one request probes a; the others still go to b
        now[0] = 1.0
        tasks += [asyncio.create_task(pool.complete(REQUEST)) for _ in range(2)]
        await settle()
        assert (len(a.waiting), len(b.waiting)) == (1, 4)
        assert pool.endpoint_status()[0].state == "probing"
        a.fail(connection_error())  # the probe fails: out again, for twice as long
        await settle()
        assert pool.endpoint_status()[0].retry_in_s == 2.0 and len(b.waiting) == 5
        now[0] = 3.0
        tasks.append(asyncio.create_task(pool.complete(REQUEST)))
        await settle()
        a.answer()  # the second probe is answered: back in rotation, backoff reset
        await settle()
        assert pool.endpoint_status()[0].state == "up" and tasks[-1].done()
        while b.waiting:
            b.answer()
        await asyncio.gather(*tasks)

    asyncio.run(main())


@pytest.mark.parametrize("error", [status_error(503), openai.APITimeoutError(request=_request("http://a"))])
def test_timeouts_and_5xx_eject_after_consecutive_failures(error):
    async def main():
        a, b = FakeTeacher("http://a"), FakeTeacher("http://b")
        pool = _pool(a, b, failures_to_eject=2)
        a.fail_next = [error, error]
        b.fail_next = [error]
        # request 1 fails on a, then on b: both tried, so the run's retry policy gets the error
        with pytest.raises(type(error)):
            await pool.complete(REQUEST)
        assert [s.state for s in pool.endpoint_status()] == ["up", "up"]  # one failure each
        # request 2: a fails a second time in a row (ejected), b answers
        task = asyncio.create_task(pool.complete(REQUEST))
        await settle()
        b.answer()
        await task
        assert [s.state for s in pool.endpoint_status()] == ["down", "up"]
        assert [s.failed for s in pool.endpoint_status()] == [2, 1]

    asyncio.run(main())


def test_client_errors_are_not_the_servers_health_and_are_not_failed_over():
    async def main():
        a, b = FakeTeacher("http://a"), FakeTeacher("http://b")
        pool = _pool(a, b, failures_to_eject=1)
        for sent, code in enumerate((429, 400, 401, 429), start=1):
            a.fail_next, b.fail_next = [status_error(code)], [status_error(code)]
            with pytest.raises(openai.APIStatusError) as caught:
                await pool.complete(REQUEST)
            assert caught.value.status_code == code
            assert a.received + b.received == sent  # raised after one server, not tried on the other
        assert [s.state for s in pool.endpoint_status()] == ["up", "up"]
        assert [s.failed for s in pool.endpoint_status()] == [0, 0]

    asyncio.run(main())


def test_when_every_endpoint_is_out_the_last_error_is_raised_as_a_dead_servers():
    async def main():
        a, b = FakeTeacher("http://a"), FakeTeacher("http://b")
        pool = _pool(a, b, backoff_s=5.0, max_backoff_s=5.0)
        a.fail_next, b.fail_next = [connection_error("http://a")], [connection_error("http://b")]
        with pytest.raises(openai.APIConnectionError) as first:
            await pool.complete(REQUEST)
        assert first.value.request.url == "http://b"
        # both out of rotation and not due: raised without sending anything
        with pytest.raises(openai.APIConnectionError) as second:
            await pool.complete(REQUEST)
        assert (a.received, b.received) == (1, 1)
        assert classify(second.value).code == "connection_error"

    asyncio.run(main())


def test_pool_identity_names_no_server_and_members_must_agree():
    a, b = FakeTeacher("http://a"), FakeTeacher("http://b")
    assert _pool(a, b).identity == {"kind": "openai", "model": "m", "api": "chat"}
    assert pool_identity(a.identity) == _pool(b).identity
    with pytest.raises(ValueError, match="must serve the same teacher"):
        _pool(a, FakeTeacher("http://c", api="completions"))


# ------------------------------------------------------------------------------- real servers


@pytest.fixture
def servers():
    """servers(n, **kwargs) -> n started ScriptedServers, stopped at the end of the test."""
    started: list[ScriptedServer] = []

    def make(n: int, **kwargs) -> list[ScriptedServer]:
        new = [ScriptedServer(**kwargs).start() for _ in range(n)]
        started.extend(new)
        return new

    yield make
    for s in started:
        s.stop()


def _pool_config(urls, prompts, out, caps=None, **overrides) -> GenerationConfig:
    endpoints = [{"base_url": u} if caps is None else {"base_url": u, "concurrency": caps} for u in urls]
    teacher = {
        "endpoints": endpoints,
        "model": "teacher-m",
        "api_key_env": None,
        "endpoint_health": FAST_HEALTH,
    }
    teacher.update(overrides.pop("teacher", {}))
    data = {"prompts": prompts, "out": out, "teacher": teacher, "retry": FAST_RETRY, "concurrency": 12}
    data.update(overrides)
    return GenerationConfig.model_validate(data)


def _check_exactly_once(out, n):
    ds = load_generations(out)
    assert len(ds) == n and len(set(ds["record_id"])) == n
    assert sorted(ds["prompt"]) == sorted(f"p{i}" for i in range(n))
    assert all(row["completion"] == answer_text(row["prompt"], None, 0) for row in ds)
    return ds


def test_load_spreads_over_three_servers_within_their_caps(servers, prompts_file, tmp_path):
    trio = servers(3, latency=0.02, max_concurrency=4)
    summary = generate(_pool_config([s.base_url for s in trio], prompts_file(90), tmp_path / "out", caps=4))
    assert (summary.committed, summary.missing, summary.errors) == (90, 0, 0)
    counts = [s.count() for s in trio]
    assert sum(counts) == 90 and min(counts) >= 20  # an even share is 30
    assert max(s.max_in_flight for s in trio) <= 4  # the pool never queues on a server
    assert [e["answered"] for e in summary.endpoints] == counts
    _check_exactly_once(tmp_path / "out", 90)


def test_a_server_killed_mid_run_loses_nothing_and_its_requests_are_sent_elsewhere(
    servers, prompts_file, tmp_path
):
    trio = servers(3, latency=0.03, max_concurrency=4)
    victim = trio[1]
    n = 120
    killed_with: list[set] = []
    in_flight: list[int] = []
    victim_states: set[str] = set()

    def kill_at_30(stats):
        victim_states.update(e.state for e in stats.endpoints if e.url == victim.base_url)
        # killed while it has requests in flight, so that there is something to re-send elsewhere
        if stats.committed >= 30 and not killed_with and victim.state.in_flight > 0:
            killed_with.append({r.key for r in victim.requests})  # what it had been sent by then
            in_flight.append(victim.state.in_flight)
            victim.kill()

    cfg = _pool_config([s.base_url for s in trio], prompts_file(n), tmp_path / "out", caps=4)
    summary = generate(cfg, progress=kill_at_30)
    assert (summary.committed, summary.missing, summary.errors, summary.rejected) == (n, 0, 0, 0)
    _check_exactly_once(tmp_path / "out", n)
    status = {e["url"]: e for e in summary.endpoints}[victim.base_url]
    assert status["ejections"] >= 1 and status["failed"] >= 1
    # the requests cut by the kill (and only they) were sent again, to the others: prompts sent twice
    others = {r.key for s in (trio[0], trio[2]) for r in s.requests}
    resent = killed_with[0] & others
    assert 1 <= len(resent) <= in_flight[0]
    assert status["answered"] == len(killed_with[0]) - len(resent)  # nothing answered after the kill
    assert sum(e["answered"] for e in summary.endpoints) == n
    assert summary.retries == 0  # failing over is not the run's retry
    assert {"up", "down"} <= victim_states  # what the progress display showed of it


def test_a_restarted_server_is_probed_back_into_rotation(servers, prompts_file, tmp_path):
    a, b = servers(2, latency=0.02, max_concurrency=2)
    b.kill()
    restarted: list[int] = []

    def restart_at_20(stats):
        if stats.committed >= 20 and not restarted:
            restarted.append(b.count())
            threading.Thread(target=b.restart).start()

    cfg = _pool_config([a.base_url, b.base_url], prompts_file(100), tmp_path / "out", caps=2, concurrency=4)
    summary = generate(cfg, progress=restart_at_20)
    assert (summary.committed, summary.missing) == (100, 0)
    status = summary.endpoints[1]
    assert status["ejections"] >= 1 and status["state"] == "up"
    assert status["answered"] >= 10  # back in rotation, taking a share again
    assert b.count() > restarted[0]
    _check_exactly_once(tmp_path / "out", 100)


def test_a_server_answering_503_is_ejected_and_probed_sparingly(servers, prompts_file, tmp_path):
    a, b = servers(2, latency=0.01)
    b.fault_all = Fault.status(503)
    cfg = _pool_config(
        [a.base_url, b.base_url],
        prompts_file(60),
        tmp_path / "out",
        concurrency=2,
        teacher={"endpoint_health": {"failures_to_eject": 2, "backoff_s": 10.0, "max_backoff_s": 10.0}},
    )
    summary = generate(cfg)
    assert (summary.committed, summary.errors) == (60, 0)
    assert b.count() <= 3  # two in a row to eject it (a third may have been in flight), then no probe
    assert summary.endpoints[1]["state"] == "down"


def test_every_server_dead_fails_as_one_dead_server_does(servers, prompts_file, tmp_path):
    dead = servers(3)
    for s in dead:
        s.kill()
    prompts = prompts_file(4)
    pool = generate(_pool_config([s.base_url for s in dead[:2]], prompts, tmp_path / "pool"))
    single_cfg = GenerationConfig.model_validate(
        {
            "prompts": prompts,
            "out": tmp_path / "single",
            "teacher": {"base_url": dead[2].base_url, "model": "teacher-m", "api_key_env": None},
            "retry": FAST_RETRY,
            "concurrency": 12,
        }
    )
    single = generate(single_cfg)
    for summary in (pool, single):
        assert (summary.committed, summary.errors, summary.missing) == (0, 4, 4)
        assert summary.error_codes == {"connection_error": 4} and summary.stopped is None
    errors = [json.loads(x) for x in (tmp_path / "pool" / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["attempts"] for e in errors) == [3] * 4  # after the retry policy, as one server

    fast = tmp_path / "fast-retry.yaml"  # the flags do not set the retry policy
    fast.write_text(yaml.safe_dump({"generation": {"retry": FAST_RETRY}}))
    result = CliRunner().invoke(
        cli_app(),
        ["generate", str(fast), "--prompts", str(prompts), "--out", str(tmp_path / "cli"), "--model", "m"]
        + [arg for s in dead[:2] for arg in ("--base-url", s.base_url)]
        + ["--api-key-env", "NO_SUCH_KEY_VAR"],
    )
    assert result.exit_code == 1, result.output  # EXIT_MISSING: rerun to retry, as for one dead server


# ------------------------------------------------------------------------------- config, CLI, identity


def test_endpoints_config_forms_and_errors_name_the_field(tmp_path):
    base = {"prompts": "p.jsonl", "out": "o", "teacher": {"model": "m"}}
    cfg = load_generation_config(
        None,
        {
            **base,
            "teacher": {"model": "m", "endpoints": ["http://a/v1", {"base_url": "http://b/v1", "weight": 2}]},
        },
    )
    assert [(e.base_url, e.concurrency, e.weight) for e in cfg.teacher.endpoints] == [
        ("http://a/v1", None, 1.0),
        ("http://b/v1", None, 2.0),
    ]
    cases = {
        "generation.teacher: endpoints: give either base_url": {
            "base_url": "http://a/v1",
            "endpoints": ["http://b"],
        },
        "generation.teacher.endpoints: .*a server is listed twice: http://a/v1": {
            "endpoints": ["http://a/v1", "http://a/v1/"]
        },
        "generation.teacher.endpoints: .*at least one endpoint": {"endpoints": []},
        "generation.teacher.endpoints.1.weight: .*greater than 0": {
            "endpoints": ["http://a", {"base_url": "http://b", "weight": 0}]
        },
        "generation.teacher.endpoints.0.concurrency: .*greater than or equal to 1": {
            "endpoints": [{"base_url": "http://a", "concurrency": 0}]
        },
        "generation.teacher.endpoints.0.port: unknown key": {
            "endpoints": [{"base_url": "http://a", "port": 1}]
        },
        "generation.teacher.endpoint_health: max_backoff_s": {
            "endpoints": ["http://a"],
            "endpoint_health": {"backoff_s": 5, "max_backoff_s": 1},
        },
    }
    for message, teacher in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_generation_config(None, {**base, "teacher": {"model": "m", **teacher}})


def test_base_url_flags_replace_the_files_servers(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "generation": {
                    "prompts": "p.jsonl",
                    "out": "o",
                    "teacher": {"model": "m", "endpoints": ["http://a", "http://b"]},
                }
            }
        )
    )
    one = load_generation_config(path, {"teacher": {"kind": "openai", "base_url": "http://c/v1"}})
    assert (one.teacher.base_url, one.teacher.endpoints) == ("http://c/v1", None)
    both = load_generation_config(
        path, {"teacher": {"kind": "openai", "endpoints": [{"base_url": "http://d"}]}}
    )
    assert [e.base_url for e in both.teacher.endpoints] == ["http://d"]
    kept = load_generation_config(path, {"teacher": {"model": "m2"}})
    assert [e.base_url for e in kept.teacher.endpoints] == ["http://a", "http://b"]


def test_repeated_base_url_flag_runs_a_pool(servers, prompts_file, tmp_path):
    a, b = servers(2, latency=0.01)
    prompts = prompts_file(12)
    result = CliRunner().invoke(
        cli_app(),
        [
            "generate",
            "--prompts",
            str(prompts),
            "--out",
            str(tmp_path / "out"),
            "--model",
            "m",
            "--concurrency",
            "4",
        ]
        + ["--base-url", a.base_url, "--base-url", b.base_url, "--api-key-env", "NO_SUCH_KEY_VAR"],
    )
    assert result.exit_code == 0, result.output
    assert a.count() > 0 and b.count() > 0 and a.count() + b.count() == 12
    assert f"server {a.base_url}" in result.output  # the summary's per-server rows
    teacher = json.loads(load_generations(tmp_path / "out")[0]["teacher"])
    assert "base_url" not in teacher and teacher["model"] == "m"


def test_record_ids_name_no_server_in_a_pool_and_one_base_url_keeps_its_own(servers, tmp_path):
    a, b, c = servers(3)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "x", "prompt": "px"}, {"id": "y", "prompt": "py"}])
    ids = {}
    for name, urls in {
        "ab": [a.base_url, b.base_url],
        "cb": [c.base_url, b.base_url],
        "c": [c.base_url],
    }.items():
        generate(_pool_config(urls, prompts, tmp_path / name))
        ids[name] = sorted(load_generations(tmp_path / name)["record_id"])
    assert ids["ab"] == ids["cb"] == ids["c"]  # whichever, however many servers answered

    single = GenerationConfig.model_validate(
        {
            "prompts": prompts,
            "out": tmp_path / "single",
            "teacher": {"base_url": a.base_url, "model": "teacher-m", "api_key_env": None},
        }
    )
    generate(single)
    rows = load_generations(tmp_path / "single")
    identity = {"kind": "openai", "base_url": a.base_url, "model": "teacher-m", "api": "chat"}
    sampling = sampling_identity(single.sampling)
    from kdistill.generate.prompts import load_prompts

    expected = sorted(record_id(p, identity, sampling, 0) for p in load_prompts(prompts))
    assert sorted(rows["record_id"]) == expected  # as before pools existed
    pool_expected = sorted(record_id(p, pool_identity(identity), sampling, 0) for p in load_prompts(prompts))
    assert ids["ab"] == pool_expected
