"""`kdistill generate` as a process: SIGKILL and rerun, Ctrl-C, the canary key, YAML + flags, exit codes."""

import json
import re
import signal
import subprocess
import time
import uuid

import pytest
import yaml
from tests.fixtures.openai_server import Fault
from tests.generate.cli_main import cli_app
from tests.generate.helpers import run_cli, start_cli, write_jsonl
from typer.testing import CliRunner

from kdistill.generate.store import JOURNAL, load_generations, read_journal

FAST = ["--api-key-env", "NO_SUCH_KEY_VAR"]
runner = CliRunner()


def invoke(*args: str):
    """`kdistill generate ARGS...` in this process (the process-level tests use run_cli)."""
    return runner.invoke(cli_app(), ["generate", *args])


def _flags(server, prompts, out, *extra):
    return [
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--base-url",
        server.base_url,
        "--model",
        "m",
        *extra,
    ]


def _wait_for_rows(out, n, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows, _ = read_journal(out / JOURNAL)
        if len(rows) >= n:
            return len(rows)
        assert proc.poll() is None, "the generator finished before it could be interrupted"
        time.sleep(0.005)
    raise AssertionError(f"fewer than {n} rows after {timeout} s")


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_every_record_exactly_once(server, prompts_file, tmp_path):
    n = 200
    prompts, out = prompts_file(n), tmp_path / "out"
    server.latency = 0.02
    log = (tmp_path / "first.log").open("w")
    proc = start_cli(*_flags(server, prompts, out, "--concurrency", "4", *FAST), stdout=log, stderr=log)
    try:
        _wait_for_rows(out, n // 2, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    # what was committed when the process died (its journal, read as a reader would)
    committed = set(load_generations(out)["prompt"])
    assert n // 2 <= len(committed) < n
    first_run_requests = server.count()
    server.clear()

    rerun = invoke(*_flags(server, prompts, out, "--concurrency", "4", "--json", *FAST))  # the same command
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.stdout)
    assert summary["already_done"] == len(committed) and summary["missing"] == 0

    resent = {r.key for r in server.requests}
    assert not resent & committed  # no request for a row that was committed
    assert len(server.requests) == n - len(committed)  # and exactly one for each missing record
    assert first_run_requests >= len(committed)
    ds = load_generations(out)
    assert len(ds) == n and len(set(ds["record_id"])) == n
    assert sorted(ds["prompt"]) == sorted(f"p{i}" for i in range(n))
    assert (out / JOURNAL).stat().st_size == 0  # sealed into shards


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_rerun_completes(server, prompts_file, tmp_path):
    n = 200  # >= 5 s of answers at 2 x 0.05 s: the interrupt lands mid-run on a busy machine too
    prompts, out = prompts_file(n), tmp_path / "out"
    server.latency = 0.05
    proc = start_cli(
        *_flags(server, prompts, out, "--concurrency", "2", *FAST),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_rows(out, 5, proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "rerun the same command" in stderr
    assert (out / JOURNAL).stat().st_size == 0  # committed rows were sealed into a shard on the way out
    done_before = len(load_generations(out))
    assert 5 <= done_before < n
    rerun = invoke(*_flags(server, prompts, out, "--concurrency", "4", *FAST))
    assert rerun.exit_code == 0, rerun.output
    ds = load_generations(out)
    assert len(ds) == n and len(set(ds["record_id"])) == n


def test_canary_key_reaches_only_the_authorization_header(server, prompts_file, tmp_path):
    canary = f"sk-canary-{uuid.uuid4().hex}"
    server.state.require_key = canary
    server.script("p0", [Fault.echo_headers()])  # a server that puts the header in its answer
    server.script(
        "p1", [Fault.status(400, body=f'{{"error": {{"message": "bad request for key {canary}"}}}}')]
    )
    server.script("p2", [Fault.status(500, body=f"internal error, key={canary}")] * 2)
    server.script("p3", [Fault.length()])
    server.script("p4", [Fault.status(429, retry_after=0)])
    prompts, out = prompts_file(6), tmp_path / "out"
    args = _flags(server, prompts, out, "--api-key-env", "CANARY_KEY", "--top-logprobs", "2")
    yaml_path = tmp_path / "gen.yaml"
    yaml_path.write_text(yaml.safe_dump({"generation": {"retry": {"max_attempts": 2, "base_delay_s": 0.01}}}))
    result = run_cli(str(yaml_path), *args, env={"CANARY_KEY": canary, "OPENAI_LOG": "debug"})
    assert result.returncode == 1, result.stderr  # p1 and p2 ended in errors: rerun needed
    assert "DEBUG] Building HTTP request" in result.stderr  # the openai client logged at debug level
    assert "2 records have no row yet" in result.stderr
    for text in (result.stdout, result.stderr):
        assert canary not in text
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {
        "manifest.json",
        "errors.jsonl",
        "rejects.jsonl",
        "shard-00000.parquet",
    }
    for path in files:
        assert canary.encode() not in path.read_bytes(), path
    rows = load_generations(out).to_list()  # shards are compressed: look at the decoded rows too
    assert canary not in json.dumps(rows)
    echoed = next(r for r in rows if r["prompt"] == "p0")
    assert echoed["completion"].endswith("(you sent Bearer [REDACTED])")  # the echo happened and was scrubbed
    assert "[REDACTED]" in (out / "errors.jsonl").read_text()

    assert server.requests and all(
        {k.lower(): v for k, v in r.headers.items()}.get("authorization") == f"Bearer {canary}"
        for r in server.requests
    )
    for request in server.requests:
        others = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        assert canary not in json.dumps(others) and canary.encode() not in request.raw


def test_yaml_config_with_flag_overrides(server, prompts_file, tmp_path):
    out = tmp_path / "out"
    config = {
        "generation": {
            "prompts": str(prompts_file(3)),
            "out": str(out),
            "teacher": {"base_url": server.base_url, "model": "m", "api_key_env": None},
            "sampling": {"samples": 2, "max_tokens": 7},
        },
        "other_section": {"ignored": True},
    }
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(config))
    result = invoke(str(path), "--samples", "1", "--temperature", "0")
    assert result.exit_code == 0, result.output
    assert "3 rows in" in result.stdout
    ds = load_generations(out)
    assert len(ds) == 3
    assert json.loads(ds[0]["sampling"])["temperature"] == 0.0 and server.requests[0].body["max_tokens"] == 7
    as_json = json.loads(invoke(str(path), "--samples", "1", "--temperature", "0", "--json").stdout)
    assert (as_json["already_done"], as_json["requests"], as_json["rows_in_dataset"]) == (3, 0, 3)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "generation:\n  concurrency: 0\n",
            r"gen.yaml: generation.concurrency: Input should be greater than",
        ),
        ("generation:\n  teacher:\n    modle: x\n", r"gen.yaml: generation.teacher.modle: unknown key"),
        (
            "generation:\n  teacher: {kind: hf_local, batch_size: 0}\n",
            r"generation.teacher.batch_size: .*greater",
        ),
        (
            "generation:\n  sampling: {top_logprobs: 50}\n",
            r"generation.sampling.top_logprobs: .*less than or",
        ),
        ("other: {}\n", r"gen.yaml: expected a mapping with a 'generation:' section"),
        ("generation: [\n", r"gen.yaml: line 2, column 1: invalid YAML"),
    ],
)
def test_config_errors_are_one_line_naming_the_field(tmp_path, prompts_file, yaml_text, expected):
    path = tmp_path / "gen.yaml"
    path.write_text(yaml_text)
    result = invoke(
        str(path), "--prompts", str(prompts_file(1)), "--out", str(tmp_path / "o"), "--model", "m"
    )
    assert result.exit_code == 2
    lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and re.search(expected, lines[0]), result.stderr


def test_missing_flags_and_bad_prompt_files_exit_2_naming_what(server, tmp_path):
    result = invoke("--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "generation: prompts: required" in result.stderr
    bad = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}])
    with bad.open("a") as f:
        f.write('{"promt": "typo"}\n')
    result = invoke(*_flags(server, bad, tmp_path / "o", *FAST))
    assert result.exit_code == 2
    assert f"{bad}: line 2: expected exactly one of 'prompt'" in result.stderr
    assert server.count() == 0


def test_401_exits_2_and_errors_exit_1(server, prompts_file, tmp_path, monkeypatch):
    server.state.require_key = "right-key-0000"
    monkeypatch.setenv("MY_KEY", "wrong-key-1111")
    flags = _flags(server, prompts_file(3), tmp_path / "o", "--api-key-env", "MY_KEY")
    result = invoke(*flags)
    assert result.exit_code == 2
    assert "rejected the API key (HTTP 401); check the environment variable MY_KEY" in result.stderr
    monkeypatch.setenv("MY_KEY", "right-key-0000")
    server.script("p1", [Fault.status(404)])
    result = invoke(*flags)
    assert result.exit_code == 1 and "1 records have no row yet" in result.stderr
    assert invoke(*flags).exit_code == 0


def test_help_has_examples():
    result = invoke("--help")
    assert result.exit_code == 0
    for flag in (
        "--prompts",
        "--out",
        "--base-url",
        "--model",
        "--concurrency",
        "--max-tokens",
        "--temperature",
    ):
        assert flag in result.stdout
    assert (
        "--samples" in result.stdout
        and "--top-logprobs" in result.stdout
        and "--api-key-env" in result.stdout
    )
    assert "kdistill generate --prompts prompts.jsonl" in result.stdout
