"""`kdistill run` with `task: lm` end to end on a tiny teacher: generation, pruning, SFT, evaluation, report."""

import json
from pathlib import Path

import pytest
from tests.fixtures.tiny_lm import lm_run_config, tiny_llama, train_tokenizer, write_lm_task
from transformers import AutoModelForCausalLM

from kdistill.config import ConfigError, parse_config
from kdistill.lm.recipe import run_lm
from kdistill.runs.locations import resolve_model_ref


def _run_dirs(runs: Path) -> list[Path]:
    """The run directories in `runs` (not its hidden `.locks`)."""
    return sorted(d for d in runs.iterdir() if not d.name.startswith("."))


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root`: its bytes and modification time (ns), by relative path."""
    return {
        str(f.relative_to(root)): (f.read_bytes(), f.stat().st_mtime_ns)
        for f in root.rglob("*")
        if f.is_file()
    }


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    return write_lm_task(root, prompts=16, layers=6, prompt="Explain topic {i} of Python.")


def _config(teacher, prompts, **train):
    return parse_config(
        lm_run_config(
            teacher,
            prompts,
            "tiny-lm",
            held_out=4,
            generation={"max_new_tokens": 10, "batch_size": 8},
            student={"keep_layers": 3, "calibration_texts": 4},
            train={
                "epochs": 3,
                "micro_batch_size": 4,
                "grad_accum": 1,
                "lr": 2e-3,
                "max_length": 48,
                "checkpoint_every": 2,
                **train,
            },
            evaluation={"batch_size": 4},
        )
    )


def test_lm_run_distils_a_pruned_student_and_reports_it(tmp_path, tiny_teacher):
    teacher, prompts = tiny_teacher
    result = run_lm(_config(teacher, prompts), runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    d = result.run_dir
    metrics = json.loads((d / "metrics.json").read_text())
    teacher_row, before, after = metrics["models"]
    assert [m["role"] for m in metrics["models"]] == ["teacher", "before", "distilled"]
    # the student is the teacher's 3 most influential layers (of 6), trained on its answers
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["pruning"]["layers_after"] == 3 and 0 in manifest["pruning"]["kept"]
    assert manifest["data"] == {
        "generations": manifest["data"]["generations"],
        "answers": 16,
        "train": 12,
        "held_out": 4,
    }
    assert before["params"] == after["params"] < teacher_row["params"]
    assert after["perplexity_on_teacher_answers"] < before["perplexity_on_teacher_answers"]
    # the saved student loads with plain transformers
    student = AutoModelForCausalLM.from_pretrained(d / "student")
    assert student.config.num_hidden_layers == 3
    html = (d / "report.html").read_text()
    assert "ppl on teacher answers" in html and "Example answers" in html
    # speed from one timing phase after training: the same 4 prompts, 32 forced new tokens, in turns
    timing = metrics["timing"]
    assert set(timing["models"]) == {
        "teacher",
        "none",
    }  # the before row has the distilled student's architecture
    assert timing["new_tokens"] == 32 and timing["batch_size"] == 4 and timing["max_prompt_length"] == 256
    assert timing["threads"] == 1 and timing["rounds"] == 3 and timing["warmup_rounds"] == 1
    for row in metrics["models"]:
        assert row["latency_ms_min"] <= row["latency_ms"] <= row["latency_ms_max"]
        assert row["tokens_per_s_min"] <= row["tokens_per_s"] <= row["tokens_per_s_max"]
    median_s = timing["models"]["teacher"]["median_ms"] / 1000
    assert teacher_row["tokens_per_s"] == pytest.approx(4 * 32 / median_s)
    assert before["latency_ms"] == after["latency_ms"]
    assert "Timing: 3 rounds after 1 warm-up round" in html


def test_lm_generation_is_cached_between_runs(tmp_path, tiny_teacher, monkeypatch):
    """The second run reuses the first one's teacher answers: nothing is generated (the generation
    pipeline is not started, the teacher model is not called) and the store's files keep their bytes and
    modification times."""
    import kdistill.generate.run
    from kdistill.generate.teachers.hf_local import HFLocalTeacher

    pipelines, model_calls = [], []
    real_generate, real_model_call = kdistill.generate.run.generate, HFLocalTeacher._generate

    def counted_pipeline(*args, **kwargs):
        pipelines.append(args)
        return real_generate(*args, **kwargs)

    def counted_model_call(self, requests):
        model_calls.append(len(requests))
        return real_model_call(self, requests)

    monkeypatch.setattr(kdistill.generate.run, "generate", counted_pipeline)
    monkeypatch.setattr(HFLocalTeacher, "_generate", counted_model_call)
    teacher, prompts = tiny_teacher
    cfg = _config(teacher, prompts, epochs=1)
    first = run_lm(cfg, runs_dir=tmp_path / "a", cache_root=tmp_path / "cache")
    assert len(pipelines) == 1 and sum(model_calls) == 16  # every prompt answered once
    store = tmp_path / "cache" / "generations"
    before = _files(store)
    pipelines.clear()
    model_calls.clear()
    second = run_lm(cfg, runs_dir=tmp_path / "b", cache_root=tmp_path / "cache")
    assert pipelines == [] and model_calls == []
    assert _files(store) == before
    used = [
        json.loads((r.run_dir / "manifest.json").read_text())["data"]["generations"] for r in (first, second)
    ]
    assert used[0] == used[1] and used[0].startswith(str(store))


def test_lm_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"student: Value error|student.*needs model"):
        parse_config({"task": "lm", "student": {"init": "pretrained"}})
    with pytest.raises(ConfigError, match="task: expected 'classify'"):
        parse_config({"task": "speech"})
    with pytest.raises(FileNotFoundError, match="'no_such_package_kdistill' is not installed"):
        resolve_model_ref("pkg:no_such_package_kdistill")
    assert resolve_model_ref("pkg:kdistill/recipes").endswith("kdistill/recipes")  # a folder inside a package
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        resolve_model_ref("pkg:kdistill/no_such_folder")
    with pytest.raises(FileNotFoundError, match="'/no/such/teacher': no such directory"):
        resolve_model_ref("/no/such/teacher")
    assert resolve_model_ref("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_interrupted_lm_run_resumes_to_the_same_student(tmp_path, tiny_teacher):
    import torch

    teacher, prompts = tiny_teacher
    cfg = _config(teacher, prompts)
    reference = run_lm(cfg, runs_dir=tmp_path / "ref", cache_root=tmp_path / "cache")
    with pytest.raises(RuntimeError, match="stopped early"):
        run_lm(cfg, runs_dir=tmp_path / "cut", cache_root=tmp_path / "cache", stop_after=3)
    (cut,) = _run_dirs(tmp_path / "cut")
    first_session = json.loads((cut / "jobs" / "sft" / "train_clock.json").read_text())["seconds"]
    assert first_session > 0
    resumed = run_lm(cfg, runs_dir=tmp_path / "cut", cache_root=tmp_path / "cache")
    assert resumed.resumed and _run_dirs(tmp_path / "cut") == [cut]
    distilled = resumed.metrics["models"][-1]
    assert distilled["role"] == "distilled" and distilled["train_seconds"] > first_session  # both sessions
    assert reference.metrics["models"][0]["train_seconds"] is None  # the teacher was not trained here
    a = AutoModelForCausalLM.from_pretrained(reference.run_dir / "student").state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed.run_dir / "student").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_lm_run_matches_one_process_with_accumulation(tmp_path, tiny_teacher):
    """`torchrun --nproc_per_node 2 -m kdistill.cli run cfg.yaml`: one run directory, the main process
    reports, and the student equals a 1-process run whose accumulation makes the same global batch."""
    import os
    import socket
    import subprocess
    import sys

    import torch
    import yaml

    teacher, prompts = tiny_teacher
    cache = tmp_path / "cache"
    # one epoch (3 steps of 4 answers): each step already compares the split window with accumulation
    single = run_lm(
        _config(teacher, prompts, epochs=1, micro_batch_size=2, grad_accum=2),
        runs_dir=tmp_path / "one",
        cache_root=cache,
    )
    config = _config(teacher, prompts, epochs=1, micro_batch_size=2, grad_accum=1)
    config_file = tmp_path / "two.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={port}", "-m", "kdistill.cli", "run", str(config_file)]
    cmd += ["--runs-dir", str(tmp_path / "two"), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDISTILL_CACHE_DIR": str(cache)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout)  # printed once, by the main process
    (run_dir,) = _run_dirs(tmp_path / "two")
    assert metrics["run"]["run_dir"] == str(run_dir)
    assert len(list((cache / "generations").iterdir())) == 1  # the second process reused the answers
    a = AutoModelForCausalLM.from_pretrained(single.run_dir / "student").state_dict()
    b = AutoModelForCausalLM.from_pretrained(run_dir / "student").state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-5), name


def test_lm_run_with_a_cached_teacher_signal_compares_kd_with_sft(tmp_path, tiny_teacher):
    teacher, prompts = tiny_teacher
    cfg = _config(teacher, prompts, epochs=2)
    cfg = cfg.model_copy(
        update={
            "distill": cfg.distill.model_copy(
                update={"signal": "cached", "top_k": 16, "compare_with_sft": True}
            )
        }
    )
    result = run_lm(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    metrics = result.metrics
    assert [m["role"] for m in metrics["models"]] == ["teacher", "before", "sft", "distilled"]
    assert metrics["models"][-1]["name"] == "student (KD: cached forward_kl)"
    assert "SFT-only student" in metrics["summary"]["headline"]
    assert metrics["objective"]["signal"] == "cached"
    # the signal was captured once into the content-addressed cache, with k = 16
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    (store,) = list((tmp_path / "cache" / "teacher_signal").iterdir())
    assert manifest["teacher_signal"] == str(store)
    assert json.loads((store / "manifest.json").read_text())["k"] == 16
    # both students trained the same number of steps, on different objectives
    kd_steps = [h["step"] for h in metrics["history"] if h["model"].startswith("student (KD")]
    sft_steps = [h["step"] for h in metrics["history"] if h["model"].startswith("student (SFT")]
    assert kd_steps == sft_steps and kd_steps
    assert {"kd/forward_kl"} == set(next(h for h in metrics["history"] if "terms" in h)["terms"])
    kd = AutoModelForCausalLM.from_pretrained(result.run_dir / "student").state_dict()
    sft = AutoModelForCausalLM.from_pretrained(result.run_dir / "student_sft").state_dict()
    assert any(not (kd[k] == sft[k]).all() for k in kd)
    assert "student (SFT on answers only)" in (result.run_dir / "report.html").read_text()
    assert not any("distill.temperature" in w for w in manifest.get("warnings", []))  # T = 1 is exact


def test_a_top_k_signal_at_another_temperature_is_warned_about(tmp_path, tiny_teacher):
    """The one-bucket tail is biased at T != 1 (docs/topk_tail.md): the run says so, in which direction."""
    teacher, prompts = tiny_teacher
    cfg = _config(teacher, prompts, epochs=1)
    for temperature, direction in ((2.0, "underestimates"), (0.5, "overestimates")):
        distill = cfg.distill.model_copy(update={"signal": "cached", "top_k": 8, "temperature": temperature})
        result = run_lm(
            cfg.model_copy(update={"distill": distill}),
            runs_dir=tmp_path / f"runs-{temperature}",
            cache_root=tmp_path / "cache",
        )
        warnings = json.loads((result.run_dir / "manifest.json").read_text())["warnings"]
        (warning,) = [w for w in warnings if "distill.temperature" in w]
        assert warning.startswith(f"distill.temperature is {temperature:g} with a top-k teacher signal")
        assert direction in warning


def test_lm_run_online_teacher_with_hidden_states_and_on_policy_steps(tmp_path, tiny_teacher, monkeypatch):
    """An online-teacher run with hidden-state terms where half the steps are on-policy: on those steps the
    loss sees the student's own answers, i.e. each prompt followed by exactly the tokens the student
    generated (up to its eos); the other steps keep the teacher's answers."""
    from kdistill.lm.objectives import TokenDistillObjective

    generated: list[list[list[int]]] = []  # per sampled batch, per row: the tokens student.generate made
    eos: list[int | None] = []
    seen: list[dict] = []  # every batch the objective computed its loss on
    real_sample, real_forward = TokenDistillObjective.sample_answers, TokenDistillObjective.forward

    def spy_sample(self, batch):
        student_generate = self.student.generate

        def spy_generate(**kwargs):
            out = student_generate(**kwargs)
            generated.append(out[:, kwargs["input_ids"].shape[1] :].tolist())
            return out

        self.student.generate = spy_generate
        eos.append(self.eos_token_id)
        try:
            return real_sample(self, batch)
        finally:
            del self.student.generate

    def spy_forward(self, batch):
        seen.append(batch)
        return real_forward(self, batch)

    monkeypatch.setattr(TokenDistillObjective, "sample_answers", spy_sample)
    monkeypatch.setattr(TokenDistillObjective, "forward", spy_forward)
    teacher, prompts = tiny_teacher
    cfg = _config(teacher, prompts, epochs=1)  # 12 answers, 4 per step: 3 steps
    distill = {
        "signal": "online",
        "divergence": "generalized_jsd",
        "divergence_kwargs": {"beta": 0.5},
        "ce_weight": 0.5,
        "hidden": {"layer_map": {1: 1, 3: 5}, "loss": "cosine", "weight": 0.1},
        "on_policy_fraction": 0.5,
        "on_policy_max_new_tokens": 4,
    }
    cfg = parse_config(cfg.model_dump(mode="json") | {"distill": distill})
    result = run_lm(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    terms = next(h for h in result.metrics["history"] if "terms" in h)["terms"]
    assert set(terms) == {"kd/generalized_jsd", "ce", "hidden/cosine"}
    assert result.metrics["models"][-1]["extra_params"] == 0  # same width: no projection needed
    assert "on-policy" in result.metrics["objective"]["description"]

    on_policy = [b for b in seen if b.get("on_policy")]
    off_policy = [b for b in seen if not b.get("on_policy")]
    assert len(on_policy) == len(generated) >= 1 and len(off_policy) >= 1  # seed 0: steps 2 and 3 sample
    assert eos[0] is not None
    for batch, rows in zip(on_policy, generated, strict=True):
        for labels, ids, new in zip(batch["labels"], batch["input_ids"], rows, strict=True):
            answer = new[: new.index(eos[0]) + 1] if eos[0] in new else new
            assert 1 <= len(answer) <= 4
            assert labels[labels != -100].tolist() == answer  # the loss covers the student's tokens
            start = int((labels != -100).nonzero()[0])  # the first answer position, right after the prompt
            assert ids[start : start + len(answer)].tolist() == answer


def test_lm_distill_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="distill: .*need signal: online"):
        parse_config({"task": "lm", "distill": {"signal": "cached", "on_policy_fraction": 0.5}})
    with pytest.raises(ConfigError, match="distill: .*unknown divergence 'fkl'"):
        parse_config({"task": "lm", "distill": {"signal": "online", "divergence": "fkl"}})


def test_sigkilled_white_box_run_resumes_to_the_same_student(tmp_path, tiny_teacher):
    """`kdistill run` with a cached teacher signal, SIGKILLed after its first training checkpoint and rerun:
    the student ends bit-identical to an uninterrupted run's. 3 epochs (9 steps): the 8 steps after that
    checkpoint, and saving the student, are the killer's margin."""
    import yaml
    from tests.lm.kill_helpers import killed_and_rerun_equals_uninterrupted

    teacher, prompts = tiny_teacher
    config = _config(teacher, prompts, epochs=3, checkpoint_every=1).model_dump(mode="json")
    config["distill"] |= {"signal": "cached", "top_k": 8, "divergence": "reverse_kl", "ce_weight": 0.2}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    killed_and_rerun_equals_uninterrupted(cfg_path, tmp_path, "kd-cached")


def test_a_student_with_another_tokenizer_is_refused_up_front(tmp_path, tiny_teacher):
    teacher, prompts = tiny_teacher
    other = tmp_path / "other-student"
    tok = train_tokenizer(300)
    tiny_llama(len(tok), hidden=32, layers=2).save_pretrained(other)
    tok.save_pretrained(other)
    cfg = parse_config(
        _config(teacher, prompts).model_dump(mode="json")
        | {"student": {"init": "pretrained", "model": str(other)}, "distill": {"signal": "cached"}}
    )
    with pytest.raises(ValueError, match=r"tokenizers differ: .*set distill.cross_tokenizer") as err:
        run_lm(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    assert "kdistill capture --cross-tokenizer" in str(err.value)
    assert not (tmp_path / "cache" / "generations").exists()  # refused before the teacher answered
    small = {"model_type": "llama", "vocab_size": 100, "hidden_size": 16, "intermediate_size": 32}
    small |= {"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}
    cfg = parse_config(
        _config(teacher, prompts).model_dump(mode="json") | {"student": {"init": "config", "config": small}}
    )
    with pytest.raises(ValueError, match="vocabulary has 100 tokens but its tokenizer 512"):
        run_lm(cfg, runs_dir=tmp_path / "runs2", cache_root=tmp_path / "cache")


def test_lm_config_loop_knobs_default_to_the_former_loop_and_are_validated():
    """The loop's knobs live in `train` now: an old config validates unchanged and gets the values the loop
    had built in (cosine to 0, clip 1.0, ~20 log entries, no evaluation during training)."""
    from kdistill.config import load_config

    for recipe in ("smollm2", "smollm2-logits"):
        cfg = load_config(recipe, [])
        t = cfg.train
        assert (t.schedule, t.min_lr_ratio, t.grad_clip, t.log_every, t.eval_every) == (
            "cosine",
            0.0,
            1.0,
            None,
            None,
        )
        assert (cfg.threads, cfg.report_to, cfg.tracking_uri) == (None, [], None)
    with pytest.raises(ConfigError, match=r"train.log_every: Input should be greater than or equal to 1"):
        parse_config({"task": "lm", "train": {"log_every": 0}})
    with pytest.raises(
        ConfigError, match=r"train.schedule: Input should be 'cosine', 'linear' or 'constant'"
    ):
        parse_config({"task": "lm", "train": {"schedule": "step"}})
    with pytest.raises(ConfigError, match=r"threads: Input should be greater than or equal to 1"):
        parse_config({"task": "lm", "threads": 0})
    with pytest.raises(ConfigError, match="distill.hidden: .*layer_map is empty"):
        parse_config({"task": "lm", "distill": {"signal": "online", "hidden": {"layer_map": {}}}})
    with pytest.raises(ConfigError, match="report_to: unknown sink 'wandb'; known: tensorboard, mlflow"):
        parse_config({"task": "lm", "report_to": ["wandb"]})


def test_lm_run_uses_its_threads_and_logs_held_out_perplexity_every_eval_every_steps(tmp_path, tiny_teacher):
    import torch

    teacher, prompts = tiny_teacher
    cfg = _config(teacher, prompts, epochs=1, eval_every=1)  # 12 answers / 4 per step: 3 steps
    torch.set_num_threads(2)  # the caller's setting (the autouse fixture restores the test's own)
    result = run_lm(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    assert torch.get_num_threads() == 2  # restored after the run
    assert json.loads((result.run_dir / "eval_teacher.json").read_text())["threads"] == 1  # cfg.threads
    history = result.metrics["history"]
    assert [h["step"] for h in history if "eval" in h] == [1, 2, 3]
    # the last check is the trained student's perplexity on the held-out answers, as the evaluation measures it
    assert history[-1]["eval"]["perplexity"] == pytest.approx(
        result.metrics["models"][-1]["perplexity_on_teacher_answers"], rel=1e-6
    )
