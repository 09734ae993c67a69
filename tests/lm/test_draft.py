"""Draft models for speculative decoding (kdistill.lm.draft): the acceptance rate counted exactly, on-policy
draft distillation through the white-box loop, assisted generation timed and checked."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kdistill.lm.draft import (
    OutputMismatch,
    acceptance_rate,
    acceptance_table,
    assisted_speed,
    distill_draft,
    draft_distill_config,
    prompt_examples,
    teacher_greedy,
)
from kdistill.lm.models import model_from_config
from kdistill.lm.prune import prune_layers

from .conftest import loop_config, tiny_llama_config

PROMPTS = [[5, 17, 99, 3, 41], [7, 8], [250, 11, 12, 300, 301, 302, 303]]


def varied_model(vocab_size: int, *, layers: int = 4, seed: int = 0) -> nn.Module:
    """A tiny random Llama whose greedy answers vary (the default init mostly repeats the last token)."""
    return model_from_config(
        tiny_llama_config(vocab_size, layers=layers) | {"initializer_range": 0.5}, seed=seed
    )


@pytest.fixture
def teacher(tokenizer):
    return varied_model(len(tokenizer))


class PlantedDraft(nn.Module):
    """The teacher's own logits, except at one absolute position, where another token becomes the argmax."""

    def __init__(self, teacher: nn.Module, position: int) -> None:
        super().__init__()
        self.inner = copy.deepcopy(teacher)
        self.position = position

    def forward(self, input_ids, past_key_values, use_cache):
        start = past_key_values.get_seq_length()
        logits = self.inner(input_ids=input_ids, past_key_values=past_key_values, use_cache=use_cache).logits
        logits = logits.clone()
        row = self.position - start
        if 0 <= row < logits.shape[1]:
            wrong = (int(logits[0, row].argmax()) + 1) % logits.shape[-1]
            logits[0, row, wrong] = logits[0, row].max() + 10.0
        return SimpleNamespace(logits=logits)


def test_a_draft_identical_to_the_teacher_is_always_accepted(teacher):
    result = acceptance_rate(
        teacher, copy.deepcopy(teacher), PROMPTS, gamma=4, max_new_tokens=12, eos_token_id=None
    )
    assert result.rate == 1.0
    assert result.identical
    # every block: 4 accepted + the teacher's bonus token; 12 tokens = blocks of 5, 5, then 2 (k = 1)
    assert [(p.drafted, p.accepted, p.teacher_forwards, p.new_tokens) for p in result.prompts] == [
        (9, 9, 3, 12)
    ] * 3
    assert result.tokens_per_forward == 4.0


def test_one_planted_disagreement_costs_what_the_hand_count_says(teacher):
    prompt = PROMPTS[0]
    # the draft is wrong about new token 6 (predicted at absolute position len(prompt) - 1 + 6)
    draft = PlantedDraft(teacher, len(prompt) - 1 + 6)
    result = acceptance_rate(teacher, draft, [prompt], gamma=4, max_new_tokens=12, eos_token_id=None)
    # block at token 0: 4 drafted, 4 accepted, bonus token 4; block at 5: drafts 5..8, token 6 wrong ->
    # 1 accepted + the teacher's correction; block at 7: k = min(4, 12 - 7 - 1) = 4, all accepted + bonus 11
    p = result.prompts[0]
    assert (p.drafted, p.accepted, p.teacher_forwards, p.new_tokens) == (12, 9, 3, 12)
    assert result.rate == pytest.approx(9 / 12)
    assert result.identical  # a wrong draft never changes the teacher's text


def test_a_disagreement_on_the_bonus_token_is_never_drafted(teacher):
    prompt = PROMPTS[0]
    # with gamma 4 the first block drafts tokens 0..3 and the teacher adds token 4 itself
    draft = PlantedDraft(teacher, len(prompt) - 1 + 4)
    result = acceptance_rate(teacher, draft, [prompt], gamma=4, max_new_tokens=12, eos_token_id=None)
    assert result.rate == 1.0 and result.identical


def test_gamma_edge_cases(teacher):
    same = copy.deepcopy(teacher)
    # gamma 1: blocks of 2 tokens; with 5 tokens the last block has no room to draft (a plain teacher step)
    one = acceptance_rate(teacher, same, [PROMPTS[1]], gamma=1, max_new_tokens=5, eos_token_id=None).prompts[
        0
    ]
    assert (one.drafted, one.accepted, one.teacher_forwards, one.new_tokens) == (2, 2, 3, 5)
    # gamma beyond the budget drafts max_new_tokens - 1 tokens
    big = acceptance_rate(teacher, same, [PROMPTS[1]], gamma=8, max_new_tokens=3, eos_token_id=None).prompts[
        0
    ]
    assert (big.drafted, big.accepted, big.teacher_forwards, big.new_tokens) == (2, 2, 1, 3)
    # one new token: nothing drafted, the rate is 0 by definition, the text still the teacher's
    single = acceptance_rate(teacher, same, [PROMPTS[1]], gamma=4, max_new_tokens=1, eos_token_id=None)
    assert single.drafted == 0 and single.rate == 0.0 and single.identical
    with pytest.raises(ValueError, match="gamma"):
        acceptance_rate(teacher, same, PROMPTS, gamma=0, max_new_tokens=4)
    with pytest.raises(ValueError, match="empty"):
        acceptance_rate(teacher, same, [[]], gamma=2, max_new_tokens=4, eos_token_id=None)


def test_an_accepted_eos_ends_the_answer(teacher):
    prompt = PROMPTS[2]
    free = teacher_greedy(teacher, prompt, max_new_tokens=12)
    # the first token that does not occur earlier, from index 3 on, becomes eos
    j = next(i for i in range(3, len(free)) if free[i] not in free[:i])
    result = acceptance_rate(
        teacher, copy.deepcopy(teacher), [prompt], gamma=8, max_new_tokens=12, eos_token_id=free[j]
    )
    p = result.prompts[0]
    assert p.new_tokens == j + 1 and result.identical
    assert p.drafted == p.accepted == j + 1  # the draft stops proposing at eos, the teacher accepts it


def test_any_draft_leaves_the_teacher_text_unchanged(teacher, tokenizer):
    other = varied_model(len(tokenizer), layers=2, seed=3)
    table = acceptance_table(teacher, other, PROMPTS, gammas=(2, 4, 8), max_new_tokens=16, eos_token_id=None)
    assert set(table) == {2, 4, 8}
    for result in table.values():
        assert result.identical
        assert 0.0 <= result.rate < 1.0
        record = result.record()
        assert record["identical_to_teacher_greedy"] and record["mismatched_prompts"] == 0
        assert sum(p["new_tokens"] for p in record["per_prompt"]) == 3 * 16


def test_assisted_generation_is_timed_and_checked(teacher, tokenizer):
    draft = prune_layers(teacher, [0, 3])
    before = copy.deepcopy(draft.generation_config)
    speeds = assisted_speed(
        teacher,
        draft,
        PROMPTS[:2],
        max_new_tokens=8,
        gammas=(2, 4),
        rounds=1,
        warmup_rounds=0,
        eos_token_id=None,
    )
    assert speeds["new_tokens"] == 16
    assert set(speeds["assisted"]) == {2, 4}
    for entry in speeds["assisted"].values():
        assert entry["identical_to_plain"] and entry["speedup"] > 0
    assert speeds["plain"]["tokens_per_s"] > 0
    assert set(speeds["timing"]["models"]) == {"plain", "assisted_gamma_2", "assisted_gamma_4"}
    assert draft.generation_config.to_dict() == before.to_dict()  # the draft's settings are restored


def test_assisted_speed_refuses_a_changed_output(teacher, monkeypatch):
    import kdistill.lm.draft as draft_module

    real_generate = type(teacher).generate

    def generate(self, *args, **kwargs):
        out = real_generate(self, *args, **kwargs)
        if "assistant_model" in kwargs:
            out = out.clone()
            out[0, -1] = (out[0, -1] + 1) % 512
        return out

    monkeypatch.setattr(type(teacher), "generate", generate)
    with pytest.raises(OutputMismatch):
        draft_module.assisted_speed(
            teacher, copy.deepcopy(teacher), PROMPTS[:1], max_new_tokens=4, rounds=1, warmup_rounds=0
        )


def _distill(teacher, draft, examples, tokenizer, **kwargs):
    return distill_draft(
        draft,
        teacher,
        examples,
        steps=kwargs.pop("steps", 4),
        train=loop_config(lr=5e-3, micro_batch_size=2, log_every=1, checkpoint_every=2),
        distill=draft_distill_config(max_new_tokens=8),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        seed=0,
        **kwargs,
    )


def test_on_policy_distillation_trains_the_draft_on_its_own_samples(teacher, plain_tokenizer, rows):
    examples = prompt_examples(plain_tokenizer, rows[::2], max_prompt_length=24)
    assert all(set(e["labels"]) == {-100} for e in examples)
    draft = prune_layers(teacher, [0])
    result = _distill(teacher, draft, examples, plain_tokenizer)
    assert result.finished and result.steps_done == 4
    assert all("kd/tvd" in entry["terms"] and entry["tokens"] > 0 for entry in result.history)


def test_draft_distillation_resumes_to_the_same_weights(teacher, plain_tokenizer, rows, tmp_path):
    examples = prompt_examples(plain_tokenizer, rows[::2], max_prompt_length=24)
    whole = _distill(teacher, prune_layers(teacher, [0]), examples, plain_tokenizer).model
    ckpt = tmp_path / "ckpt"
    first = _distill(
        teacher, prune_layers(teacher, [0]), examples, plain_tokenizer, checkpoint_dir=ckpt, stop_after=2
    )
    assert not first.finished
    resumed = _distill(
        teacher, prune_layers(teacher, [0]), examples, plain_tokenizer, checkpoint_dir=ckpt
    ).model
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_prompts_alone_need_every_step_on_policy(teacher, plain_tokenizer, rows):
    examples = prompt_examples(plain_tokenizer, rows[::2][:2])
    with pytest.raises(ValueError, match="prompts only"):
        distill_draft(
            prune_layers(teacher, [0]),
            teacher,
            examples,
            steps=1,
            train=loop_config(),
            distill=draft_distill_config(on_policy_fraction=0.5),
            pad_token_id=0,
            eos_token_id=2,
        )


@pytest.fixture(scope="module")
def tiny_run_teacher(tmp_path_factory):
    from tests.fixtures.tiny_lm import write_lm_task

    root = tmp_path_factory.mktemp("draft-run")
    return write_lm_task(root, prompts=12, layers=6, prompt="Explain topic {i} of Python.")


@pytest.mark.parametrize("text_phase", [False, True], ids=["answers-only", "text-phase-first"])
def test_an_lm_run_with_distill_draft_reports_acceptance_and_assisted_speed(
    tmp_path, tiny_run_teacher, text_phase
):
    import json

    from tests.fixtures.tiny_lm import lm_run_config

    from kdistill.config import parse_config
    from kdistill.lm.recipe import run_lm

    teacher, prompts = tiny_run_teacher
    text = tmp_path / "text.txt"
    text.write_text("Lists keep their order. Dictionaries map keys to values. Sets hold unique items.\n" * 20)
    recover = {"recover": {"text": str(text), "chunk_length": 16, "top_k": 4}} if text_phase else {}
    cfg = parse_config(
        lm_run_config(
            teacher,
            prompts,
            "tiny-draft",
            held_out=3,
            generation={"max_new_tokens": 8, "batch_size": 8},
            student={"keep_layers": 2, "calibration_texts": 4, **recover},
            train={"epochs": 1, "micro_batch_size": 3, "grad_accum": 1, "lr": 2e-3, "max_length": 48},
            distill={
                "signal": "online",
                "divergence": "tvd",
                "on_policy_fraction": 1.0,
                "on_policy_max_new_tokens": 6,
                "draft": True,
            },
            evaluation={"batch_size": 4, "timing_prompts": 2, "timing_new_tokens": 6, "timing_rounds": 1},
        )
    )
    result = run_lm(cfg, runs_dir=tmp_path / "runs", cache_root=tmp_path / "cache")
    draft = result.metrics["draft"]
    assert draft["gammas"] == [2, 4, 8]
    stages = ["before", "recovered", "after"] if text_phase else ["before", "after"]
    assert [k.removeprefix("acceptance_") for k in draft if k.startswith("acceptance_")] == stages
    for key in ("2", "4", "8"):
        for stage in stages:
            record = draft[f"acceptance_{stage}"][key]
            assert record["identical_to_teacher_greedy"] and len(record["per_prompt"]) == 3
            assert draft["summary"][key][f"acceptance_{stage}"] == record["acceptance_rate"]
        assert draft["assisted"]["assisted"][key]["identical_to_plain"]
        line = result.metrics["summary"][f"draft acceptance, gamma {key}"]
        assert line == " -> ".join(f"{draft['summary'][key][f'acceptance_{s}']:.1%}" for s in stages)
    for stage in stages:  # each stage computed once per run, kept beside the report
        assert (
            json.loads((result.run_dir / f"draft_{stage}.json").read_text()) == draft[f"acceptance_{stage}"]
        )
    assert "draft acceptance, gamma 4" in (result.run_dir / "report.html").read_text()


def test_the_draft_recipe_loads_and_a_draft_needs_the_teacher_tokenizer():
    from kdistill.config import ConfigError, load_config, parse_config

    cfg = load_config("smollm2-draft", [])
    assert cfg.distill.draft and cfg.distill.divergence == "tvd" and cfg.distill.on_policy_fraction == 1.0
    assert "draft" not in parse_config({"task": "lm"}).model_dump()["distill"]  # old configs hash as before
    with pytest.raises(ConfigError, match="draft"):
        parse_config(
            {
                "task": "lm",
                "distill": {"signal": "cached", "draft": True, "cross_tokenizer": {"loss": "uld"}},
            }
        )
