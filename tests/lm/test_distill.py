"""White-box LM distillation: the objective's terms against independent computations, cached == online at
full k, accumulation invariance, kill-and-resume, hidden states with projections, on-policy samples."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.lm.capture import capture_topk
from kdistill.lm.config import LMDistillConfig
from kdistill.lm.models import load_causal_lm, model_from_config
from kdistill.lm.objectives import CachedTeacher, OnlineTeacher, TokenDistillObjective
from kdistill.lm.sft_data import collate, count_response_tokens, tokenize_rows
from kdistill.lm.signal_store import TeacherSignal
from kdistill.lm.train import train_objective
from kdistill.losses.hidden import hidden_cosine, hidden_mse

from .conftest import loop_config, tiny_llama_config


@pytest.fixture(scope="module")
def examples(tokenizer, rows):
    return tokenize_rows(tokenizer, rows, max_length=96).examples


@pytest.fixture(scope="module")
def teacher(model_dir):
    return load_causal_lm(model_dir, dtype=torch.float64)


def _student(tokenizer, *, hidden=32, seed=1, dtype=torch.float64):
    config = tiny_llama_config(len(tokenizer), layers=2) | {
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
    }
    return model_from_config(config, seed=seed).to(dtype)


@pytest.fixture(scope="module")
def full_signal(teacher, examples, tmp_path_factory):
    """The teacher's whole distribution (k = vocabulary) captured to a store."""
    store = tmp_path_factory.mktemp("signal")
    k = teacher.config.vocab_size
    capture_topk(
        teacher, examples, store, k=k, key_inputs={"teacher": "tiny", "tokenizer": "tiny"}, shard_examples=4
    )
    return TeacherSignal(store)


def _batch(examples, rows):
    batch = collate([examples[i] for i in rows], pad_token_id=0)
    batch["ids"] = [examples[i]["record_id"] for i in rows]
    return batch


def _reference_kd_sum(student, teacher, batch, temperature):
    """sum over response positions of KL(p_teacher || p_student) at temperature T, from full logits."""
    s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[
            :, :-1
        ]
    mask = batch["labels"][:, 1:] != -100
    log_ps = F.log_softmax(s_logits.double() / temperature, -1)[mask]
    log_pt = F.log_softmax(t_logits.double() / temperature, -1)[mask]
    return (log_pt.exp() * (log_pt - log_ps)).sum()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_term_is_the_summed_forward_kl_and_cached_equals_online(
    tokenizer, teacher, examples, full_signal, temperature
):
    student = _student(tokenizer)
    batch = _batch(examples, [0, 3, 5])
    weight = student.model.layers[0].mlp.up_proj.weight
    expected = _reference_kd_sum(student, teacher, batch, temperature)
    (expected_grad,) = torch.autograd.grad(expected, weight)
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected_ce = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100, reduction="sum"
    )
    (expected_ce_grad,) = torch.autograd.grad(expected_ce, weight)
    for ce_weight in (0.0, 0.5):  # 0.5: KD and CE share one fused gradient per chunk
        settings = LMDistillConfig(temperature=temperature, chunk_size=7, ce_weight=ce_weight)
        online = TokenDistillObjective(student, settings, teacher=OnlineTeacher(teacher), pad_token_id=0)
        cached = TokenDistillObjective(student, settings, teacher=CachedTeacher(full_signal), pad_token_id=0)
        for objective in (online, cached):
            terms = objective(batch)
            assert set(terms) == ({"kd/forward_kl", "ce"} if ce_weight else {"kd/forward_kl"})
            assert terms["kd/forward_kl"].item() == pytest.approx(expected.item(), rel=1e-6)
            if ce_weight:
                assert terms["ce"].item() == pytest.approx(ce_weight * expected_ce.item(), rel=1e-6)
            # the gradient of the summed terms (what the training loop backpropagates)
            (grad,) = torch.autograd.grad(sum(terms.values()), weight)
            want = expected_grad + ce_weight * expected_ce_grad.double()
            assert torch.allclose(grad.double(), want, atol=1e-8)


def test_cached_signal_is_joined_by_record_id_not_position(tokenizer, teacher, examples, full_signal):
    student = _student(tokenizer)
    objective = TokenDistillObjective(
        student, LMDistillConfig(signal="cached"), teacher=CachedTeacher(full_signal), pad_token_id=0
    )
    batch = _batch(examples, [4, 1])
    swapped = dict(batch, ids=list(reversed(batch["ids"])))
    with pytest.raises(ValueError, match="tokens but its teacher signal"):
        objective(swapped)  # the other example's rows have another length: refused, not misaligned
    unknown = dict(batch, ids=["nope", batch["ids"][1]])
    with pytest.raises(KeyError, match="'nope' has no teacher signal"):
        objective(unknown)


def test_window_normalisation_makes_accumulation_invisible(tokenizer, teacher, examples):
    """KD + CE + hidden-state terms: 1 micro-batch of 4 rows == 4 micro-batches of 1 row."""
    hidden = {"layer_map": {1: 2, 2: 4}, "loss": "mse", "weight": 0.3}
    settings = LMDistillConfig(
        signal="online", ce_weight=0.5, hidden=hidden, divergence="generalized_jsd", chunk_size=16
    )
    weights = []
    for mb, ga in [(4, 1), (1, 4)]:
        student = _student(tokenizer, hidden=24)
        torch.manual_seed(0)  # the projections' initialisation
        objective = TokenDistillObjective(student, settings, teacher=OnlineTeacher(teacher), pad_token_id=0)
        assert objective.extra_parameters() == 2 * 24 * 32  # two 24 -> 32 projections
        cfg = loop_config(micro_batch_size=mb, grad_accum=ga, lr=1e-2, log_every=1, grad_clip=0.5)
        result = train_objective(objective, examples, cfg, steps=3, pad_token_id=0)
        weights.append(({k: v.clone() for k, v in objective.state_dict().items()}, result.history))
    (w_big, h_big), (w_acc, h_acc) = weights
    assert [h["loss"] for h in h_acc] == pytest.approx([h["loss"] for h in h_big], rel=1e-9)
    assert set(h_big[0]["terms"]) == {"kd/generalized_jsd", "ce", "hidden/mse"}
    for name in w_big:
        assert torch.allclose(w_acc[name], w_big[name], atol=1e-9), name


def test_distillation_pulls_the_student_towards_the_teacher(tokenizer, teacher, examples, full_signal):
    student = _student(tokenizer)
    batch = _batch(examples, list(range(8)))
    before = _reference_kd_sum(student, teacher, batch, 1.0).item()
    objective = TokenDistillObjective(
        student, LMDistillConfig(signal="cached"), teacher=CachedTeacher(full_signal), pad_token_id=0
    )
    train_objective(objective, examples, loop_config(micro_batch_size=4, lr=1e-2), steps=15, pad_token_id=0)
    assert _reference_kd_sum(student, teacher, batch, 1.0).item() < 0.8 * before


def _distil_two_steps(tokenizer, teacher, examples, divergence, mixed_precision):
    """Distil a fresh float32 student 2 steps (online teacher, KD + CE fused); return the result, the
    step-1 gradient of one MLP weight, the dtypes that layer computed in, and the weights before."""
    student = _student(tokenizer, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    layer = student.model.layers[0].mlp.up_proj
    grads, dtypes = [], []
    layer.weight.register_hook(lambda grad: grads.append(grad.detach().clone()))
    hook = layer.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    settings = LMDistillConfig(signal="online", divergence=divergence, ce_weight=0.5, chunk_size=16)
    objective = TokenDistillObjective(
        student, settings, teacher=OnlineTeacher(teacher, dtype=torch.float32), pad_token_id=0
    )
    cfg = loop_config(micro_batch_size=4, lr=1e-3, mixed_precision=mixed_precision, log_every=1)
    result = train_objective(objective, examples, cfg, steps=2, pad_token_id=0)
    hook.remove()
    return result, grads[0], set(dtypes), before


@pytest.mark.parametrize("divergence", ["forward_kl", "generalized_jsd"])
def test_bf16_mixed_precision_distillation_matches_float32(tokenizer, teacher, examples, divergence):
    """accelerate's bf16 autocast around the objective: the student's layers really compute in bf16, yet
    the first step's terms (KD and CE) and gradient are the float32 run's within bf16's precision (8
    mantissa bits, ~0.4% per rounding; the chunked loss's softmaxes stay float32): each term within 0.1%,
    the gradient within 3% in norm (about 0.006% and 0.5% here). The float32 master weights move, head
    (tied) and layers alike."""
    full, full_grad, full_dtypes, _ = _distil_two_steps(tokenizer, teacher, examples, divergence, "no")
    half, half_grad, half_dtypes, before = _distil_two_steps(tokenizer, teacher, examples, divergence, "bf16")
    assert (full_dtypes, half_dtypes) == ({torch.float32}, {torch.bfloat16})
    assert set(half.history[0]["terms"]) == {f"kd/{divergence}", "ce"}
    for name, value in full.history[0]["terms"].items():
        assert half.history[0]["terms"][name] == pytest.approx(value, rel=1e-3), name
    assert half_grad.dtype == torch.float32
    assert (half_grad - full_grad).norm() <= 0.03 * full_grad.norm()
    assert all(math.isfinite(h["loss"]) for h in half.history)
    assert all(p.dtype == torch.float32 for p in half.model.parameters())
    moved = [n for n, p in half.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert (
        "lm_head.weight" in moved or "model.embed_tokens.weight" in moved
    )  # the head (tied) got its gradient
    assert any("layers.0" in n for n in moved)


def test_interrupted_distillation_resumes_to_the_same_weights(
    tokenizer, teacher, examples, full_signal, tmp_path
):
    cfg = loop_config(micro_batch_size=2, grad_accum=2, lr=1e-2, checkpoint_every=2)
    settings = LMDistillConfig(
        signal="cached", divergence="skew_kl", divergence_kwargs={"alpha": 0.1}, temperature=2.0
    )

    def objective():
        return TokenDistillObjective(
            _student(tokenizer), settings, teacher=CachedTeacher(full_signal), pad_token_id=0
        )

    straight = train_objective(objective(), examples, cfg, steps=6, pad_token_id=0)
    part = train_objective(
        objective(), examples, cfg, steps=6, pad_token_id=0, checkpoint_dir=tmp_path, stop_after=3
    )
    assert not part.finished and part.steps_done == 3
    resumed = train_objective(objective(), examples, cfg, steps=6, pad_token_id=0, checkpoint_dir=tmp_path)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_on_policy_steps_train_on_the_students_own_samples(tokenizer, teacher, examples):
    settings = LMDistillConfig(signal="online", on_policy_fraction=1.0, on_policy_max_new_tokens=5)
    student = _student(tokenizer, dtype=torch.float32)
    objective = TokenDistillObjective(
        student,
        settings,
        teacher=OnlineTeacher(teacher, dtype=torch.float32),
        pad_token_id=0,
        eos_token_id=2,
        seed=3,
    )
    batch = _batch(examples, [0, 1, 2])
    torch.manual_seed(11)
    (sampled,) = objective.prepare_window([batch], step=0)
    assert sampled["on_policy"] and sampled["ids"] == batch["ids"]
    # an independent sample under the same seed: the prompts left-padded by hand, sampled from the student
    rows = zip(batch["input_ids"], batch["labels"], strict=True)
    prompts = [ids[: int((labels != -100).nonzero()[0])].tolist() for ids, labels in rows]
    width = max(len(p) for p in prompts)
    torch.manual_seed(11)
    student.eval()
    independent = student.generate(
        input_ids=torch.tensor([[0] * (width - len(p)) + p for p in prompts]),
        attention_mask=torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]),
        do_sample=True,
        top_k=0,
        max_new_tokens=5,
        pad_token_id=0,
        eos_token_id=2,
    )[:, width:].tolist()
    student.train()
    for i, (prompt, new) in enumerate(zip(prompts, independent, strict=True)):
        prompt_len = len(prompt)
        assert sampled["input_ids"][i, :prompt_len].tolist() == prompt
        answer = sampled["labels"][i][sampled["labels"][i] != -100]
        assert 1 <= len(answer) <= 5  # only the sampled tokens carry the loss
        assert answer.tolist() == (new[: new.index(2) + 1] if 2 in new else new)  # the student's own sample
        assert torch.equal(answer, sampled["input_ids"][i, prompt_len : prompt_len + len(answer)])
        teacher_answer = batch["labels"][i][batch["labels"][i] != -100]
        assert answer.tolist() != teacher_answer[: len(answer)].tolist()  # not the dataset's answer
    assert count_response_tokens(sampled["labels"]) > 0
    terms = objective(sampled)
    assert torch.isfinite(terms["kd/forward_kl"]) and terms["kd/forward_kl"] > 0
    # lambda = 0.5: which steps are on-policy is a function of (seed, step), the same on every rerun
    half = TokenDistillObjective(
        student,
        LMDistillConfig(signal="online", on_policy_fraction=0.5, on_policy_max_new_tokens=2),
        teacher=OnlineTeacher(teacher, dtype=torch.float32),
        pad_token_id=0,
    )
    flags = [half.prepare_window([batch], s)[0] is not batch for s in range(40)]
    assert 8 < sum(flags) < 32
    assert flags == [half.prepare_window([batch], s)[0] is not batch for s in range(40)]


def test_configuration_errors_are_explained(tokenizer, teacher, full_signal):
    with pytest.raises(ValueError, match="online teacher"):
        TokenDistillObjective(
            _student(tokenizer),
            LMDistillConfig(signal="online", on_policy_fraction=0.5),
            teacher=CachedTeacher(full_signal),
            pad_token_id=0,
        )
    other_vocab = model_from_config(tiny_llama_config(300, layers=1), seed=0).double()
    with pytest.raises(
        ValueError,
        match="an online teacher must share the student.s tokenizer .another tokenizer: signal cached with distill.cross_tokenizer",
    ):
        TokenDistillObjective(
            other_vocab, LMDistillConfig(signal="online"), teacher=OnlineTeacher(teacher), pad_token_id=0
        )
    with pytest.raises(ValueError, match="did you mean 'forward_kl'"):
        LMDistillConfig(divergence="forward_kll")


def test_hidden_state_losses_match_their_formulas():
    g = torch.Generator().manual_seed(0)
    s, t = (
        torch.randn(2, 3, 5, generator=g, dtype=torch.float64),
        torch.randn(2, 3, 5, generator=g, dtype=torch.float64),
    )
    mask = torch.tensor([[True, False, True], [True, True, False]])
    per_mse = [((s[b, i] - t[b, i]) ** 2).mean().item() for b in range(2) for i in range(3) if mask[b, i]]
    assert hidden_mse(s, t, mask=mask).item() == pytest.approx(sum(per_mse) / 4)
    cos = [
        1 - (s[b, i] @ t[b, i] / (s[b, i].norm() * t[b, i].norm())).item()
        for b in range(2)
        for i in range(3)
        if mask[b, i]
    ]
    assert hidden_cosine(s, t, mask=mask, reduction="sum").item() == pytest.approx(sum(cos))
    assert hidden_cosine(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-12)  # scale-free
    assert hidden_mse(s, t, mask=torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0
    with pytest.raises(ValueError, match="project the student"):
        hidden_mse(s, t[..., :4])


def test_two_process_distillation_equals_one_process(model_dir, teacher, examples, tmp_path):
    """DDP over 2 gloo processes with the same global batch: the same losses and student weights."""
    import json

    from safetensors.torch import load_file

    from .distributed_sft_main import KD, kd_student
    from .test_train import _torchrun

    examples_file = tmp_path / "examples.json"
    examples_file.write_text(json.dumps([{k: e[k] for k in ("input_ids", "labels")} for e in examples]))
    objective = TokenDistillObjective(kd_student(teacher), KD, teacher=OnlineTeacher(teacher), pad_token_id=0)
    cfg = loop_config(micro_batch_size=2, grad_accum=2, lr=1e-2, warmup_steps=1, log_every=1, grad_clip=0.5)
    single = train_objective(objective, examples, cfg, steps=4, pad_token_id=0)

    _torchrun([model_dir, examples_file, tmp_path / "two", 2, 1, "-", "kd"], nproc=2)
    history = json.loads((tmp_path / "two" / "history.json").read_text())["history"]
    assert [h["terms"] for h in history] == [pytest.approx(h["terms"], rel=1e-9) for h in single.history]
    weights = load_file(str(tmp_path / "two" / "weights.safetensors"))
    for name, value in single.model.state_dict().items():
        assert torch.allclose(weights[name], value, rtol=0, atol=1e-9), name


def test_models_that_transform_their_logits_after_the_head_are_refused() -> None:
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig

    from kdistill.lm.models import backbone_and_head

    shapes = {
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 8,
    }
    gemma = AutoModelForCausalLM.from_config(Gemma2Config(**shapes, final_logit_softcapping=30.0))
    with pytest.raises(
        ValueError, match=r"Gemma2ForCausalLM transforms its logits .*final_logit_softcapping=30.0"
    ):
        backbone_and_head(gemma)
    gemma.config.final_logit_softcapping = None  # no soft-cap: logits are hidden @ head^T again
    backbone, head = backbone_and_head(gemma)
    assert head is gemma.get_output_embeddings()
    llama = AutoModelForCausalLM.from_config(LlamaConfig(**shapes))
    assert backbone_and_head(llama)[1] is llama.lm_head
    # a multimodal model keeps its language model's settings in a sub-config: read there too
    llama.config.text_config = Gemma2Config(**shapes, final_logit_softcapping=30.0)
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0"):
        backbone_and_head(llama)
