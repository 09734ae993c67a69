"""`task: lm` across tokenizers end to end on a tiny teacher: a pruned student with a new sentencepiece-style
vocabulary learns the teacher's cached signal named by bytes (hybrid, ULD) next to an SFT-only student; a
SIGKILLed run resumes to the same student; a student with another tokenizer is refused without
`cross_tokenizer`, with the way out in the message."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tests.fixtures.tiny_lm import lm_run_config, tiny_llama, train_tokenizer, write_lm_task
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdistill.config import ConfigError, parse_config
from kdistill.lm.byte_signal import ByteSignal
from kdistill.lm.recipe import run_lm


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    return write_lm_task(root, prompts=12, layers=4, prompt="Explain topic {i} of Python.")


def _config(teacher, prompts, **distill):
    return lm_run_config(
        teacher,
        prompts,
        "tiny-cross",
        held_out=3,
        generation={"max_new_tokens": 12, "batch_size": 6},
        student={"keep_layers": 2, "calibration_texts": 4, "new_tokenizer": {"vocab_size": 320}},
        train={
            "epochs": 2,
            "micro_batch_size": 3,
            "grad_accum": 1,
            "lr": 2e-3,
            "max_length": 48,
            "checkpoint_every": 1,
        },
        distill={
            "signal": "cached",
            "top_k": 6,
            "ce_weight": 1.0,
            "cross_tokenizer": {"loss": "hybrid"},
            **distill,
        },
        evaluation={"batch_size": 4, "max_new_tokens": 6},
    )


def test_cross_tokenizer_run_compares_sft_uld_and_hybrid_per_byte(tmp_path, tiny_teacher):
    teacher, prompts = tiny_teacher
    cfg = parse_config(_config(teacher, prompts, compare_with=[{"loss": "uld"}], compare_with_sft=True))
    result = run_lm(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    d = result.run_dir
    metrics = json.loads((d / "metrics.json").read_text())
    roles = [m["role"] for m in metrics["models"]]
    assert roles == ["teacher", "before", "sft", "cross-uld", "distilled"]
    for m in metrics["models"]:
        assert m["bits_per_byte"] > 0 and math.isfinite(m["bits_per_byte"])
    # another tokenizer: no top-1 agreement with the teacher, the report's quality column is ROUGE-L
    for m in metrics["models"][1:]:
        assert m["agreement_with_teacher"] is None and m["accuracy"] == m["rouge_l"]
    assert "bits per byte" in metrics["summary"]["headline"]
    # the three students trained for the same steps, each its own job, and they differ
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["student_tokenizer"]["cross"] is True
    assert 0 < manifest["alignment"]["exact_share"] < 1 and manifest["alignment"]["chunks"] > 0
    steps = {
        h["model"]: max(e["step"] for e in metrics["history"] if e["model"] == h["model"])
        for h in metrics["history"]
    }
    assert len(set(steps.values())) == 1 and len(steps) == 3
    # the cross arms log their parts (CE, matched, unmatched) beside the one optimised term, not in the loss
    entry = next(e for e in metrics["history"] if e["model"].startswith("student (KD") and "terms" in e)
    parts = {name: v for name, v in entry["terms"].items() if name.startswith("logged/")}
    optimised = {name: v for name, v in entry["terms"].items() if not name.startswith("logged/")}
    assert set(parts) == {"logged/ce", "logged/matched", "logged/unmatched"} and list(optimised) == [
        "kd/hybrid+ce"
    ]
    assert entry["loss"] == pytest.approx(optimised["kd/hybrid+ce"])
    assert optimised["kd/hybrid+ce"] == pytest.approx(
        parts["logged/ce"] + parts["logged/matched"] + parts["logged/unmatched"]
    )
    student = AutoModelForCausalLM.from_pretrained(d / "student")
    uld = AutoModelForCausalLM.from_pretrained(d / "student_cross-uld")
    tok = AutoTokenizer.from_pretrained(d / "student")
    assert student.config.vocab_size == len(tok) == 320
    sft = AutoModelForCausalLM.from_pretrained(d / "student_sft")
    assert not torch.equal(student.lm_head.weight, uld.lm_head.weight)
    assert not torch.equal(sft.lm_head.weight, uld.lm_head.weight)
    # each comparison arm is its own model, trained from the same start (not one model trained twice)
    evals = {name: json.loads((d / f"eval_student_{name}.json").read_text()) for name in ("sft", "cross-uld")}
    assert evals["sft"]["bits_per_byte"] != evals["cross-uld"]["bits_per_byte"]
    # the teacher's signal is the agnostic one (byte spans), and the student's tokenizer is another one
    signal = ByteSignal(manifest["teacher_signal"])
    assert signal.store.layout.name == "bytes" and len(signal) == 9
    assert tok.get_vocab() != AutoTokenizer.from_pretrained(teacher).get_vocab()


def test_sigkilled_cross_tokenizer_run_resumes_to_the_same_student(tmp_path, tiny_teacher):
    import yaml
    from tests.lm.kill_helpers import killed_and_rerun_equals_uninterrupted

    teacher, prompts = tiny_teacher
    config = _config(teacher, prompts)
    config["train"]["epochs"] = 4
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    killed_and_rerun_equals_uninterrupted(cfg_path, tmp_path, "kd-cached")


def test_another_tokenizer_needs_cross_tokenizer_and_the_message_says_so(tmp_path, tiny_teacher):
    teacher, prompts = tiny_teacher
    other = tmp_path / "other-student"
    tok = train_tokenizer(300)
    tiny_llama(len(tok), hidden=32, layers=2).save_pretrained(other)
    tok.save_pretrained(other)
    config = _config(teacher, prompts)
    config["distill"].pop("cross_tokenizer")
    config["student"] = {"init": "pretrained", "model": str(other)}
    with pytest.raises(ValueError, match=r"distill.cross_tokenizer \(e.g. \{loss: hybrid\}\)"):
        run_lm(parse_config(config), runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    config["student"] = {"keep_layers": 2, "new_tokenizer": {"vocab_size": 320}}
    with pytest.raises(
        ValueError, match=r"the student's tokenizer is not the teacher's .*distill.cross_tokenizer"
    ):
        run_lm(parse_config(config), runs_dir=tmp_path / "runs2", cache_root=tmp_path / "cache")


def test_cross_tokenizer_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="distill: .*cross_tokenizer needs signal: cached"):
        parse_config({"task": "lm", "distill": {"signal": "online", "cross_tokenizer": {"loss": "uld"}}})
    with pytest.raises(ConfigError, match=r"distill.cross_tokenizer.loss: Input should be 'uld' or 'hybrid'"):
        parse_config({"task": "lm", "distill": {"signal": "cached", "cross_tokenizer": {"loss": "kl"}}})
    with pytest.raises(ConfigError, match="compare_with lists more cross-tokenizer losses"):
        parse_config({"task": "lm", "distill": {"signal": "cached", "compare_with": [{"loss": "uld"}]}})
    with pytest.raises(ConfigError, match="student: .*at most one of tokenizer"):
        parse_config({"task": "lm", "student": {"tokenizer": "x", "new_tokenizer": {"vocab_size": 400}}})


def _endpoint_config(teacher, prompts, base_url, **distill):
    config = _config(teacher, prompts, signal="endpoint", **distill)
    config["teacher"]["endpoint"] = {"base_url": base_url, "model": "scripted", "top_logprobs": 4}
    return config


def test_an_endpoint_teacher_trains_a_student_with_another_tokenizer(tmp_path, tiny_teacher):
    """teacher.endpoint answers with top_logprobs (token bytes); the run converts them by bytes and trains."""
    from tests.fixtures.openai_server import ScriptedServer

    teacher, prompts = tiny_teacher
    with ScriptedServer() as server:
        cfg = parse_config(_endpoint_config(teacher, prompts, server.base_url))
        result = run_lm(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
        asked = [r.body for r in server.requests if r.body]
    assert asked and all(body.get("logprobs") and body.get("top_logprobs") == 4 for body in asked)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    signal = ByteSignal(manifest["teacher_signal"])
    assert signal.key_inputs["source"] == "endpoint" and len(signal) == 12  # every answer the endpoint gave
    assert manifest["rendering"]["teacher"] == {"api": "chat"}
    assert manifest["alignment"]["chunks"] > 0
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert [m["role"] for m in metrics["models"]] == ["teacher", "before", "distilled"]
    assert "the endpoint's top_logprobs" in metrics["objective"]["description"]


def test_a_same_tokenizer_endpoint_signal_checks_how_the_prompt_was_rendered(tmp_path, tiny_teacher):
    """Context fidelity: the server's own template is a warning; a client-side rendering with another
    template than the student's is refused before training."""
    from tests.fixtures.openai_server import ScriptedServer

    teacher, prompts = tiny_teacher
    config = _endpoint_config(teacher, prompts, "http://unused")
    config["distill"].pop("cross_tokenizer")
    config["student"] = {"keep_layers": 2, "calibration_texts": 4}
    other = tmp_path / "other-template"
    tok = train_tokenizer(512)
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    )
    tok.save_pretrained(other)
    with ScriptedServer() as server:
        config["teacher"]["endpoint"]["base_url"] = server.base_url
        result = run_lm(parse_config(config), runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
        manifest = json.loads((result.run_dir / "manifest.json").read_text())
        assert any("its own chat template" in w for w in manifest["warnings"])
        config["teacher"]["endpoint"]["render_with"] = str(other)
        with pytest.raises(ValueError, match="conditioned on another context"):
            run_lm(parse_config(config), runs_dir=tmp_path / "runs2", cache_root=tmp_path / "cache")
        sent = [r.body for r in server.requests if r.body and "prompt" in r.body]
    assert sent and all(body["prompt"].endswith("A:") for body in sent)  # rendered client-side


def test_cross_tokenizer_with_the_teachers_own_tokenizer_warns_about_the_slower_path(tmp_path, tiny_teacher):
    teacher, prompts = tiny_teacher
    config = _config(teacher, prompts)
    config["student"] = {"keep_layers": 2, "calibration_texts": 4}
    with pytest.raises(RuntimeError, match="stopped early"):
        run_lm(parse_config(config), runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache", stop_after=1)
    (run_dir,) = [d for d in (tmp_path / "runs").iterdir() if d.name != ".locks"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["student_tokenizer"]["cross"] is False
    assert any("the student's tokenizer is the teacher's" in w for w in manifest["warnings"])
    # one tokenizer: the same cuts on both sides, so no 1:n or n:1 chunk; pieces of one character (the tiny
    # teacher's random answers split multi-byte characters) stay together as n:m chunks
    assert (
        set(manifest["alignment"]["kinds"]) <= {"1:1", "n:m"} and manifest["alignment"]["exact_share"] > 0.5
    )


def test_an_endpoint_teacher_that_is_not_there_fails_in_seconds_naming_the_url(tmp_path, tiny_teacher):
    """The run asks the endpoint what it serves before generating: nothing listening, or a model name it does
    not list, is one line before any request for an answer (not minutes of retries)."""
    import socket

    from tests.fixtures.openai_server import ScriptedServer

    from kdistill.generate.run import GenerationError

    teacher, prompts = tiny_teacher
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(GenerationError, match=f"cannot reach {dead}"):
        run_lm(parse_config(_endpoint_config(teacher, prompts, dead)), runs_dir=tmp_path / "r1")
    with ScriptedServer(models=["scripted"]) as server:  # lists what it serves at /v1/models
        config = _endpoint_config(teacher, prompts, server.base_url)
        config["teacher"]["endpoint"]["model"] = "not-the-served-model"
        with pytest.raises(GenerationError, match="does not serve the model 'not-the-served-model'"):
            run_lm(parse_config(config), runs_dir=tmp_path / "r2", cache_root=tmp_path / "cache")
        assert not [r for r in server.requests if r.body]  # no completion was asked for


def test_kdistill_run_prints_an_unreachable_endpoint_as_one_line(tmp_path, tiny_teacher):
    import socket

    import yaml
    from typer.testing import CliRunner

    from kdistill.cli.app import app

    teacher, prompts = tiny_teacher
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_endpoint_config(teacher, prompts, dead)))
    result = CliRunner().invoke(app, ["run", str(cfg_path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: cannot reach {dead}") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
