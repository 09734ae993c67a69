"""Sharded training (train.parallel fsdp, FSDP2 over 2 gloo processes) takes the steps of one process.

One torchrun launch trains every FSDP run of a test in turn (a launch costs seconds of imports). The
references are 1-process runs with the same global batch (2 micro-batches of 2 rows) on the same float32
model; FSDP runs take micro-batches of 1 row, 2 per process, so the accumulation without a gradient
reduce-scatter is exercised too. Tolerance: float32 weights within 5e-5 absolute (measured: up to 7e-6) after 4 AdamW steps at
lr 1e-2 (the reductions add the same numbers in another order; a wrong gradient, a missing shard or a
skipped step moves weights by ~1e-2).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from kdistill.lm.capture import capture_topk
from kdistill.lm.config import LMDistillConfig, LoraConfig
from kdistill.lm.fsdp import mixed_precision_policy
from kdistill.lm.models import load_causal_lm
from kdistill.lm.objectives import CachedTeacher, OnlineTeacher, SFTObjective, TokenDistillObjective
from kdistill.lm.sft_data import tokenize_rows
from kdistill.lm.signal_store import TeacherSignal
from kdistill.lm.train import train_objective

from .conftest import loop_config
from .distributed_fsdp_main import KD, kd_student

ATOL = 5e-5
STEPS = 4


@pytest.fixture(scope="module")
def examples(tokenizer, rows):
    return tokenize_rows(tokenizer, rows, max_length=96).examples


@pytest.fixture(scope="module")
def signal_dir(model_dir, examples, tmp_path_factory):
    """The teacher's top-16 log-probabilities of every example, captured once."""
    store = tmp_path_factory.mktemp("signal")
    teacher = load_causal_lm(model_dir, dtype=torch.float32)
    capture_topk(
        teacher, examples, store, k=16, key_inputs={"teacher": "tiny", "tokenizer": "tiny"}, shard_examples=4
    )
    return store


def _reference(model_dir, examples, mode, signal_dir=None):
    """One process, 2 micro-batches of 2 rows per step: (history, weights)."""
    model = load_causal_lm(model_dir, dtype=torch.float32)
    if mode == "sft":
        objective = SFTObjective(model)
    elif mode == "cached":
        cfg = LMDistillConfig(signal="cached", **KD)
        teacher = CachedTeacher(TeacherSignal(signal_dir))
        objective = TokenDistillObjective(kd_student(model), cfg, teacher=teacher, pad_token_id=0)
    else:
        cfg = LMDistillConfig(signal="online", **KD)
        objective = TokenDistillObjective(
            kd_student(model), cfg, teacher=OnlineTeacher(model), pad_token_id=0
        )
    cfg = loop_config(micro_batch_size=2, grad_accum=2, lr=1e-2, warmup_steps=1, log_every=1, grad_clip=0.5)
    result = train_objective(objective, examples, cfg, steps=STEPS, pad_token_id=0)
    return result.history, {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def _torchrun_fsdp(
    spec: dict, tmp_path: Path, *, expect_kill: bool = False, accelerate: bool = False
) -> None:
    """Run distributed_fsdp_main.py with `spec` under torchrun (or `accelerate launch` with the example
    config for 2 CPU processes), 2 gloo processes, 1 thread each."""
    spec_file = tmp_path / f"spec-{len(list(tmp_path.glob('spec-*')))}.json"
    spec_file.write_text(json.dumps(spec))
    with socket.socket() as probe:  # a free port (torchrun's static rendezvous cannot take port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = Path(__file__).with_name("distributed_fsdp_main.py")
    if accelerate:
        config = Path(__file__).parents[2] / "examples" / "accelerate" / "cpu_two_processes.yaml"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        cmd += [f"--main_process_port={port}", str(script), str(spec_file)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
        cmd += ["--master_addr=127.0.0.1", f"--master_port={port}", str(script), str(spec_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"torchrun hung: {(err.stderr or b'')[-3000:]!r}") from err
    if expect_kill:
        assert done.returncode != 0 and "SIGKILL" in done.stderr, done.stderr[-3000:]
    else:
        assert done.returncode == 0, done.stderr[-3000:]


def _write_examples(examples, tmp_path) -> str:
    path = tmp_path / "examples.json"
    keep = ("input_ids", "labels", "record_id")
    path.write_text(json.dumps([{k: e[k] for k in keep} for e in examples]))
    return str(path)


def _assert_same_run(run_dir: Path, history, weights, initial, what: str) -> None:
    saved = json.loads((run_dir / "history.json").read_text())["history"]
    assert [h["tokens"] for h in saved] == [h["tokens"] for h in history], what
    assert [h["loss"] for h in saved] == pytest.approx([h["loss"] for h in history], rel=1e-5), what
    got = load_file(str(run_dir / "weights.safetensors"))
    assert got.keys() == weights.keys(), what
    moved = max((weights[k] - w0).abs().max().item() for k, w0 in initial.items())
    assert moved > 100 * ATOL, "the reference did not train"
    for name, value in weights.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=ATOL, msg=f"{what}: {name}")


def test_fsdp_equals_one_process_for_sft_cached_and_online_kd(model_dir, examples, signal_dir, tmp_path):
    """SFT, cached KD and online KD (with activation checkpointing) sharded over 2 processes end with the
    1-process weights and losses; the consolidated SFT student loads with plain transformers; each process
    holds half of the parameters, gradients and AdamW state; bf16 mixed precision trains float32 weights."""
    common = {"micro": 1, "accum": 2, "steps": STEPS}
    spec = {
        "model_dir": str(model_dir),
        "examples": _write_examples(examples, tmp_path),
        "out": str(tmp_path),
        "shards": True,
        "runs": [
            {"name": "sft", "mode": "sft", **common},
            {"name": "cached", "mode": "cached", "signal_dir": str(signal_dir), **common},
            {"name": "online", "mode": "online", "activation_checkpointing": True, **common},
            {"name": "bf16", "mode": "sft", "mixed_precision": "bf16", **common},
            {"name": "on_policy", "mode": "on_policy", "micro": 1, "accum": 1, "steps": 2},
        ],
    }
    _torchrun_fsdp(spec, tmp_path)

    for mode, run in (("sft", "sft"), ("cached", "cached"), ("online", "online")):
        history, weights = _reference(model_dir, examples, mode, signal_dir)
        start = load_causal_lm(model_dir) if mode == "sft" else kd_student(load_causal_lm(model_dir))
        _assert_same_run(tmp_path / run, history, weights, start.state_dict(), mode)

    # the consolidated student is a plain save_pretrained folder
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "model")
    got = load_file(str(tmp_path / "sft" / "weights.safetensors"))
    for name, value in plain.state_dict().items():
        assert torch.equal(value, got[name]), name

    counts = [json.loads((tmp_path / f"shards-{r}.json").read_text()) for r in (0, 1)]
    errors = counts[0]["grad_error"]
    assert "student.lm_head.weight" in errors or "student.model.embed_tokens.weight" in errors
    assert max(errors.values()) <= 1e-6 * counts[0]["grad_scale"], errors  # head (tied) and every layer
    total = counts[0]["total"]
    for kind, expected_total in (("params", total), ("grads", total), ("adam", 2 * total)):
        held = [c[kind] for c in counts]
        assert sum(held) == expected_total, kind  # every element on exactly one process
        assert all(0.45 * expected_total <= h <= 0.55 * expected_total for h in held), (kind, held)

    bf16 = json.loads((tmp_path / "bf16" / "history.json").read_text())["history"]
    sft = json.loads((tmp_path / "sft" / "history.json").read_text())["history"]
    assert bf16[0]["loss"] == pytest.approx(sft[0]["loss"], rel=2e-2)  # bf16 rounding, not another loss
    assert bf16[-1]["loss"] < bf16[0]["loss"]
    assert all(
        v.dtype == torch.float32 for v in load_file(str(tmp_path / "bf16" / "weights.safetensors")).values()
    )

    on_policy = json.loads((tmp_path / "on_policy" / "history.json").read_text())
    assert on_policy["done"] == 2 and all(
        torch.isfinite(torch.tensor(h["loss"])) for h in on_policy["history"]
    )


def test_fsdp_resumes_exactly_after_both_processes_are_killed(model_dir, examples, tmp_path):
    """A 2-process FSDP run SIGKILLed after step 3 (last sharded checkpoint: step 2) and started again ends
    with the weights and losses of an uninterrupted run, bit for bit (same processes, same order). The
    uninterrupted run is launched by `accelerate launch` with examples/accelerate/cpu_two_processes.yaml,
    the others by torchrun: both launchers give the same 2-process run."""
    common = {"mode": "sft", "micro": 1, "accum": 2, "steps": STEPS}
    base = {
        "model_dir": str(model_dir),
        "examples": _write_examples(examples, tmp_path),
        "out": str(tmp_path),
    }
    _torchrun_fsdp({**base, "runs": [{"name": "straight", **common}]}, tmp_path, accelerate=True)
    _torchrun_fsdp(
        {**base, "runs": [{"name": "resumed", "stop_after": 3, "kill": True, **common}]},
        tmp_path,
        expect_kill=True,
    )
    checkpoints = tmp_path / "resumed" / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-000000002"
    assert not (tmp_path / "resumed" / "weights.safetensors").exists()
    _torchrun_fsdp({**base, "runs": [{"name": "resumed", **common}]}, tmp_path)

    straight = json.loads((tmp_path / "straight" / "history.json").read_text())["history"]
    resumed = json.loads((tmp_path / "resumed" / "history.json").read_text())["history"]
    assert resumed == straight
    a = load_file(str(tmp_path / "straight" / "weights.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_fsdp_settings_are_checked(model_dir, examples):
    with pytest.raises(ValueError, match="bf16"):
        mixed_precision_policy("fp16")
    assert mixed_precision_policy("bf16").param_dtype == torch.bfloat16
    assert mixed_precision_policy("bf16").reduce_dtype == torch.float32
    cfg = loop_config(parallel="fsdp")
    with pytest.raises(ValueError, match="LoRA"):
        train_objective(
            SFTObjective(load_causal_lm(model_dir)), examples, cfg, steps=1, lora=LoraConfig(), pad_token_id=0
        )
    if not torch.distributed.is_initialized():  # one process: nothing to shard over
        with pytest.raises(ValueError, match="torchrun"):
            train_objective(SFTObjective(load_causal_lm(model_dir)), examples, cfg, steps=1, pad_token_id=0)
