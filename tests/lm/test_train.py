"""SFT training: batch-size-invariant loss, exact resume, LoRA, saving, and that it actually learns."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from kdistill.lm.config import LMTrainConfig, LoraConfig
from kdistill.lm.evaluate import evaluate_student, response_perplexity
from kdistill.lm.models import load_causal_lm, model_from_config
from kdistill.lm.objectives import response_nll_sum
from kdistill.lm.sft_data import collate, count_response_tokens, tokenize_rows
from kdistill.lm.train import TrainingDiverged, train_sft
from kdistill.runs.schedule import lr_multiplier
from kdistill.runs.steps import batch_indices

from .conftest import loop_config, tiny_llama_config


@pytest.fixture(scope="module")
def examples(tokenizer, rows):
    return tokenize_rows(tokenizer, rows, max_length=96).examples


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_response_nll_sum_is_the_masked_token_nll(tiny_model, examples):
    batch = collate(examples[:3], pad_token_id=0)
    logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = 0.0
    for b in range(3):
        for t in range(1, batch["labels"].shape[1]):
            if (label := batch["labels"][b, t].item()) != -100:
                expected -= torch.log_softmax(logits[b, t - 1].double(), dim=-1)[label].item()
    assert response_nll_sum(logits, batch["labels"]).item() == pytest.approx(expected, rel=1e-5)
    assert response_nll_sum(logits, torch.full_like(batch["labels"], -100)).item() == 0.0


def test_sft_objective_from_hidden_states_equals_the_full_logits_loss(model_dir, examples):
    """The chunked SFT loss (never forms the logits) has the full-logits loss's value and gradients, for
    every parameter (tied head included), at a chunk size that splits the batch."""
    from kdistill.lm.objectives import SFTObjective

    batch = collate(examples[:4], pad_token_id=0)
    results = []
    for chunk_size in (None, 7):
        model = load_causal_lm(model_dir, dtype=torch.float64)
        objective = SFTObjective(model, chunk_size=chunk_size)
        assert objective.chunk_size == chunk_size
        nll = objective(batch)["nll"]
        nll.backward()
        results.append((nll.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, plain_grads), (chunked, chunked_grads) = results
    assert chunked == pytest.approx(plain, rel=1e-12)
    assert plain_grads.keys() == chunked_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_sft_objective_takes_the_full_logits_of_a_model_that_soft_caps_them():
    """Gemma 2 soft-caps its logits after the head: hidden @ head is not its distribution, so SFT must use
    the model's own logits, and its loss is the model's."""
    from transformers import Gemma2Config

    from kdistill.lm.objectives import SFTObjective

    shapes = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    shapes |= {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}
    torch.manual_seed(0)
    gemma = AutoModelForCausalLM.from_config(Gemma2Config(**shapes, final_logit_softcapping=2.0))
    objective = SFTObjective(gemma)
    assert objective.chunk_size is None
    ids = torch.randint(1, 64, (2, 6))
    labels = ids.clone()
    labels[:, :2] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    logits = gemma(input_ids=ids).logits
    assert logits.abs().max() <= 2.0  # the cap is in force
    assert objective(batch)["nll"].item() == pytest.approx(response_nll_sum(logits, labels).item(), rel=1e-6)


def test_lr_multiplier_warmup_then_decay():
    kw = {"warmup_steps": 4, "total_steps": 14}
    assert [lr_multiplier(s, schedule="cosine", **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(4, schedule="cosine", **kw) == 1.0
    assert lr_multiplier(9, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_multiplier(9, schedule="linear", **kw) == pytest.approx(0.5)
    assert lr_multiplier(14, schedule="cosine", **kw) == pytest.approx(0.0)
    assert lr_multiplier(14, schedule="linear", min_lr_ratio=0.1, **kw) == pytest.approx(0.1)
    assert lr_multiplier(13, schedule="constant", **kw) == 1.0


@pytest.mark.parametrize("micro, accum", [(1, 4), (2, 2)])
def test_accumulation_equals_one_big_batch(model_dir, examples, micro, accum):
    # rows of a window differ in answer length, so a mean of per-micro-batch means would differ
    rows = batch_indices(0, len(examples), 4, seed=0).tolist()
    counts = [count_response_tokens(collate([examples[i]], pad_token_id=0)["labels"]) for i in rows]
    assert len(set(counts)) > 1
    runs = []
    for mb, ga in [(4, 1), (micro, accum)]:
        model = load_causal_lm(model_dir, dtype=torch.float64)
        cfg = loop_config(
            micro_batch_size=mb, grad_accum=ga, lr=1e-2, warmup_steps=1, log_every=1, grad_clip=0.5
        )
        result = train_sft(model, examples, cfg, steps=3, pad_token_id=0)
        runs.append((result.history, _params(result.model)))
    (h_big, w_big), (h_acc, w_acc) = runs
    assert [h["loss"] for h in h_acc] == pytest.approx([h["loss"] for h in h_big], rel=1e-9)
    assert [h["tokens"] for h in h_acc] == [h["tokens"] for h in h_big]
    for name in w_big:
        assert torch.allclose(w_acc[name], w_big[name], rtol=0, atol=1e-6), name
    assert not torch.equal(
        w_big["model.layers.0.mlp.up_proj.weight"],
        _params(load_causal_lm(model_dir))["model.layers.0.mlp.up_proj.weight"].double(),
    )


def _dropout_model(tokenizer):
    # attention dropout consumes torch's RNG every step: resume must restore it
    return model_from_config(tiny_llama_config(len(tokenizer), dropout=0.2), seed=3)


@pytest.mark.parametrize("stop_at", [3, 4])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, tokenizer, examples, stop_at):
    cfg = loop_config(
        micro_batch_size=2, grad_accum=2, lr=3e-3, warmup_steps=2, log_every=2, checkpoint_every=2
    )
    run = {"steps": 6, "seed": 1, "pad_token_id": 0}
    torch.manual_seed(0)
    full = train_sft(_dropout_model(tokenizer), examples, cfg, **run)

    torch.manual_seed(0)
    part = train_sft(
        _dropout_model(tokenizer), examples, cfg, **run, checkpoint_dir=tmp_path, stop_after=stop_at
    )
    assert (part.steps_done, part.finished) == (stop_at, False)
    torch.manual_seed(123)  # a new process would not share the interrupted one's RNG
    resumed = train_sft(_dropout_model(tokenizer), examples, cfg, **run, checkpoint_dir=tmp_path)
    assert resumed.finished and resumed.steps_done == 6
    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.history == full.history


def test_lora_trains_only_adapters_and_saves_a_plain_merged_model(tmp_path, model_dir, tokenizer, examples):
    original = _params(load_causal_lm(model_dir))
    lora = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    cfg = loop_config(micro_batch_size=4, lr=1e-2, checkpoint_every=2)
    run = {"steps": 4, "lora": lora, "pad_token_id": 0}
    part = train_sft(
        load_causal_lm(model_dir), examples, cfg, **run, checkpoint_dir=tmp_path / "ck", stop_after=2
    )
    adapted = part.model.state_dict()
    lora_b = [k for k in adapted if "lora_B" in k]
    assert lora_b and all(adapted[k].abs().sum() > 0 for k in lora_b)  # B starts at zero: it trained
    for name, value in adapted.items():
        if "lora_" not in name:  # base weights are untouched before the merge
            base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(value, original[base_name]), name
    ckpt = json.loads((tmp_path / "ck" / "step-000000002" / "state.json").read_text())
    assert "lora_A" in json.dumps(ckpt["state"]) and "mlp" not in json.dumps(ckpt["state"])  # adapters only

    out = tmp_path / "student"
    done = train_sft(
        load_causal_lm(model_dir),
        examples,
        cfg,
        **run,
        tokenizer=tokenizer,
        output_dir=out,
        checkpoint_dir=tmp_path / "ck",
    )
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft
    merged = reloaded.state_dict()
    assert set(merged) == set(original)
    changed = {k for k in merged if not torch.equal(merged[k], original[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
    ids = torch.tensor([examples[0]["input_ids"]])
    assert torch.equal(reloaded(ids).logits, done.model(ids).logits)


def test_saved_model_reloads_with_identical_logits(tmp_path, tiny_model, tokenizer, examples):
    cfg = loop_config(micro_batch_size=4, lr=1e-3, log_every=1)
    seen = []
    result = train_sft(
        tiny_model,
        examples,
        cfg,
        steps=2,
        pad_token_id=0,
        tokenizer=tokenizer,
        output_dir=tmp_path / "out",
        on_log=seen.append,
    )
    assert result.output_dir == tmp_path / "out" and seen == result.history and len(seen) == 2
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    batch = collate(examples[:3], pad_token_id=0)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    assert torch.equal(reloaded(**inputs).logits, result.model(**inputs).logits)
    assert json.loads((tmp_path / "out" / "sft_history.json").read_text()) == json.loads(
        json.dumps(result.history)
    )
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_sft_memorises_a_tiny_dataset(model_dir, tokenizer, rows, examples):
    model = load_causal_lm(model_dir)
    before = response_perplexity(model, examples, pad_token_id=0)["perplexity"]
    logged = []
    cfg = loop_config(micro_batch_size=8, lr=1e-2, warmup_steps=5, log_every=25, eval_every=50)
    result = train_sft(
        model,
        examples,
        cfg,
        steps=100,
        pad_token_id=0,
        evaluate=lambda m: {"ppl": response_perplexity(m, examples, pad_token_id=0)["perplexity"]},
        on_log=logged.append,
    )
    after = response_perplexity(result.model, examples, pad_token_id=0)["perplexity"]
    assert before > 200  # about the vocabulary size (512): an untrained model knows nothing
    assert after < 2, (before, after)
    assert [e["step"] for e in logged] == [25, 50, 75, 100]
    assert logged[-1]["eval"]["ppl"] == pytest.approx(after)
    assert logged[-1]["loss"] < logged[0]["loss"] / 3
    # and it answers like the teacher when prompted the way generation prompts it
    scores = evaluate_student(result.model, tokenizer, rows, max_new_tokens=24)
    assert scores["rouge_l_f1"] > 0.5, scores["answers"]


def _first_step(model_dir, examples, mixed_precision):
    """Train a fresh float32 copy 2 steps; return the result, the step-1 gradient of one MLP weight, the
    dtypes that layer computed in during training, and the weight before training."""
    model = load_causal_lm(model_dir)
    layer = model.model.layers[0].mlp.up_proj
    before = layer.weight.detach().clone()
    grads, dtypes = [], []
    layer.weight.register_hook(lambda grad: grads.append(grad.detach().clone()))
    hook = layer.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    cfg = loop_config(mixed_precision=mixed_precision, log_every=1)
    result = train_sft(model, examples, cfg, steps=2, pad_token_id=0)
    hook.remove()
    return result, grads[0], set(dtypes), before


def test_bf16_autocast_matches_float32_and_gives_back_a_plain_float32_model(model_dir, examples):
    """bf16 autocast: the layers really compute in bf16, yet the first step's loss and gradient are the
    float32 run's within bf16's precision (8 mantissa bits, ~0.4% per rounding; autocast keeps the
    log-softmax in float32): loss within 0.1%, gradient within 3% in norm (about 0.001% and 0.5% here).
    The master weights stay float32 and move, and the model comes back with no autocast around forward."""
    full, full_grad, full_dtypes, before = _first_step(model_dir, examples, "no")
    half, half_grad, half_dtypes, _ = _first_step(model_dir, examples, "bf16")
    assert (full_dtypes, half_dtypes) == ({torch.float32}, {torch.bfloat16})
    assert half.history[0]["loss"] == pytest.approx(full.history[0]["loss"], rel=1e-3)
    assert half_grad.dtype == torch.float32  # the gradient of the float32 master weight
    assert (half_grad - full_grad).norm() <= 0.03 * full_grad.norm()
    assert math.isfinite(half.history[-1]["loss"])
    assert not torch.equal(half.model.model.layers[0].mlp.up_proj.weight, before)
    assert next(half.model.parameters()).dtype == torch.float32  # master weights stay float32
    seen = []  # accelerate casts outputs back to float32, so look inside: no autocast left around forward
    half.model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    half.model(torch.tensor([examples[0]["input_ids"]]))
    assert seen == [torch.float32]


def test_non_finite_loss_stops_with_a_clear_error(tiny_model, examples):
    with torch.no_grad():
        tiny_model.model.norm.weight.fill_(math.nan)
    with pytest.raises(TrainingDiverged, match="not finite at step 1"):
        train_sft(tiny_model, examples, loop_config(), steps=2, pad_token_id=0)
    with pytest.raises(ValueError, match="grad_accum"):
        LMTrainConfig(grad_accum=0)


def _torchrun(script_args, nproc):
    """Run distributed_sft_main.py under torchrun (gloo on CPU), one intra-op thread per process."""
    with socket.socket() as probe:  # a free port (torchrun's static rendezvous cannot take port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = Path(__file__).with_name("distributed_sft_main.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    cmd += ["--master_addr=127.0.0.1", f"--master_port={port}", str(script), *map(str, script_args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"torchrun hung: {(err.stderr or b'')[-3000:]!r}") from err
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_take_the_same_steps_as_one_with_accumulation(model_dir, examples, tmp_path):
    """DDP over 2 processes (gloo), 2 rows each, = 1 process with 2 micro-batches of 2: a 2-process run
    stopped after 2 steps and rerun resumes (its step-2 checkpoint is read, not rewritten) and ends with
    the same 4 losses and weights. Its first session's steps and its resumed ones are both 2-process steps,
    so one stopped-and-resumed run checks both claims (2 launches of torchrun, not 3)."""
    examples_file = tmp_path / "examples.json"
    examples_file.write_text(json.dumps([{k: e[k] for k in ("input_ids", "labels")} for e in examples]))
    model = load_causal_lm(model_dir, dtype=torch.float64)
    cfg = loop_config(micro_batch_size=2, grad_accum=2, lr=1e-2, warmup_steps=1, log_every=1, grad_clip=0.5)
    single = train_sft(model, examples, cfg, steps=4, pad_token_id=0)

    out = tmp_path / "resumed"
    _torchrun([model_dir, examples_file, out, 2, 1, 2], nproc=2)
    assert json.loads((out / "history.json").read_text())["done"] == 2
    step2 = out / "checkpoints" / "step-000000002"
    first_session = {f.name: f.stat().st_mtime_ns for f in step2.iterdir()}
    _torchrun([model_dir, examples_file, out, 2, 1], nproc=2)
    assert {f.name: f.stat().st_mtime_ns for f in step2.iterdir()} == first_session  # resumed from step 2

    outcome = json.loads((out / "history.json").read_text())
    assert outcome["done"] == 4
    history = outcome["history"]
    assert [h["tokens"] for h in history] == [h["tokens"] for h in single.history]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in single.history], rel=1e-9)
    weights = load_file(str(out / "weights.safetensors"))
    for name, value in _params(single.model).items():
        assert torch.allclose(weights[name], value, rtol=0, atol=1e-9), name


def test_warmup_is_cut_to_the_run_and_steps_are_checked(tiny_model, examples):
    """A warmup longer than the run ends one step before its end, so the run still reaches the peak lr;
    then the cosine starts at the peak (closed form: 1/2, 1, 1 of lr for 3 steps)."""
    cfg = loop_config(lr=1e-3, warmup_steps=10, log_every=1)
    result = train_sft(tiny_model, examples, cfg, steps=3, pad_token_id=0)
    assert [h["lr"] for h in result.history] == pytest.approx([5e-4, 1e-3, 1e-3], rel=1e-12)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        train_sft(tiny_model, examples, cfg, steps=0, pad_token_id=0)
