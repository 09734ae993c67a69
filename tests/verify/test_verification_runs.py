"""Verifying a generations directory: verdicts stored exactly once, a killed run resumes, a changed config
re-verifies only what it changes, undecidable answers stay unverified, and `kdistill verify` end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kdistill.generate.store import GenerationStore
from kdistill.verify.config import VerifyConfig
from kdistill.verify.run import VerificationError, verify_generations
from kdistill.verify.store import JOURNAL, read_verdicts

PROMPTS = 6
SAMPLES = 4


def _row(prompt_id: int, sample: int, completion: str) -> dict:
    return {
        "record_id": f"r{prompt_id}-{sample}",
        "prompt_id": str(prompt_id),
        "sample_index": sample,
        "prompt": f"What is {prompt_id} + {prompt_id}?",
        "messages": None,
        "completion": completion,
        "finish_reason": "stop",
        "teacher": "{}",
        "sampling": "{}",
        "prompt_tokens": None,
        "completion_tokens": None,
        "logprobs": None,
        "created": "2026-12-02T00:00:00.000Z",
    }


def _correct(prompt_id: int, sample: int) -> bool:
    """Which samples answer right: prompt p has p % (SAMPLES + 1) right answers (0..4)."""
    return sample < prompt_id % (SAMPLES + 1)


@pytest.fixture
def problem(tmp_path):
    """A generations directory of PROMPTS x SAMPLES answers, a prompt file with the references."""
    rows = []
    for p in range(PROMPTS):
        for s in range(SAMPLES):
            value = 2 * p if _correct(p, s) else 2 * p + 1
            rows.append(_row(p, s, f"Adding {p} to itself step by step.\nAnswer: {value}"))
    store = GenerationStore(tmp_path / "gens", shard_rows=7)
    store.open()
    store.append_rows(rows)
    store.close()
    prompts = tmp_path / "problems.jsonl"
    prompts.write_text(
        "".join(
            json.dumps(
                {"id": str(p), "prompt": f"What is {p} + {p}?", "answer": 2 * p, "tests": "assert True"}
            )
            + "\n"
            for p in range(PROMPTS)
        )
    )
    return tmp_path / "gens", prompts, rows


def _config(prompts: Path, **overrides) -> VerifyConfig:
    return VerifyConfig.model_validate(
        {"prompts": str(prompts), "verifiers": [{"name": "answer_match", "mode": "numeric"}], **overrides}
    )


def test_verdicts_equal_an_independent_count_and_pass_at_k_the_closed_form(problem, tmp_path):
    from math import comb

    gens, prompts, rows = problem
    result = verify_generations(gens, _config(prompts), out_dir=tmp_path / "v")
    assert len(result.records) == len(rows) and result.computed == len(rows) and result.reused == 0
    for row in rows:
        p, s = int(row["prompt_id"]), row["sample_index"]
        record = result.records[row["record_id"]]
        assert record.ok == _correct(p, s)
        assert record.reason == ("ok" if _correct(p, s) else "answer_match:mismatch")
        assert record.extracted == str(2 * p if _correct(p, s) else 2 * p + 1)
    per_prompt = {str(p): (SAMPLES, sum(_correct(p, s) for s in range(SAMPLES))) for p in range(PROMPTS)}
    assert result.per_prompt() == per_prompt
    for k in (1, 2, 4):
        closed = sum(1 - comb(n - c, k) / comb(n, k) for n, c in per_prompt.values()) / PROMPTS
        assert result.pass_at(k) == pytest.approx(closed)
    assert result.accepted == sum(c for _, c in per_prompt.values())
    lines = (tmp_path / "v" / JOURNAL).read_bytes().splitlines()
    assert len(lines) == len(rows)  # one line per verdict


def test_an_interrupted_verification_resumes_computing_only_what_is_missing(problem, tmp_path):
    gens, prompts, rows = problem
    whole = verify_generations(gens, _config(prompts), out_dir=tmp_path / "whole")

    seen = []

    def interrupt(done, total):
        seen.append(done)
        if done >= 7:
            raise KeyboardInterrupt

    cfg = _config(prompts, concurrency=1)
    with pytest.raises(KeyboardInterrupt):
        verify_generations(gens, cfg, out_dir=tmp_path / "cut", progress=interrupt)
    stored = len(read_verdicts(tmp_path / "cut"))
    assert 7 <= stored < len(rows)  # what finished before the interrupt was committed
    again = verify_generations(gens, cfg, out_dir=tmp_path / "cut")
    assert again.reused == stored and again.computed == len(rows) - stored
    assert {k: v.ok for k, v in again.records.items()} == {k: v.ok for k, v in whole.records.items()}
    assert len((tmp_path / "cut" / JOURNAL).read_bytes().splitlines()) == len(rows)  # no verdict twice


def test_a_changed_option_or_reference_re_verifies_only_what_it_concerns(problem, tmp_path):
    gens, prompts, rows = problem
    two = {"verifiers": [{"name": "answer_match", "mode": "numeric"}, {"name": "json_schema", "schema": {}}]}
    first = verify_generations(gens, _config(prompts, **two), out_dir=tmp_path / "v")
    assert first.computed == 2 * len(rows)

    # another answer_match option: every answer_match verdict again, no json_schema verdict
    changed = {"verifiers": [{"name": "answer_match", "mode": "auto"}, two["verifiers"][1]]}
    second = verify_generations(gens, _config(prompts, **changed), out_dir=tmp_path / "v")
    assert second.computed == len(rows) and second.reused == len(rows)

    # one prompt's reference edited: only that prompt's answers again (answer_match reads the reference)
    lines = prompts.read_text().splitlines()
    edited = json.loads(lines[3]) | {"answer": 999}
    prompts.write_text("\n".join([*lines[:3], json.dumps(edited), *lines[4:]]) + "\n")
    third = verify_generations(gens, _config(prompts, **changed), out_dir=tmp_path / "v")
    assert third.computed == SAMPLES and third.reused == 2 * len(rows) - SAMPLES
    assert not any(r.ok for r in third.records.values() if r.prompt_id == "3")
    # json_schema's verdict: {} accepts any JSON, and "Adding ..." is not JSON
    assert {r.verdicts["json_schema"]["reason"] for r in third.records.values()} == {"invalid_json"}


def test_an_undecided_answer_stays_unverified_and_a_rerun_decides_it(problem, tmp_path):
    gens, prompts, rows = problem
    judge = {
        "name": "judge",
        "base_url": "http://127.0.0.1:9/v1",  # nothing listens on the discard port
        "model": "m",
        "rubric": "correct",
        "max_retries": 0,
        "timeout_s": 2,
    }
    cfg = _config(prompts, verifiers=[{"name": "answer_match", "mode": "numeric"}, judge])
    result = verify_generations(gens, cfg, out_dir=tmp_path / "v")
    assert len(result.failures) == len(rows) and result.records == {}
    assert {f["verifier"] for f in result.failures} == {"judge"}
    assert "Connection" in result.failures[0]["error"]
    assert len(read_verdicts(tmp_path / "v")) == len(rows)  # the decided answer_match verdicts are kept
    # the judge dropped: the stored verdicts decide everything
    again = verify_generations(gens, _config(prompts), out_dir=tmp_path / "v")
    assert again.computed == 0 and len(again.records) == len(rows)


def test_data_errors_name_the_record_and_the_prompt_file_line(problem, tmp_path):
    gens, prompts, _ = problem
    with pytest.raises(Exception, match=r"problems.jsonl: line 1: no 'tests'"):
        bad = prompts.read_text().replace('"tests": "assert True"', '"x": 1', 1)
        prompts.write_text(bad)
        verify_generations(
            gens, _config(prompts, verifiers=[{"name": "python_tests"}]), out_dir=tmp_path / "v"
        )
    few = tmp_path / "few.jsonl"
    few.write_text(json.dumps({"id": "0", "prompt": "x", "answer": 0}) + "\n")
    with pytest.raises(VerificationError, match=r"record r1-0: prompt id '1' is not in the prompt file"):
        verify_generations(gens, _config(few), out_dir=tmp_path / "w")


def test_verify_config_errors_name_the_field(tmp_path):
    from kdistill.schema import ConfigError
    from kdistill.verify.config import load_verify_config

    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump({"verify": {"verifiers": [{"name": "answer_macth"}]}}))
    with pytest.raises(ConfigError, match=r"verify.verifiers.*did you mean 'answer_match'"):
        load_verify_config(path)
    path.write_text(yaml.safe_dump({"verify": {"verifiers": [{"name": "answer_match", "mode": "fuzzy"}]}}))
    with pytest.raises(ConfigError, match=r"answer_match.*mode"):
        load_verify_config(path)
    path.write_text(yaml.safe_dump({"verify": {"verifiers": []}}))
    with pytest.raises(ConfigError, match=r"verify.verifiers"):
        load_verify_config(path)


# ---------------------------------------------------------------- the command


def _cli():
    from kdistill.cli.app import app

    return app


def test_the_command_prints_a_summary_and_exports_the_curated_answers(problem, tmp_path):
    gens, prompts, rows = problem
    heldout = tmp_path / "eval.jsonl"  # prompt 5's question, with its words as an evaluation problem
    heldout.write_text(json.dumps({"id": "e", "prompt": "What is 5 + 5?"}) + "\n")
    cfg = tmp_path / "verify.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "verify": {
                    "prompts": str(prompts),
                    "verifiers": [{"name": "answer_match", "mode": "numeric"}],
                    "select": {"keep": "all_correct", "max_per_prompt": 2},
                    "dedup": {"enabled": True, "within_prompt": True},
                    "decontaminate": {"enabled": True, "n": 4, "against": str(heldout)},
                }
            }
        )
    )
    out = CliRunner().invoke(
        _cli(),
        [
            "verify",
            "--generations",
            str(gens),
            "--config",
            str(cfg),
            "--export",
            str(tmp_path / "t.jsonl"),
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    correct = {(p, s) for p in range(PROMPTS) for s in range(SAMPLES) if _correct(p, s)}
    assert summary["accepted"] == len(correct) and summary["records"] == len(rows)
    filters = {f["name"].split(":")[0]: f for f in summary["export"]["filters"]}
    # keep at most 2 of each prompt's right answers; their texts are identical within a prompt: dedup keeps
    # one per prompt; prompt 5's question is the evaluation problem: decontaminated
    per_prompt = {p: sum(_correct(p, s) for s in range(SAMPLES)) for p in range(PROMPTS)}
    capped = sum(min(c, 2) for c in per_prompt.values())
    assert filters["select"]["after"] == capped
    assert filters["dedup"]["after"] == sum(1 for c in per_prompt.values() if c)
    assert filters["decontaminate"]["removed"] == (1 if per_prompt[5] else 0)
    exported = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(exported) == summary["export"]["rows"] and all(r["ok"] for r in exported)
    assert "5" not in {r["prompt_id"] for r in exported}

    rerun = CliRunner().invoke(_cli(), ["verify", "--generations", str(gens), "--config", str(cfg), "--json"])
    assert rerun.exit_code == 0 and json.loads(rerun.stdout)["computed"] == 0

    bad = CliRunner().invoke(
        _cli(), ["verify", "--generations", str(gens), "--config", str(cfg), "require=most"]
    )
    assert bad.exit_code == 2 and "verify.require" in bad.output


CHILD = """
import sys
from kdistill.cli.app import app
sys.argv = ["kdistill", *sys.argv[1:]]
app()
"""


@pytest.mark.slow
def test_verification_killed_with_sigkill_resumes_with_every_verdict_once(problem, tmp_path):
    """python_tests that sleep make the run slow enough to kill it in the middle."""
    _, prompts, _ = problem
    rows = [_row(p, s, f"```python\nvalue = {p} + {p}\n```") for p in range(PROMPTS) for s in range(SAMPLES)]
    store = GenerationStore(tmp_path / "code", shard_rows=7)
    store.open()
    store.append_rows(rows)
    store.close()
    gens = tmp_path / "code"
    tests = "import time; time.sleep(0.3); assert value % 2 == 0"
    prompts.write_text(prompts.read_text().replace('"assert True"', json.dumps(tests)))
    cfg = tmp_path / "verify.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "verify": {
                    "prompts": str(prompts),
                    "verifiers": [{"name": "python_tests", "timeout_s": 20}],
                    "concurrency": 2,
                    "out": str(tmp_path / "v"),
                }
            }
        )
    )
    args = [sys.executable, "-c", CHILD, "verify", "--generations", str(gens), "--config", str(cfg), "--json"]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while len(read_verdicts(tmp_path / "v")) < 4:
            assert proc.poll() is None, "the verification ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    stored = len(read_verdicts(tmp_path / "v"))
    assert 4 <= stored < len(rows)
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["reused"] == stored and summary["computed"] == len(rows) - stored
    assert summary["reasons"] == {"python_tests": {"tests_passed": len(rows)}}
    keys = [
        json.loads(line.split(b" ", 1)[1])["key"]
        for line in (tmp_path / "v" / JOURNAL).read_bytes().splitlines()
    ]
    assert len(keys) == len(set(keys)) == len(rows)


def test_kdistill_methods_lists_every_verifier():
    from kdistill.verify.registry import VERIFIERS

    out = CliRunner().invoke(_cli(), ["methods", "--json"])
    assert out.exit_code == 0, out.output
    listed = [m["name"] for m in json.loads(out.stdout) if m["kind"] == "verifier"]
    assert listed == VERIFIERS.names() and {"answer_match", "python_tests", "json_schema", "judge"} <= set(
        listed
    )
