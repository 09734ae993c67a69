"""judge: against the loopback OpenAI-compatible server (real HTTP, the real openai client). The server
answers with a scripted chat completion (`Fault.status(200, body=...)`), so the judge's reply is whatever
the test says it is."""

from __future__ import annotations

import json

import pytest
from tests.fixtures.openai_server import Fault, ScriptedServer

from kdistill.verify import judge
from kdistill.verify.judge import JudgeUnavailable, judge_messages, parse_score

SECRET = "sk-kdistill-test-secret-4242"
KEY_ENV = "KDISTILL_JUDGE_TEST_KEY"
QUESTION = "Why is the sky blue?"
RUBRIC = "Mentions Rayleigh scattering and that shorter wavelengths scatter more."
ANSWER = "Rayleigh scattering: blue light scatters more than red."


def reply(text: str) -> Fault:
    """A 200 whose body is a chat completion saying `text`."""
    body = {
        "id": "chatcmpl-judge",
        "object": "chat.completion",
        "created": 0,
        "model": "judge",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    return Fault.status(200, body=json.dumps(body))


def header(request, name: str) -> str | None:
    return {k.lower(): v for k, v in request.headers.items()}.get(name)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ScriptedServer() as s:
        yield s


def grade(server: ScriptedServer, **overrides):
    kwargs = {
        "question": QUESTION,
        "rubric": RUBRIC,
        "threshold": 7.0,
        "base_url": server.base_url,
        "model": "judge-model",
        "api_key_env": KEY_ENV,
        "max_retries": 2,
        "timeout_s": 10.0,
    }
    return judge(ANSWER, **{**kwargs, **overrides})


def test_pass_and_what_was_asked(server):
    server.fault_all = reply("It names Rayleigh scattering.\nScore: 8")
    verdict = grade(server)
    assert (verdict.ok, verdict.reason) == (True, "judge_pass")
    assert "score 8" in verdict.detail and "threshold 7" in verdict.detail
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.body["model"] == "judge-model" and request.body["temperature"] == 0
    assert request.body["messages"] == judge_messages(ANSWER, question=QUESTION, rubric=RUBRIC)
    user = request.body["messages"][-1]["content"]
    assert QUESTION in user and RUBRIC in user and ANSWER in user
    assert header(request, "authorization") == f"Bearer {SECRET}"


def test_reference_is_in_the_prompt(server):
    server.fault_all = reply("Score: 9")
    grade(server, reference="Rayleigh scattering")
    assert "## Reference answer\nRayleigh scattering" in server.requests[0].body["messages"][-1]["content"]


@pytest.mark.parametrize(("text", "ok"), [("Score: 6.9", False), ("Score: 7", True), ("Score: 3/10", False)])
def test_fail_below_the_threshold_pass_at_it(server, text, ok):
    server.fault_all = reply(text)
    verdict = grade(server)
    assert (verdict.ok, verdict.reason) == (ok, "judge_pass" if ok else "judge_fail")


@pytest.mark.parametrize("text", ["Looks fine to me.", "Score: 11", "Score: -1", "Score: high", ""])
def test_unparsable_reply(server, text):
    server.fault_all = reply(text)
    verdict = grade(server)
    assert (verdict.ok, verdict.reason) == (False, "judge_unparsable")


def test_retries_a_5xx_then_grades(server):
    server.fault_all = reply("Score: 10")
    user_message = judge_messages(ANSWER, question=QUESTION, rubric=RUBRIC)[-1]["content"]
    server.script(user_message, [Fault.status(503, retry_after=0.01)])  # the first request only
    verdict = grade(server)
    assert verdict.reason == "judge_pass"
    assert server.count() == 2


def test_gives_up_after_its_retries_without_a_verdict(server):
    server.fault_all = Fault.status(503, retry_after=0.01, body=f"overloaded; you sent {SECRET}")
    with pytest.raises(JudgeUnavailable, match="HTTP 503") as caught:
        grade(server, max_retries=1)
    assert server.count() == 2
    assert SECRET not in str(caught.value)


def test_key_never_in_a_verdict_even_when_the_server_echoes_it(server):
    server.fault_all = Fault.echo_headers()  # a normal answer ending with "(you sent Bearer <key>)"
    verdict = grade(server)
    assert verdict.reason == "judge_unparsable"
    assert "you sent Bearer ***" in verdict.detail  # the echo was quoted, the key scrubbed
    assert SECRET not in json.dumps(verdict.to_dict())


def test_placeholder_key_when_the_variable_is_unset(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    server.fault_all = reply("Score: 8")
    assert grade(server).ok
    assert header(server.requests[0], "authorization") == "Bearer EMPTY"


def test_openai_account_headers_stay_with_openai(server, monkeypatch):
    monkeypatch.setenv("OPENAI_ORG_ID", "org-private")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-private")
    server.fault_all = reply("Score: 8")
    grade(server)
    headers = {k.lower() for k in server.requests[0].headers}
    assert "openai-organization" not in headers and "openai-project" not in headers


def test_a_given_client_is_used():
    class Completions:
        def __init__(self) -> None:
            self.calls: list[dict] = []

        def create(self, **kwargs):
            self.calls.append(kwargs)
            message = type("Message", (), {"content": "fine\nScore: 2"})()
            return type("Completion", (), {"choices": [type("Choice", (), {"message": message})()]})()

    completions = Completions()
    client = type("Client", (), {"chat": type("Chat", (), {"completions": completions})()})()
    verdict = judge(
        ANSWER,
        question=QUESTION,
        rubric=RUBRIC,
        threshold=5,
        base_url="http://unused/v1",
        model="m",
        client=client,
    )
    assert (verdict.ok, verdict.reason) == (False, "judge_fail")
    assert completions.calls[0]["temperature"] == 0 and completions.calls[0]["model"] == "m"


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Score: 7", 7.0),
        ("**Score:** 8/10", 8.0),
        ("Final score = 6.5", 6.5),
        ("Score: 2\nOn reflection...\nScore: 9", 9.0),  # the last one counts
        ("score: 10.0 / 10", 10.0),
        ("My score: 7", None),  # not a line of its own form
        ("Score: 10.5", None),
    ],
)
def test_parse_score(text, score):
    assert parse_score(text) == score


def test_threshold_outside_the_scale_is_an_error():
    with pytest.raises(ValueError, match="threshold must be a number from 0 to 10"):
        judge(ANSWER, question=QUESTION, rubric=RUBRIC, threshold=70, base_url="http://x/v1", model="m")
