"""Width pruning (Minitron): kept slices against slicing by hand, importance ranks planted units first, the
grouped-query rule, tied embeddings, save/load, the parameter budget, config errors and a run."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from kdistill.config import ConfigError, parse_config
from kdistill.evaluation.metrics import count_parameters
from kdistill.lm.models import model_from_config
from kdistill.lm.width import (
    WidthImportance,
    WidthSelection,
    apply_width,
    choose_width,
    plan_width,
    prune_width,
    prune_width_calibrated,
    width_importance,
    width_sizes,
)

VOCAB = 97


def tiny(model_type: str, **fields):
    """A 3-layer decoder with 4 query heads over 2 KV heads; every parameter random (norms and biases too),
    so a wrong slice of any tensor shows."""
    config = {
        "model_type": model_type,
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "tie_word_embeddings": model_type == "llama",  # Llama tied as SmolLM2, the others untied
        **fields,
    }
    if model_type == "qwen3":
        config.setdefault("head_dim", 16)  # not hidden_size / heads, as in real Qwen3 models
    model = model_from_config(config, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


FAMILIES = ["llama", "qwen2", "qwen3", "mistral"]
IDS = torch.tensor([[5, 77, 31, 9, 42, 13, 8, 64], [3, 14, 15, 92, 65, 35, 89, 79]])


def _batches(ids=IDS, lengths=(8, 5)):
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return [{"input_ids": ids, "attention_mask": mask}]


def _selection():
    """Different heads and channels in every layer; layer 1 keeps KV head 1 only, in its own order."""
    return WidthSelection(
        hidden=[0, 2, 3, 7, 8, 11, 12, 13, 17, 19, 20, 22, 25, 26, 29, 31],
        kv_heads=[[0], [1], [0]],
        query_heads=[[0, 1], [2, 3], [0, 1]],
        mlp=[list(range(0, 48, 2)), list(range(1, 48, 2)), list(range(24))],
    )


def _heads(rows: list[int], head_dim: int) -> list[int]:
    return [h * head_dim + d for h in rows for d in range(head_dim)]


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_kept_slices_equal_slicing_by_hand(family):
    teacher = tiny(family)
    sel = _selection()
    student = apply_width(teacher, sel)
    d = width_sizes(teacher.config).head_dim
    h = sel.hidden
    c = student.config
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads) == (
        16,
        24,
        2,
        1,
    )
    assert c.head_dim == d and type(student) is type(teacher)
    t, s = teacher.state_dict(), student.state_dict()
    expected = {
        "model.embed_tokens.weight": t["model.embed_tokens.weight"][:, h],
        "model.norm.weight": t["model.norm.weight"][h],
        "lm_head.weight": t["lm_head.weight"][:, h],
    }
    for i in range(3):
        p = f"model.layers.{i}."
        q, kv, m = _heads(sel.query_heads[i], d), _heads(sel.kv_heads[i], d), sel.mlp[i]
        expected |= {
            p + "input_layernorm.weight": t[p + "input_layernorm.weight"][h],
            p + "post_attention_layernorm.weight": t[p + "post_attention_layernorm.weight"][h],
            p + "self_attn.q_proj.weight": t[p + "self_attn.q_proj.weight"][q][:, h],
            p + "self_attn.k_proj.weight": t[p + "self_attn.k_proj.weight"][kv][:, h],
            p + "self_attn.v_proj.weight": t[p + "self_attn.v_proj.weight"][kv][:, h],
            p + "self_attn.o_proj.weight": t[p + "self_attn.o_proj.weight"][h][:, q],
            p + "mlp.gate_proj.weight": t[p + "mlp.gate_proj.weight"][m][:, h],
            p + "mlp.up_proj.weight": t[p + "mlp.up_proj.weight"][m][:, h],
            p + "mlp.down_proj.weight": t[p + "mlp.down_proj.weight"][h][:, m],
        }
        if family == "qwen2":  # q/k/v biases
            for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                expected[p + f"self_attn.{name}.bias"] = t[p + f"self_attn.{name}.bias"][rows]
        if family == "qwen3":  # per-head_dim norms, unchanged
            for name in ("q_norm", "k_norm"):
                expected[p + f"self_attn.{name}.weight"] = t[p + f"self_attn.{name}.weight"]
    assert set(s) == set(expected)
    for key, value in expected.items():
        assert torch.equal(s[key], value), key
        assert s[key].data_ptr() != t[key].data_ptr()  # copies, nothing shared with the teacher
    assert student(IDS).logits.shape == (2, 8, VOCAB)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_unchanged_sizes_reproduce_the_teacher_exactly(family):
    teacher = tiny(family)
    importance = width_importance(teacher, _batches())
    for student in (prune_width(teacher), prune_width(teacher, importance=importance, hidden_size=32)):
        assert torch.equal(student(IDS).logits, teacher(IDS).logits)
        assert student is not teacher


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@torch.no_grad()
def test_dropping_heads_and_mlp_channels_equals_zeroing_them_in_the_teacher(family):
    """With the hidden size kept, a dropped query head is a zero o_proj block and a dropped MLP channel a zero
    down_proj column: the narrow model must compute what the teacher computes with those zeroed."""
    teacher = tiny(family)
    sel = _selection()
    sel.hidden = list(range(32))
    student = apply_width(teacher, sel)
    d = width_sizes(teacher.config).head_dim
    masked = tiny(family)
    for i, layer in enumerate(masked.model.layers):
        dropped_q = [x for x in range(4 * d) if x not in set(_heads(sel.query_heads[i], d))]
        layer.self_attn.o_proj.weight[:, dropped_q] = 0
        layer.mlp.down_proj.weight[:, [x for x in range(48) if x not in set(sel.mlp[i])]] = 0
    assert torch.allclose(student(IDS).logits, masked(IDS).logits, rtol=0, atol=1e-5)


@torch.no_grad()
def test_importance_is_minitrons_aggregation_over_real_tokens():
    """MLP channel scores by hand: per sequence the mean |down_proj input| over its real tokens, then the L2
    norm over sequences; padding and batching change nothing."""
    model = tiny("llama")
    lengths = (8, 5)
    seen = []
    hook = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0][0]))
    for row, n in enumerate(lengths):  # each sequence alone, unpadded
        model(IDS[row : row + 1, :n])
    hook.remove()
    by_hand = torch.stack([a.abs().mean(dim=0) for a in seen]).double().pow(2).sum(dim=0).sqrt()

    padded = width_importance(model, _batches(lengths=lengths))
    one_by_one = width_importance(
        model,
        [
            {"input_ids": IDS[r : r + 1, :n], "attention_mask": torch.ones(1, n)}
            for r, n in enumerate(lengths)
        ],
    )
    assert padded.sequences == 2 and padded.tokens == 13
    assert torch.allclose(padded.mlp[1], by_hand, rtol=1e-5)
    for a, b in [(padded.hidden, one_by_one.hidden)] + list(
        zip(padded.heads + padded.mlp, one_by_one.heads + one_by_one.mlp, strict=True)
    ):
        assert torch.allclose(a, b, rtol=1e-5)
    assert padded.hidden.shape == (32,) and [x.shape for x in padded.heads] == [(4,)] * 3


@torch.no_grad()
def test_planted_units_rank_first():
    model = tiny("llama")
    model.model.layers[1].mlp.up_proj.weight[17] *= 100  # MLP channel 17 of layer 1
    model.model.layers[2].self_attn.v_proj.weight[8:16] *= 100  # KV head 1 of layer 2 (query heads 2, 3)
    model.model.layers[0].post_attention_layernorm.weight[5] = 100.0  # hidden channel 5 (others ~0.3)
    importance = width_importance(model, _batches())
    assert int(importance.mlp[1].argmax()) == 17
    assert set(importance.heads[2].argsort(descending=True)[:2].tolist()) == {2, 3}
    assert int(importance.hidden.argmax()) == 5
    sel = choose_width(model, importance, hidden_size=1, intermediate_size=1, num_key_value_heads=1)
    assert (
        sel.hidden == [5] and sel.mlp[1] == [17] and sel.kv_heads[2] == [1] and sel.query_heads[2] == [2, 3]
    )


@torch.no_grad()
def test_projected_head_score_sees_o_proj_and_output_does_not():
    model = tiny("llama")
    before = width_importance(model, _batches(), head_score="projected")
    model.model.layers[1].self_attn.o_proj.weight[:, 8:16] *= 100  # head 1 of layer 1 writes 100x more
    output = width_importance(model, _batches())
    projected = width_importance(model, _batches(), head_score="projected")
    assert int(projected.heads[1].argmax()) == 1
    assert torch.allclose(projected.heads[1][1], before.heads[1][1] * 100, rtol=1e-4)
    assert torch.allclose(projected.heads[0], before.heads[0])  # layer 0 sees the same inputs
    # by hand for layer 0: per sequence the mean over tokens of |o_proj block of head h @ its output|,
    # then the L2 norm over sequences
    seen = []
    hook = model.model.layers[0].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0][0]))
    for row, n in enumerate((8, 5)):
        model(IDS[row : row + 1, :n])
    hook.remove()
    w = model.model.layers[0].self_attn.o_proj.weight
    per_sequence = torch.stack(
        [
            torch.stack(
                [(a[:, h * 8 : h * 8 + 8] @ w[:, h * 8 : h * 8 + 8].T).norm(dim=-1).mean() for h in range(4)]
            )
            for a in seen
        ]
    )
    assert torch.allclose(projected.heads[0], per_sequence.double().pow(2).sum(0).sqrt(), rtol=1e-5)
    # the Minitron score is the attention output before o_proj: o_proj's weights do not move it
    assert torch.allclose(output.heads[1], width_importance(tiny("llama"), _batches()).heads[1])
    with pytest.raises(ValueError, match="head_score"):
        width_importance(model, _batches(), head_score="gradient")


def _importance(head_scores):
    return WidthImportance(
        hidden=torch.arange(32.0),
        heads=[torch.tensor(x) for x in head_scores],
        mlp=[torch.ones(48)] * 3,
        sequences=1,
        tokens=1,
    )


@torch.no_grad()
def test_grouped_query_rule():
    """Whole groups go by the L2 norm of their query heads' scores; then each kept group keeps the same number
    of its own best query heads."""
    model = tiny("llama")
    # groups (KV heads) are query heads {0, 1} and {2, 3}; norms: layer 0 |1, 5| > |2, .5|, layer 1 the other way
    importance = _importance([[1.0, 5.0, 2.0, 0.5], [0.1, 0.2, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    one_group = choose_width(model, importance, num_key_value_heads=1)  # query heads: the group's 2
    assert one_group.kv_heads == [[0], [1], [0]] and one_group.query_heads == [[0, 1], [2, 3], [0, 1]]
    one_head = choose_width(model, importance, num_attention_heads=1, num_key_value_heads=1)
    assert one_head.query_heads == [[1], [2], [0]]  # ties go to the earlier head
    one_per_group = choose_width(model, importance, num_attention_heads=2)  # both KV heads kept
    assert one_per_group.kv_heads == [[0, 1]] * 3 and one_per_group.query_heads == [[1, 2], [1, 2], [0, 2]]

    student = apply_width(model, one_per_group)
    c = student.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (2, 2, 8)
    assert c.num_attention_heads % c.num_key_value_heads == 0
    assert student.model.layers[0].self_attn.q_proj.weight.shape == (2 * 8, 32)
    assert torch.isfinite(student(IDS).logits).all()

    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        choose_width(model, importance, num_attention_heads=3)
    with pytest.raises(ValueError, match="query heads per KV head"):
        choose_width(model, importance, num_attention_heads=4, num_key_value_heads=1)
    with pytest.raises(ValueError, match="num_key_value_heads must be between 1 and the model's 2"):
        choose_width(model, importance, num_key_value_heads=3)
    with pytest.raises(ValueError, match="hidden_size must be between 1 and the model's 32"):
        prune_width(model, hidden_size=40, importance=importance)
    with pytest.raises(ValueError, match="needs `importance`"):
        prune_width(model, hidden_size=16)
    bad = one_per_group
    bad.query_heads = [[0, 1], [1, 2], [0, 2]]  # layer 0: two heads from group 0, none from group 1
    with pytest.raises(ValueError, match="layer 0: query heads"):
        apply_width(model, bad)
    # Llama's config wants hidden_size divisible by the heads (head_dim is explicit, but transformers checks)
    with pytest.raises(ValueError, match="LlamaConfig refuses the pruned sizes"):
        prune_width(model, hidden_size=30, importance=importance)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@torch.no_grad()
def test_pruned_model_round_trips_through_save_pretrained(tmp_path, family):
    teacher = tiny(family)
    importance = width_importance(teacher, _batches())
    student = prune_width(
        teacher,
        hidden_size=24,
        intermediate_size=40,
        num_attention_heads=2,
        num_key_value_heads=1,
        importance=importance,
    )
    tied = student.lm_head.weight is student.model.embed_tokens.weight
    assert tied == (family == "llama") == bool(student.config.tie_word_embeddings)
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(reloaded) is type(teacher)
    assert (reloaded.lm_head.weight is reloaded.model.embed_tokens.weight) == tied
    assert reloaded.config.head_dim == width_sizes(teacher.config).head_dim
    assert torch.equal(reloaded(IDS).logits, student(IDS).logits)
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    assert torch.equal(
        reloaded.generate(IDS[:1], **kwargs), student.generate(IDS[:1], use_cache=False, **kwargs)
    )


def test_unsupported_decoders_are_refused():
    gpt2 = model_from_config(
        {"model_type": "gpt2", "vocab_size": VOCAB, "n_embd": 32, "n_layer": 1, "n_head": 4}
    )
    with pytest.raises(ValueError, match="not model_type 'gpt2'"):
        width_sizes(gpt2.config)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_params_budget_picks_the_widest_model_that_fits(family):
    teacher = tiny(family, hidden_size=64, intermediate_size=96, vocab_size=40)
    total = count_parameters(teacher)
    for budget in (int(0.7 * total), int(0.4 * total)):
        target, planned = plan_width(teacher, budget)
        student = prune_width(
            teacher,
            hidden_size=target.hidden_size,
            intermediate_size=target.intermediate_size,
            num_attention_heads=target.num_attention_heads,
            num_key_value_heads=target.num_key_value_heads,
            importance=width_importance(teacher, _batches(ids=IDS % 40)),
        )
        assert count_parameters(student) == planned <= budget
        assert target.hidden_size % 8 == 0 and target.num_key_value_heads == 2
        # proportions kept: the MLP shrinks with the hidden size
        assert abs(target.intermediate_size / 96 - target.hidden_size / 64) <= 8 / 96
    assert plan_width(teacher, total)[0] == width_sizes(teacher.config)
    with pytest.raises(ValueError, match="below the narrowest width"):
        plan_width(teacher, 100)


def test_width_config_errors_name_the_field():
    def student(**fields):
        return parse_config({"task": "lm", "student": fields})

    with pytest.raises(ConfigError, match=r"student\.width\.hidden_size"):
        student(width={"hidden_size": 0})
    with pytest.raises(ConfigError, match=r"student\.width.*either sizes or params_budget"):
        student(width={"hidden_size": 64, "params_budget": 0.5})
    with pytest.raises(ConfigError, match=r"student\.width.*give hidden_size"):
        student(width={})
    with pytest.raises(ConfigError, match=r"student\.width\.params_budget.*whole number"):
        student(width={"params_budget": 1.5})
    with pytest.raises(ConfigError, match=r"student\.width\.params_budget"):
        student(width={"params_budget": 0})
    with pytest.raises(ConfigError, match=r"student\.width\.head_score"):
        student(width={"hidden_size": 8, "head_score": "gradient"})
    with pytest.raises(ConfigError, match=r"student\.width\.heads"):
        student(width={"heads": 2})
    with pytest.raises(ConfigError, match=r"student.*width needs init prune"):
        student(init="pretrained", model="x", width={"hidden_size": 8})
    cfg = student(keep_layers=None, width={"params_budget": 0.5})
    assert cfg.student.width.budget_params(1000) == 500 and cfg.student.width.sizes() == {}
    assert "width" not in parse_config({"task": "lm"}).student.model_dump()  # old configs hash as before


@torch.no_grad()
def test_calibrated_pruning_with_a_budget_reports_what_it_kept(tokenizer, tiny_model):
    texts = ["The with statement wraps a block.", "A for loop iterates over a sequence of items.", "x"]
    budget = int(0.6 * count_parameters(tiny_model))
    student, report = prune_width_calibrated(tiny_model, tokenizer, texts, params_budget=budget)
    assert report["params_after"] == count_parameters(student) <= budget
    assert report["after"]["hidden_size"] == student.config.hidden_size == len(report["kept_hidden"]) < 32
    assert report["calibration"]["sequences"] == 3 and report["params_budget"] == budget
    assert len(report["kept_query_heads"]) == tiny_model.config.num_hidden_layers
    json.dumps(report)  # plain data for the manifest


@pytest.mark.parametrize(
    ("keep_layers", "width"),
    [
        (3, {"hidden_size": 24, "intermediate_size": 40, "num_attention_heads": 2}),
        (None, {"params_budget": 0.7, "head_score": "projected"}),  # width only, 70% of the teacher's size
    ],
)
def test_lm_run_prunes_depth_then_width_and_saves_a_loadable_student(tmp_path, keep_layers, width):
    from tests.fixtures.tiny_lm import lm_run_config, write_lm_task

    from kdistill.lm.recipe import run_lm

    teacher, prompts = write_lm_task(tmp_path, prompts=8, layers=4)
    cfg = parse_config(
        lm_run_config(
            teacher,
            prompts,
            "tiny-width",
            held_out=2,
            generation={"max_new_tokens": 6, "batch_size": 8},
            student={"keep_layers": keep_layers, "calibration_texts": 4, "width": width},
            train={
                "epochs": 1,
                "micro_batch_size": 6,
                "grad_accum": 1,
                "max_length": 32,
                "warmup_steps": 0,
            },
            evaluation={"batch_size": 2, "timing_prompts": 1, "timing_new_tokens": 2, "timing_rounds": 1},
        )
    )
    result = run_lm(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    pruning = json.loads((result.run_dir / "manifest.json").read_text())["pruning"]
    student = AutoModelForCausalLM.from_pretrained(result.run_dir / "student")
    after_width = pruning["width"]["after"]
    c = student.config
    assert after_width == {
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
    }
    if keep_layers == 3:
        assert pruning["layers_after"] == c.num_hidden_layers == 3
        assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads) == (
            24,
            40,
            2,
            2,
        )
    else:
        assert pruning["layers_after"] == c.num_hidden_layers == 4 and "influence" not in pruning
        assert pruning["width"]["params_budget"] == int(0.7 * pruning["params_before"])
        assert pruning["width"]["head_score"] == "projected"
    assert pruning["params_after"] == count_parameters(student) <= 0.7 * pruning["params_before"]
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    teacher_row, before, after = metrics["models"]
    assert before["params"] == after["params"] == count_parameters(student) < teacher_row["params"]
    assert after["perplexity_on_teacher_answers"] != before["perplexity_on_teacher_answers"]  # it trained
