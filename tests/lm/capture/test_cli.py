"""`kdistill capture CONFIG.yaml`: end to end, SIGKILL and rerun, user errors (exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.lm.capture.cli_main import cli_app
from tests.lm.capture.helpers import generation_row, write_config, write_generations
from typer.testing import CliRunner

from kdistill.lm.signal_store import TeacherSignal, read_manifest

CLI = Path(__file__).with_name("cli_main.py")
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli_app(), ["capture", *args])


def _config(tmp_path, model_dir, gens, **extra):
    settings = {
        "teacher": {"model": str(model_dir)},
        "data": {"generations": str(gens)},
        "top_k": 5,
        "max_length": 48,
    }
    return write_config(tmp_path / "capture.yaml", **{**settings, **extra})


def test_capture_end_to_end_prints_the_store_and_a_summary(tmp_path, model_dir, gens_dir, tokenizer):
    cfg = _config(tmp_path, model_dir, gens_dir, batch_size=4)
    result = invoke(str(cfg))
    assert result.exit_code == 0, result.output
    store = Path(result.stdout.strip().splitlines()[-1])  # the last line: the store directory
    assert store.parent == Path(os.environ["KDISTILL_CACHE_DIR"]) / "teacher_signal"
    signal_ = TeacherSignal(store)
    assert store.name == signal_.key and len(signal_) == 14 and signal_.k == 5 and signal_.complete
    for text in ("examples", "14", "tokens (with a signal)", "top k", "bytes", "time"):
        assert text in result.stdout
    signal_.check_tokenizer(tokenizer)  # the student side of the join: same tokenizer, no error

    again = invoke(str(cfg), "--json")  # the same command: found, nothing recomputed
    summary = json.loads(again.stdout)
    assert again.exit_code == 0 and summary["computed"] == 0 and summary["already"] == 14
    assert summary["store_dir"] == str(store) and summary["tokens"] == sum(
        signal_.length(i) for i in signal_.ids()
    )


def test_endpoint_source_converts_generation_logprobs(tmp_path, model_dir, tokenizer):
    answer = "the identity of an object"
    ids = tokenizer(answer)["input_ids"]
    entries = [{"token": tokenizer.decode([t]), "logprob": -0.5, "top": []} for t in ids]
    rows = [generation_row(0, answer, logprobs=entries), generation_row(1, "no logprobs here")]
    gens = write_generations(tmp_path / "gens", 0, rows)
    cfg = _config(tmp_path, model_dir, gens, source="endpoint", out=str(tmp_path / "sig"))
    result = invoke(str(cfg))
    assert result.exit_code == 0, result.output
    assert "1 rows have no logprobs and were skipped (e.g. rec-001)" in result.stdout
    signal_ = TeacherSignal(tmp_path / "sig")
    assert signal_.ids() == ["rec-000"] and int(signal_["rec-000"].valid.sum()) == len(ids)


def test_capture_is_a_command_of_the_kdistill_app():
    from kdistill.cli import app

    result = runner.invoke(app, ["capture", "--help"])
    assert result.exit_code == 0 and "Usage" in result.output and "capture.yaml" in result.output


@pytest.mark.parametrize(
    ("capture", "expected"),
    [
        (
            {"teacher": {"model": "m"}, "data": {"generations": "g", "texts": "t"}},
            "capture.data: give exactly one",
        ),
        ({"teacher": {"model": "m"}, "data": {"texts": "t"}, "top_kk": 3}, "capture.top_kk: unknown key"),
        (
            {"teacher": {"model": "m"}, "data": {"texts": "t"}, "top_k": 0},
            "capture.top_k: Input should be greater",
        ),
        ({"data": {"texts": "t"}}, "capture.teacher: required field missing"),
        (
            {"teacher": {"model": "m"}, "data": {"texts": "t"}, "source": "endpoint"},
            "source endpoint converts",
        ),
    ],
)
def test_a_bad_config_names_the_field_and_exits_2(tmp_path, capture, expected):
    cfg = write_config(tmp_path / "bad.yaml", **capture)
    result = invoke(str(cfg))
    assert result.exit_code == 2
    assert expected in result.stderr and "Traceback" not in result.output


def test_user_errors_are_one_line_and_exit_2(tmp_path, model_dir, gens_dir):
    from tests.fixtures.tiny_lm import build_tiny_lm

    result = invoke(str(tmp_path / "missing.yaml"))
    assert result.exit_code == 2 and "missing.yaml: cannot read" in result.stderr

    other = build_tiny_lm(tmp_path / "other-student", vocab_size=400)
    result = invoke(str(_config(tmp_path, model_dir, gens_dir, student_tokenizer=str(other))))
    assert result.exit_code == 2, result.output
    assert "teacher and student tokenizers differ: vocabularies differ" in result.stderr
    assert "kdistill capture --cross-tokenizer" in result.stderr

    out = tmp_path / "sig"
    assert invoke(str(_config(tmp_path, model_dir, gens_dir, out=str(out)))).exit_code == 0
    result = invoke(str(_config(tmp_path, model_dir, gens_dir, out=str(out))), "top_k=3")  # another key
    assert result.exit_code == 2 and "holds the teacher signal with key" in result.stderr
    assert "Traceback" not in result.output
    assert TeacherSignal(out).k == 5  # untouched


def _wait_for_shards(store: Path, proc: subprocess.Popen, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manifest = read_manifest(store) if (store / "manifest.json").exists() else None
        if manifest and manifest["shards"]:
            return len(manifest["shards"])
        assert proc.poll() is None, "the capture finished or failed before it could be killed"
        time.sleep(0.01)
    raise AssertionError(f"no shard committed after {timeout} s")


@pytest.mark.slow
def test_sigkill_mid_capture_then_rerun_equals_an_uninterrupted_capture(tmp_path, model_dir):
    gens = write_generations(tmp_path / "gens", 24)
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    cfg = _config(tmp_path, model_dir, gens, batch_size=2, shard_examples=4, out=str(cut), device="cpu")
    env = {**os.environ, "CAPTURE_TEST_FORWARD_DELAY": "0.15", "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen([sys.executable, str(CLI), "capture", str(cfg)], env=env, stdout=log, stderr=log)
    try:
        _wait_for_shards(cut, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()
    partial = TeacherSignal(cut)
    assert 4 <= len(partial) < 24 and not partial.complete

    rerun = invoke(str(cfg), "--json")  # the same command
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout)["already"] == len(partial)
    reference = invoke(str(cfg), f"out={whole}", "--json")
    assert reference.exit_code == 0, reference.output

    a, b = TeacherSignal(whole), TeacherSignal(cut)
    assert a.key == b.key and b.complete and len(b) == 24
    shards = read_manifest(cut)["shards"]
    assert (
        sum(s["examples"] for s in shards) == len({i for s in shards for i in s["ids"]}) == 24
    )  # none twice
    for example_id in a.ids():
        for x, y in zip(a[example_id], b[example_id], strict=True):
            assert torch.equal(x, y)
    # the resumed capture ran the very same batches and committed the same shards, byte for byte
    assert [s["sha256"] for s in shards] == [s["sha256"] for s in read_manifest(whole)["shards"]]
    assert not [p.name for p in cut.iterdir() if p.name.endswith(".tmp")]


def test_cross_tokenizer_flag_writes_the_byte_signal(tmp_path, model_dir, gens_dir):
    """--cross-tokenizer: the agnostic store (answer byte spans, candidates by bytes), readable by ByteSignal;
    with texts instead of generations it is a config error naming the field."""
    from kdistill.lm.byte_signal import ByteSignal

    cfg = _config(tmp_path, model_dir, gens_dir, batch_size=4)
    result = invoke(str(cfg), "--cross-tokenizer", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    signal_ = ByteSignal(summary["store_dir"])
    assert len(signal_) == 14 and signal_.k == 5 and signal_.key_inputs["layout"] == "bytes"
    token_ids = json.loads(invoke(str(cfg), "--json").stdout)
    assert token_ids["store_dir"] != summary["store_dir"]  # another key than the token-id store
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"id": "t", "text": "some text"}) + "\n")
    bad = write_config(tmp_path / "bad.yaml", teacher={"model": str(model_dir)}, data={"texts": str(texts)})
    result = invoke(str(bad), "--cross-tokenizer")
    assert result.exit_code == 2 and "capture: cross_tokenizer aligns answers by their text" in result.stderr


def test_cross_tokenizer_endpoint_source_converts_by_bytes_and_says_what_it_left_out(tmp_path, model_dir):
    from kdistill.lm.byte_signal import ByteSignal

    def entry(text, lp, alts=()):
        return {
            "token": text,
            "logprob": lp,
            "bytes": list(text.encode()),
            "top": [
                {"token": a, "logprob": lp - 1 - i, "bytes": list(a.encode())} for i, a in enumerate(alts)
            ],
        }

    rows = [
        generation_row(
            0, "the value", logprobs=[entry("the", -0.1, ["a"]), entry(" value", -0.2, [" name"])]
        ),
        generation_row(1, "the names", logprobs=[entry("the", -0.3), entry(" name", -0.1), entry("d", -0.5)]),
    ]
    gens = write_generations(tmp_path / "gens", 2, rows)
    cfg = _config(tmp_path, model_dir, gens, source="endpoint")
    result = invoke(str(cfg), "--cross-tokenizer")
    assert result.exit_code == 0, result.output
    assert "1 rows: the endpoint's tokens do not spell the whole answer (first: 'rec-001')" in result.stdout
    signal_ = ByteSignal(result.stdout.strip().splitlines()[-1])
    assert [bytes(signal_.table.entries[int(t)]) for t in signal_.rows("rec-000").token_ids] == [
        b"the",
        b" value",
    ]
    assert signal_.rows("rec-001").spans.tolist() == [[0, 3], [3, 8]]  # the agreeing prefix "the name"
