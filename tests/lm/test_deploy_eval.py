"""deploy_metrics: every model as GGUF (size = the file's, tensors readable by the gguf package), timed
through the llama.cpp worker (here a fake interpreter), GGUFs deleted unless kept; a model the exporter
refuses, or a machine without llama-cpp-python, gives reasons instead of a crash. And the config: a run
without `evaluation.deploy` dumps (so hashes) as before the field existed."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

gguf = pytest.importorskip("gguf")

from tests.fixtures.tiny_lm import lm_run_config, tiny_llama, train_tokenizer, write_lm_task  # noqa: E402

from kdistill.lm.config import LMDeployConfig, LMEvaluationConfig, LMRunConfig  # noqa: E402
from kdistill.lm.deploy_eval import DEPLOY_KEYS, deploy_metrics  # noqa: E402
from kdistill.lm.sft_data import encode_prompt  # noqa: E402

PROMPTS = ["How do I open a file?", {"messages": [{"role": "user", "content": "What is a generator?"}]}]
NO_LLAMA = "/nonexistent/python-with-llama"


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(512)


@pytest.fixture(scope="module")
def llama(tokenizer):
    return tiny_llama(len(tokenizer), layers=2, seed=1)


def _fake_worker(tmp_path, answer_rounds):
    """A `python` that answers the probe and, for a spec, checks each GGUF exists and returns planted rounds;
    it keeps the spec it saw in spec_seen.json."""
    script = tmp_path / "fake_worker.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os, sys
            args = sys.argv[2:]
            if args == ["--probe"]:
                print(json.dumps({{"llama_cpp_python": "9.9.9-fake"}}))
                sys.exit(0)
            spec = json.loads(open(args[0]).read())
            open({str(tmp_path / "spec_seen.json")!r}, "w").write(json.dumps(spec))
            assert all(os.path.getsize(m["gguf"]) > 0 for m in spec["models"].values())
            print(json.dumps({{"llama_cpp_python": "9.9.9-fake", "models": {{
                n: {{"prompt_tokens": 9, "rounds": {answer_rounds!r}}} for n in spec["models"]}}}}))
            """
        )
    )
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(0o755)
    return python


def test_a_kept_gguf_has_the_reported_size_and_reads_back(tmp_path, llama, tokenizer):
    cfg = LMDeployConfig(gguf="f16", llama_cpp_python=NO_LLAMA, keep=True)
    rows, record = deploy_metrics({"student": (llama, tokenizer)}, PROMPTS, cfg, work_dir=tmp_path, threads=1)
    path = tmp_path / "student.f16.gguf"
    assert record["gguf_files"] == {"student": str(path)}
    assert rows["student"]["gguf_bytes"] == path.stat().st_size > 0
    assert rows["student"]["gguf_type"] == "f16" and set(rows["student"]) == set(DEPLOY_KEYS)
    reader = gguf.GGUFReader(str(path))
    # per layer 2 norms + q, k, v, o + gate, up, down; then token_embd, output_norm, output (untied)
    assert len(reader.tensors) == 9 * llama.config.num_hidden_layers + 3
    assert {t.name for t in reader.tensors} >= {"token_embd.weight", "output.weight", "blk.1.ffn_down.weight"}
    # no llama-cpp-python: sizes, and the reason instead of speeds
    assert rows["student"]["deploy_tokens_per_s"] is None
    assert (
        record["not_measured"].startswith("llama-cpp-python not installed")
        and NO_LLAMA in record["not_measured"]
    )
    assert record["busy"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.f16.gguf"]  # the HF folder is gone


def test_speeds_come_from_the_worker_and_ggufs_are_deleted(tmp_path, llama, tokenizer):
    python = _fake_worker(tmp_path, [[100.0, 20.0], [300.0, 40.0], [200.0, 10.0]])
    work = tmp_path / "deploy"
    cfg = LMDeployConfig(gguf="q8_0", llama_cpp_python=str(python), new_tokens=5, rounds=3)
    models = {"teacher": (llama, tokenizer), "cross-uld": (llama, tokenizer)}
    rows, record = deploy_metrics(models, PROMPTS, cfg, work_dir=work, threads=2, max_prompt_length=6)
    for name in models:
        assert rows[name]["deploy_tokens_per_s"] == 20.0  # the median of 20, 40, 10
        assert (rows[name]["deploy_tokens_per_s_min"], rows[name]["deploy_tokens_per_s_max"]) == (10.0, 40.0)
        assert rows[name]["deploy_prompt_tokens_per_s"] == 200.0
        assert rows[name]["gguf_type"] == "q8_0" and rows[name]["gguf_bytes"] > 0
    spec = json.loads((tmp_path / "spec_seen.json").read_text())
    expected = [
        encode_prompt(tokenizer, {"prompt": PROMPTS[0]})[-6:],
        encode_prompt(tokenizer, PROMPTS[1])[-6:],
    ]
    assert spec["models"]["teacher"]["prompts"] == expected  # the ids training and evaluation use, cut
    assert (spec["threads"], spec["new_tokens"], spec["rounds"]) == (2, 5, 3)
    assert record["llama_cpp_python"] == "9.9.9-fake" and record["gguf_type"] == "q8_0"
    assert record["models"]["teacher"]["rounds"] == [[100.0, 20.0], [300.0, 40.0], [200.0, 10.0]]
    assert isinstance(record["busy"], bool) and "description" in record["load"]
    assert record["gguf_files"] is None and list(work.iterdir()) == []  # not kept: nothing left


def test_a_crashing_worker_is_a_reason_not_a_crash_of_the_run(tmp_path, llama, tokenizer):
    script = tmp_path / "crash.py"
    script.write_text(
        "import json, os, signal, sys\n"
        "if sys.argv[2:] == ['--probe']:\n    print(json.dumps({'llama_cpp_python': '1'})); sys.exit(0)\n"
        "spec = json.loads(open(sys.argv[2]).read())\n"
        "print('kdistill-llama-speed: loading m ' + spec['models']['m']['gguf'], file=sys.stderr, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(0o755)
    cfg = LMDeployConfig(llama_cpp_python=str(python))
    rows, record = deploy_metrics({"m": (llama, tokenizer)}, PROMPTS, cfg, work_dir=tmp_path / "w", threads=1)
    assert rows["m"]["gguf_bytes"] > 0 and rows["m"]["deploy_tokens_per_s"] is None
    assert "SIGSEGV" in record["not_measured"] and "m.f16.gguf" in record["not_measured"]


def test_a_model_the_exporter_refuses_gets_a_reason(tmp_path, llama, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2)).eval()
    cfg = LMDeployConfig(llama_cpp_python=NO_LLAMA)
    models = {"teacher": (gpt2, tokenizer), "student": (llama, tokenizer)}
    rows, record = deploy_metrics(models, PROMPTS, cfg, work_dir=tmp_path, threads=1)
    assert rows["teacher"] == dict.fromkeys(DEPLOY_KEYS)
    assert "gpt2" in record["not_exported"]["teacher"] and "llama" in record["not_exported"]["teacher"]
    assert rows["student"]["gguf_bytes"] > 0 and "student" not in record["not_exported"]
    assert list(tmp_path.iterdir()) == []  # nothing written for the refused model, the student's GGUF deleted


def test_a_gguf_loaded_teacher_is_exported_too(tmp_path, llama, tokenizer):
    """A model loaded from a GGUF file cannot save_pretrained as it is (transformers' GGUF quantizer)."""
    from kdistill.export.gguf import export_gguf
    from kdistill.lm.models import is_saveable, load_causal_lm

    folder = tmp_path / "hf"
    llama.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    export_gguf(folder, tmp_path / "teacher.gguf", type="f16")
    teacher = load_causal_lm(tmp_path, gguf_file="teacher.gguf", dtype="float32", saveable=False)
    assert not is_saveable(teacher)
    cfg = LMDeployConfig(llama_cpp_python=NO_LLAMA, keep=True)
    work = tmp_path / "deploy"
    rows, record = deploy_metrics({"teacher": (teacher, tokenizer)}, PROMPTS, cfg, work_dir=work, threads=1)
    assert rows["teacher"]["gguf_bytes"] == (work / "teacher.f16.gguf").stat().st_size
    assert "not_exported" not in record


def test_evaluation_without_deploy_dumps_as_before():
    plain = LMEvaluationConfig()
    assert "deploy" not in plain.model_dump()
    with_deploy = LMEvaluationConfig(deploy={"gguf": "q8_0"})
    assert with_deploy.model_dump()["deploy"] == {
        "gguf": "q8_0",
        "llama_cpp_python": None,
        "new_tokens": 64,
        "rounds": 3,
        "keep": False,
    }
    run = LMRunConfig()
    assert run.config_hash() != run.model_copy(update={"evaluation": with_deploy}).config_hash()
    assert LMRunConfig.model_validate({"evaluation": {"deploy": None}}).config_hash() == run.config_hash()
    with pytest.raises(ValueError, match="gguf"):
        LMDeployConfig(gguf="q4_0")


def test_an_lm_run_reports_every_models_gguf_size_and_llama_cpp_speed(tmp_path, tokenizer):
    from kdistill.config import parse_config
    from kdistill.lm.recipe import run_lm

    python = _fake_worker(tmp_path, [[100.0, 20.0], [300.0, 40.0], [200.0, 10.0]])
    teacher, prompts = write_lm_task(tmp_path, prompts=8, layers=4, tokenizer=tokenizer)
    cfg = parse_config(
        lm_run_config(
            teacher,
            prompts,
            "tiny-deploy",
            held_out=2,
            generation={"max_new_tokens": 6, "batch_size": 8},
            student={"keep_layers": 2, "calibration_texts": 4},
            train={"epochs": 1, "micro_batch_size": 6, "grad_accum": 1, "max_length": 32},
            distill={"signal": "cached", "compare_with_sft": True},
            evaluation={
                "batch_size": 2,
                "timing_prompts": 1,
                "timing_new_tokens": 2,
                "timing_rounds": 1,
                "deploy": {"llama_cpp_python": str(python), "new_tokens": 4, "rounds": 3},
            },
        )
    )
    run_dir = run_lm(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache").run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = {m["role"]: m for m in metrics["models"]}
    assert set(rows) == {"teacher", "before", "sft", "distilled"}
    assert rows["teacher"]["gguf_bytes"] > rows["distilled"]["gguf_bytes"] == rows["sft"]["gguf_bytes"] > 0
    assert all(m["deploy_tokens_per_s"] == 20.0 and m["gguf_type"] == "f16" for m in rows.values())
    spec = json.loads((tmp_path / "spec_seen.json").read_text())
    assert set(spec["models"]) == {"teacher", "cached", "none"} and spec["new_tokens"] == 4
    assert metrics["deploy"]["llama_cpp_python"] == "9.9.9-fake"
    assert "in llama.cpp 1.00x the teacher's generated tokens/s (f16 GGUF" in metrics["summary"]["headline"]
    assert not (run_dir / "deploy").exists() or not any((run_dir / "deploy").iterdir())  # GGUFs not kept
    html = (run_dir / "report.html").read_text()
    assert "GGUF size" in html and "llama.cpp tok/s" in html
