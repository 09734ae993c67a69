"""`kdistill generate` against servers that are not quite what the command line says (issue 15).

A wrong model name, nothing listening, a base URL without /v1 or with a query string, a narrow progress
line, and prompt files with a broken line or an empty prompt: each fails in seconds with one line that
names the URL / file and line, or works as the user meant.
"""

from __future__ import annotations

import json
import re
import socket
from io import StringIO

import pytest
from rich.console import Console
from tests.fixtures.openai_server import Fault, ScriptedServer
from tests.generate.cli_main import cli_app
from tests.generate.helpers import write_jsonl
from typer.testing import CliRunner

from kdistill.generate.prompts import PromptFileError, load_prompts
from kdistill.generate.run import GenerationConfig, GenerationStats, generate
from kdistill.generate.store import load_generations

FAST_RETRY = {"base_delay_s": 0.01, "max_delay_s": 0.05, "max_attempts": 2}
NO_KEY = ["--api-key-env", "NO_SUCH_KEY_VAR"]


def invoke(*args: str):
    return CliRunner().invoke(cli_app(), ["generate", *args])


def _flags(base_url: str, prompts, out, model: str = "teacher-m") -> list[str]:
    return ["--prompts", str(prompts), "--out", str(out), "--base-url", base_url, "--model", model, *NO_KEY]


def _config(base_url: str, prompts, out, **extra) -> GenerationConfig:
    return GenerationConfig.model_validate(
        {
            "prompts": prompts,
            "out": out,
            "teacher": {"base_url": base_url, "model": "teacher-m", "api_key_env": None},
            "retry": FAST_RETRY,
            **extra,
        }
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the console width


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"p{i}"} for i in range(3)])


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the model name (GET /v1/models)


def test_a_model_the_server_does_not_list_is_refused_naming_those_it_does(prompts, tmp_path):
    with ScriptedServer(models=["qwen-7b", "qwen-7b-lora"]) as server:
        result = invoke(*_flags(server.base_url, prompts, tmp_path / "out", model="Qwen/Qwen2.5-7B"))
        assert result.exit_code == 2, result.output
        assert (
            f"error: {server.base_url} does not serve the model 'Qwen/Qwen2.5-7B'; it lists 'qwen-7b', "
            "'qwen-7b-lora' (teacher.model / --model)"
        ) in _one_line(result.stderr)
        assert server.count() == 0  # not one completion asked for under the wrong name

        ok = invoke(*_flags(server.base_url, prompts, tmp_path / "out", model="qwen-7b"))
        assert ok.exit_code == 0, ok.output
        assert server.count() == 3 and server.model_list_requests == 2
    rows = load_generations(tmp_path / "out")
    assert {json.loads(t)["model"] for t in rows["teacher"]} == {"qwen-7b"}


def test_a_server_without_a_model_list_is_used_with_a_note(prompts, tmp_path):
    with ScriptedServer() as server:  # GET /v1/models: 404
        result = invoke(*_flags(server.base_url, prompts, tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert f"note: {server.base_url}/models: HTTP 404, so the model name is not checked" in _one_line(
        result.stderr
    )


# ---------------------------------------------------------------- nothing listening


def test_nothing_listening_fails_at_once_naming_the_url(prompts, tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    result = invoke(*_flags(url, prompts, tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert f"error: cannot reach {url}: connection refused" in _one_line(result.stderr)
    assert "Traceback" not in result.output


def test_the_requests_in_a_row_message_names_the_url(prompts, tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"  # the library has no preflight: the run's own limit
    summary = generate(_config(url, prompts, tmp_path / "out", max_consecutive_errors=2, concurrency=1))
    assert summary.stopped == (
        f"2 requests in a row failed (last: connection_error: connection error: ConnectError; "
        f"{url}/chat/completions)"
    )


# ---------------------------------------------------------------- a base URL without /v1


def test_a_404_at_a_base_url_without_v1_suggests_it(prompts, tmp_path):
    with ScriptedServer() as server:
        root = server.base_url.removesuffix("/v1")
        summary = generate(_config(root, prompts, tmp_path / "lib"))
        assert summary.error_codes == {"http_404": 3}
        assert (
            f"3 records got HTTP 404 (not found) from {root}/chat/completions: did you mean {root}/v1?"
            in (summary.notes)
        )
        result = invoke(*_flags(root, prompts, tmp_path / "cli"))
        assert result.exit_code == 1, result.output
        stderr = _one_line(result.stderr)
        assert f"did you mean {root}/v1?" in stderr and "check the base URL" in stderr
        assert "rerun the same command to retry them" not in stderr

    with ScriptedServer(models=["teacher-m"]) as server:  # /v1/models answers: refused before any request
        root = server.base_url.removesuffix("/v1")
        result = invoke(*_flags(root, prompts, tmp_path / "cli2"))
        assert result.exit_code == 2, result.output
        assert (
            f"error: {root}/models: HTTP 404, but {root}/v1/models answers: did you mean {root}/v1?"
            in _one_line(result.stderr)
        )
        assert server.count() == 0


def test_a_pool_names_the_server_that_answers_404(prompts, tmp_path):
    with ScriptedServer() as good, ScriptedServer() as bad:
        root = bad.base_url.removesuffix("/v1")
        cfg = GenerationConfig.model_validate(
            {
                "prompts": prompts,
                "out": tmp_path / "out",
                "teacher": {"endpoints": [good.base_url, root], "model": "m", "api_key_env": None},
                "retry": FAST_RETRY,
                "concurrency": 2,
            }
        )
        summary = generate(cfg)
    notes = [n for n in summary.notes if "HTTP 404" in n]
    assert len(notes) == 1 and notes[0].endswith(f"from {root}/chat/completions: did you mean {root}/v1?")


# ---------------------------------------------------------------- a base URL with a query string


def test_a_query_in_the_base_url_is_sent_with_every_request_and_never_stored(prompts, tmp_path):
    with ScriptedServer() as server:
        summary = generate(_config(server.base_url + "?api-version=2024-06-01", prompts, tmp_path / "out"))
        assert summary.committed == 3
        assert {r.path.split("?")[0] for r in server.requests} == {"/v1/chat/completions"}
        assert all(r.query == {"api-version": "2024-06-01"} for r in server.requests)
    rows = load_generations(tmp_path / "out")
    assert {json.loads(t)["base_url"] for t in rows["teacher"]} == {server.base_url}


# ---------------------------------------------------------------- the progress line


def test_the_progress_line_keeps_count_rate_elapsed_and_eta_at_80_columns():
    from kdistill.cli.generate import _ProgressView

    out = StringIO()
    view = _ProgressView(Console(file=out, width=80, force_terminal=False))
    stats = GenerationStats(total=10_000, committed=3_700, rejected=12, errors=3, retries=40)
    stats.requests, stats.answered, stats.completion_tokens = 3_800, 1_000, 123_456
    stats.started -= 100.0  # 100 s in: 1000 answered -> 10.0 ok req/s (3800 attempts would say 38.0)
    view(stats)
    view.stop()
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert lines and all(len(line) <= 80 for line in lines)
    line = lines[-1]
    assert "3715/10000" in line and "10.0 ok req/s" in line
    assert re.search(r" \d+:\d\d:\d\d ETA (\d+:\d\d:\d\d|-:--:--)$", line), line  # elapsed, ETA
    assert "1235 tok/s" in line  # room for it once the bar and the trouble are left out

    wide = StringIO()  # with room, nothing is left out
    view = _ProgressView(Console(file=wide, width=160, force_terminal=False))
    view(stats)
    view.stop()
    line = wide.getvalue().splitlines()[-1]
    assert "retries 40 rejects 12 errors 3" in line and "━" in line


# ---------------------------------------------------------------- prompt files


def test_a_broken_jsonl_line_is_reported_at_its_own_line_and_column(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "ok"\n{"prompt": "c"}\n')
    with pytest.raises(PromptFileError) as err:
        load_prompts(path)
    bad = '{"prompt": "ok"'
    assert str(err.value) == (
        f"{path}: line 2: invalid JSON (Expecting ',' delimiter at column {len(bad) + 1}, the end of the line); "
        "expected one object per line"
    )

    path.write_text('{"prompt": "a"}\n{"prompt": "b" "id": 2}\n')
    with pytest.raises(
        PromptFileError, match=r"line 2: invalid JSON \(Expecting ',' delimiter at column 16\);"
    ):
        load_prompts(path)  # inside the line: the column of the missing comma, not the line's end


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"prompt": " \t "}, "line 2: 'prompt' is only whitespace (' \\t '); expected text for the teacher"),
        (
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "\n"}]},
            "line 2: messages[1] (the last message) has no text, only '\\n'; expected text for the teacher",
        ),
    ],
)
def test_a_whitespace_only_prompt_is_refused_naming_file_and_line(tmp_path, record, expected):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, record])
    with pytest.raises(PromptFileError) as err:
        load_prompts(path)
    assert str(err.value).startswith(f"{path}: {expected}")


def test_a_whitespace_only_prompt_is_never_sent(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, {"prompt": "   "}])
    with ScriptedServer() as server:
        server.fault_all = Fault.latency(0)
        result = invoke(*_flags(server.base_url, path, tmp_path / "out"))
        assert result.exit_code == 2 and f"{path}: line 2: 'prompt' is only whitespace" in _one_line(
            result.stderr
        )
        assert server.count() == 0
