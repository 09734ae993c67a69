"""Layer pruning: block influence against a by-hand computation, and a pruned model that is exactly the kept layers."""

from pydoc_data.topics import topics

import pytest
import torch
from transformers import AutoModelForCausalLM

from kdistill.lm.models import count_parameters, load_causal_lm
from kdistill.lm.prune import (
    block_influence,
    calibration_batches,
    choose_layers,
    prune_layers,
    pruning_report,
)


def _layer_states(model, layers, ids):
    """Hidden states entering each of `layers` and leaving the last, run one by one (no padding, no mask)."""
    hidden = model.model.embed_tokens(ids)
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    rotary = model.model.rotary_emb(hidden, positions)
    states = [hidden]
    for layer in layers:
        hidden = layer(hidden, attention_mask=None, position_embeddings=rotary, position_ids=positions)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        states.append(hidden)
    return states


TEXTS = [
    " ".join(topics[k].split()[: 6 + 5 * i]) for i, k in enumerate(sorted(topics)[20:25])
]  # different lengths


@torch.no_grad()
def test_block_influence_matches_a_by_hand_computation(tiny_model, tokenizer):
    # by hand: each text alone (no padding), 1 - a.b / (|a| |b|) in float64, summed over all tokens
    sums, count = torch.zeros(4, dtype=torch.float64), 0
    for text in TEXTS:
        ids = torch.tensor([tokenizer(text, truncation=True, max_length=48)["input_ids"]])
        states = _layer_states(tiny_model, tiny_model.model.layers, ids)
        states[-1] = tiny_model.model.norm(
            states[-1]
        )  # transformers' last hidden state is after the final norm
        for i in range(4):
            a, b = states[i][0].double(), states[i + 1][0].double()
            sums[i] += (1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).sum()
        count += ids.shape[1]
    expected = (sums / count).tolist()

    # batches of 2 texts of different lengths: padding must not count
    batches = calibration_batches(tokenizer, TEXTS, max_length=48, batch_size=2)
    assert any((b["attention_mask"] == 0).any() for b in batches)
    assert block_influence(tiny_model, batches) == pytest.approx(expected, abs=1e-5)
    assert block_influence(tiny_model, tokenizer, TEXTS, max_length=48, batch_size=3) == pytest.approx(
        expected, abs=1e-5
    )


def test_choose_layers_keeps_the_most_influential_and_the_ends():
    influence = [0.9, 0.1, 0.5, 0.05, 0.5, 0.2, 0.3]
    assert choose_layers(influence, keep=4) == [0, 2, 4, 6]  # 0 and 6 forced; then 0.5, 0.5
    assert choose_layers(influence, keep=3) == [0, 2, 6]  # tie 2 vs 4 goes to the earlier layer
    assert choose_layers(influence, keep=3, always_keep=()) == [0, 2, 4]
    assert choose_layers(influence, keep=7) == list(range(7))
    with pytest.raises(ValueError, match="keep"):
        choose_layers(influence, keep=1)
    with pytest.raises(ValueError, match="always_keep"):
        choose_layers(influence, keep=3, always_keep=(0, 7))


@torch.no_grad()
def test_pruned_model_is_exactly_the_kept_layers(tiny_model):
    keep = [0, 2, 3]
    pruned = prune_layers(tiny_model, keep)
    assert pruned.config.num_hidden_layers == 3 and len(pruned.model.layers) == 3
    assert tiny_model.config.num_hidden_layers == 4  # the teacher is untouched
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]
    for new, old in enumerate(keep):
        old_state = tiny_model.model.layers[old].state_dict()
        for name, value in pruned.model.layers[new].state_dict().items():
            assert torch.equal(value, old_state[name]), (old, name)
            assert value.data_ptr() != old_state[name].data_ptr()  # a copy, not shared
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(pruned.state_dict()[name], tiny_model.state_dict()[name])
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight  # still tied

    ids = torch.tensor([[5, 77, 301, 9, 42, 130, 8, 64]])
    states = _layer_states(tiny_model, [tiny_model.model.layers[i] for i in keep], ids)
    by_hand = tiny_model.lm_head(tiny_model.model.norm(states[-1]))
    assert torch.allclose(pruned(ids).logits, by_hand, rtol=0, atol=1e-6)

    report = pruning_report(tiny_model, pruned, keep)
    per_layer = count_parameters(tiny_model.model.layers[1])
    assert report["removed"] == [1] and report["params_before"] - report["params_after"] == per_layer


@torch.no_grad()
def test_pruned_model_generates_with_a_kv_cache(tiny_model):
    pruned = prune_layers(tiny_model, [-1, 0])  # negative indices count from the end
    assert torch.equal(
        pruned.model.layers[1].self_attn.q_proj.weight, tiny_model.model.layers[3].self_attn.q_proj.weight
    )
    ids = torch.tensor([[5, 77, 301, 9]])
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    cached = pruned.generate(ids, use_cache=True, **kwargs)
    uncached = pruned.generate(ids, use_cache=False, **kwargs)
    greedy = ids
    for _ in range(8):  # full recomputation, token by token
        greedy = torch.cat([greedy, pruned(greedy).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(cached, greedy) and torch.equal(uncached, greedy)


def test_pruned_model_round_trips_through_save_pretrained(tmp_path, tiny_model):
    pruned = prune_layers(tiny_model, [0, 3])
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.num_hidden_layers == 2
    ids = torch.tensor([[5, 77, 301, 9, 42]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, pruned(ids).logits)


def test_prune_rejects_bad_layer_lists(tiny_model):
    for bad in ([], [0, 0], [0, 4], [1, -3]):  # -3 is layer 1 again
        with pytest.raises(ValueError, match="distinct"):
            prune_layers(tiny_model, bad)


def test_influence_then_prune_end_to_end(model_dir, tokenizer):
    teacher = load_causal_lm(model_dir)
    influence = block_influence(teacher, tokenizer, TEXTS[:2], max_length=32)
    keep = choose_layers(influence, keep=3)
    student = prune_layers(teacher, keep)
    report = pruning_report(teacher, student, keep, influence)
    assert report["layers_after"] == 3 and report["kept"] == keep and len(report["influence"]) == 4
    assert report["params_after"] == count_parameters(student) < report["params_before"]
