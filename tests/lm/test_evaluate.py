"""Student evaluation: ROUGE-L by hand, perplexity and agreement against direct loops, batched generation."""

import copy
import itertools
import math
import random

import pytest
import torch
from datasets import Dataset

from kdistill.lm.degeneration import degeneration
from kdistill.lm.evaluate import (
    bits_per_byte,
    evaluate_student,
    exact_match,
    generate_answers,
    generation_call,
    lcs_length,
    response_perplexity,
    rouge_l_f1,
    teacher_agreement,
)
from kdistill.lm.models import load_causal_lm, model_from_config
from kdistill.lm.sft_data import encode_prompt, tokenize_rows
from kdistill.lm.student_tokenizer import train_student_tokenizer

from .conftest import tiny_llama_config


@pytest.mark.parametrize(
    "candidate, reference, expected",
    [
        ("the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("the cat on the mat", "the cat sat on the mat", 10 / 11),  # LCS 5: P = 1, R = 5/6
        ("a b c d", "d c b a", 0.25),  # LCS 1: P = R = 1/4
        ("x y z", "a b c", 0.0),
        ("police killed the gunman", "the gunman kill police", 0.5),  # LCS 2 ("the gunman"): P = R = 1/2
        ("", "", 1.0),
        ("", "a b", 0.0),
        ("a  b\n", " a b", 1.0),  # whitespace-separated words
    ],
)
def test_rouge_l_f1_closed_form(candidate, reference, expected):
    assert rouge_l_f1(candidate, reference) == pytest.approx(expected)


def _lcs_brute_force(a, b):
    for k in range(min(len(a), len(b)), 0, -1):
        subs = set(itertools.combinations(a, k))
        if any(s in subs for s in itertools.combinations(b, k)):
            return k
    return 0


def test_lcs_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        assert lcs_length(a, b) == lcs_length(b, a) == _lcs_brute_force(a, b)


def test_exact_match_ignores_surrounding_whitespace_only():
    assert exact_match(" yes\n", "yes") and not exact_match("Yes", "yes")


@pytest.fixture(scope="module")
def examples(tokenizer, rows):
    return tokenize_rows(tokenizer, rows, max_length=96).examples


@torch.no_grad()
def test_perplexity_equals_a_direct_per_example_computation(tiny_model, examples):
    nll, n = 0.0, 0
    for e in examples:  # one unpadded example at a time, token by token
        logp = torch.log_softmax(tiny_model(torch.tensor([e["input_ids"]])).logits[0].double(), dim=-1)
        for t in range(1, len(e["labels"])):
            if e["labels"][t] != -100:
                nll -= logp[t - 1, e["labels"][t]].item()
                n += 1
    result = response_perplexity(tiny_model, examples, pad_token_id=0, batch_size=5)
    assert result["tokens"] == n
    assert result["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)


@torch.no_grad()
def test_teacher_agreement_equals_a_direct_count(tiny_model, examples):
    # a random tied-embedding model predicts "the current token again"; a rescaled final norm breaks that
    teacher = copy.deepcopy(tiny_model)
    teacher.model.norm.weight.add_(
        2.0 * torch.randn(teacher.model.norm.weight.shape, generator=torch.Generator().manual_seed(0))
    )
    agree = total = 0
    for e in examples:
        ids = torch.tensor([e["input_ids"]])
        s, t = tiny_model(ids).logits[0].argmax(-1), teacher(ids).logits[0].argmax(-1)
        for pos in range(1, len(e["labels"])):
            if e["labels"][pos] != -100:
                agree += int(s[pos - 1] == t[pos - 1])
                total += 1
    assert 0 < agree < total  # two random models agree sometimes: a real test of the counting
    assert teacher_agreement(tiny_model, teacher, examples, pad_token_id=0, batch_size=6) == pytest.approx(
        agree / total
    )
    assert teacher_agreement(tiny_model, tiny_model, examples, pad_token_id=0) == 1.0


@torch.no_grad()
def test_batched_left_padded_generation_equals_one_at_a_time(model_dir, tokenizer, rows):
    model = load_causal_lm(model_dir, dtype=torch.float64)  # float64: no near-ties flipped by padding noise
    batched = generate_answers(model, tokenizer, rows[:6], max_new_tokens=10, batch_size=6)
    single = [generate_answers(model, tokenizer, [row], max_new_tokens=10, batch_size=1) for row in rows[:6]]
    assert batched.texts == [s.texts[0] for s in single]
    assert batched.new_tokens == [s.new_tokens[0] for s in single]
    assert all(1 <= n <= 10 for n in batched.new_tokens) and batched.seconds > 0

    ids = torch.tensor([encode_prompt(tokenizer, rows[0])])  # greedy by hand, full recomputation
    for _ in range(batched.new_tokens[0]):
        ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    new = ids[0, -batched.new_tokens[0] :].tolist()
    assert tokenizer.decode(new, skip_special_tokens=True) == batched.texts[0]


@torch.no_grad()
def test_timed_generation_makes_every_answer_the_same_length_and_cuts_prompts_alike(
    tiny_model, tokenizer, rows
):
    """The timing phase's call: a model whose eos comes first still generates all `new_tokens` (none looks
    faster by stopping early), and every prompt is cut to the same number of tokens."""
    prompt = encode_prompt(tokenizer, rows[0])
    first = int(tiny_model(torch.tensor([prompt])).logits[0, -1].argmax())
    stopper = copy.deepcopy(tokenizer)
    stopper.eos_token = stopper.convert_ids_to_tokens(first)  # greedy decoding stops after one token
    stopped = generate_answers(tiny_model, stopper, rows[:1], max_new_tokens=6)
    assert stopped.new_tokens == [1] and stopped.hit_limit == [False]  # it ended: not cut

    shapes = []
    generate = tiny_model.generate

    def recording_generate(**kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return generate(**kwargs)

    tiny_model.generate = recording_generate
    generation_call(tiny_model, stopper, rows[:1], new_tokens=6, max_prompt_length=512)()  # raises if shorter
    assert shapes == [(1, len(prompt))]
    call = generation_call(tiny_model, stopper, rows[:3], new_tokens=6, max_prompt_length=5)
    call()
    call()
    assert shapes[1:] == [(3, 5), (3, 5)]  # three prompts in one batch, each cut to its last 5 tokens


def test_evaluate_student_reports_every_metric(tiny_model, tokenizer, rows):
    own = generate_answers(tiny_model, tokenizer, rows[:4], max_new_tokens=12)
    mirrored = [{**row, "completion": text} for row, text in zip(rows[:4], own.texts, strict=True)]
    result = evaluate_student(tiny_model, tokenizer, mirrored, teacher=tiny_model, max_new_tokens=12)
    # its own greedy answers are what it generates again: a perfect score
    assert result["exact_match"] == 1.0 and result["rouge_l_f1"] == 1.0 and result["teacher_agreement"] == 1.0
    assert result["rows"] == 4 and result["answers"] == own.texts
    assert result["perplexity"] == pytest.approx(math.exp(result["nll_per_token"]))
    assert result["seconds_per_answer"] > 0 and result["new_tokens_per_second"] > 0
    # its own answers read as degeneration.degeneration reads them; cut = all 12 tokens used, no eos
    cut = [n == 12 for n in own.new_tokens]  # (none of these answers ends with eos exactly at token 12)
    assert own.hit_limit == cut
    expected = degeneration(own.texts, cut)
    assert {k: result[k] for k in expected} == expected
    result = evaluate_student(tiny_model, tokenizer, rows[:4], generate=False)
    assert "rouge_l_f1" not in result and "teacher_agreement" not in result and result["perplexity"] > 1


def test_evaluate_student_takes_a_datasets_dataset(tiny_model, tokenizer, rows):
    as_list = evaluate_student(tiny_model, tokenizer, rows[:3], max_new_tokens=4)
    as_dataset = evaluate_student(tiny_model, tokenizer, Dataset.from_list(rows[:3]), max_new_tokens=4)
    assert as_dataset["answers"] == as_list["answers"]
    assert as_dataset["perplexity"] == as_list["perplexity"]


@torch.no_grad()
def test_perplexity_of_a_model_that_soft_caps_its_logits_uses_its_own_logits():
    """Only response rows go through the head for plain models; Gemma 2 soft-caps after the head, so its
    perplexity must come from its own (capped) logits."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    shapes = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    shapes |= {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8}
    torch.manual_seed(0)
    gemma = AutoModelForCausalLM.from_config(Gemma2Config(**shapes, final_logit_softcapping=1.5)).eval()
    examples = [{"input_ids": [1, 5, 9, 12, 3], "labels": [-100, -100, 9, 12, 3]}]
    logp = torch.log_softmax(gemma(torch.tensor([examples[0]["input_ids"]])).logits[0].double(), dim=-1)
    nll = -sum(logp[t - 1, examples[0]["labels"][t]].item() for t in (2, 3, 4))
    result = response_perplexity(gemma, examples, pad_token_id=0)
    assert result["tokens"] == 3
    assert result["perplexity"] == pytest.approx(math.exp(nll / 3), rel=1e-5)


@pytest.fixture(scope="module")
def answer_rows(rows):
    """The shared rows plus answers with multi-byte characters, leading spaces and code (bytes != chars)."""
    extra = ["naïve café — 東京 🙂", "  def f(x):\n\treturn x ** 2\n", "ok"]
    return [
        *rows[:6],
        *({**rows[i], "completion": text, "record_id": f"x{i}"} for i, text in enumerate(extra)),
    ]


@torch.no_grad()
def test_bits_per_byte_equals_a_direct_computation(tiny_model, tokenizer, answer_rows):
    nll, tokens = 0.0, 0
    for row in answer_rows:  # one row at a time, prompt then answer, eos never looked at
        prompt = encode_prompt(tokenizer, row)
        answer = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        logp = torch.log_softmax(tiny_model(torch.tensor([prompt + answer])).logits[0].double(), dim=-1)
        nll -= sum(logp[len(prompt) - 1 + k, a].item() for k, a in enumerate(answer))
        tokens += len(answer)
    n_bytes = sum(len(row["completion"].encode("utf-8")) for row in answer_rows)
    assert n_bytes > sum(len(row["completion"]) for row in answer_rows)  # bytes, not characters
    for batch_size in (1, 4):
        result = bits_per_byte(tiny_model, tokenizer, answer_rows, max_length=256, batch_size=batch_size)
        assert (result["bytes"], result["tokens"], result["rows"]) == (n_bytes, tokens, len(answer_rows))
        assert result["truncated_rows"] == 0
        assert result["bits"] == pytest.approx(nll / math.log(2), rel=1e-5)
        assert result["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)


def test_bits_per_byte_counts_the_same_bytes_under_another_tokenizer(tiny_model, tokenizer, answer_rows):
    texts = [row["completion"] for row in answer_rows] * 20
    other = train_student_tokenizer(texts, vocab_size=400, like=tokenizer)  # sentencepiece-like
    other_model = model_from_config(tiny_llama_config(len(other), layers=1), seed=3)
    mine = bits_per_byte(tiny_model, tokenizer, answer_rows, max_length=256)
    theirs = bits_per_byte(other_model, other, answer_rows, max_length=256)
    assert mine["bytes"] == theirs["bytes"] == sum(len(r["completion"].encode()) for r in answer_rows)
    assert mine["tokens"] != theirs["tokens"]  # really two tokenisations of the same answers
    assert theirs["tokens"] == sum(
        len(other(r["completion"], add_special_tokens=False)["input_ids"]) for r in answer_rows
    )


@torch.no_grad()
def test_bits_per_byte_of_cut_answers_counts_the_bytes_kept(tiny_model, tokenizer, answer_rows):
    result = bits_per_byte(tiny_model, tokenizer, answer_rows, max_length=16)
    expected_bytes = cut = 0
    for row in answer_rows:
        answer = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        prompt = encode_prompt(tokenizer, row)
        kept = min(len(answer) + 1, 16 - min(len(prompt), max(16 - len(answer) - 1, 8)))  # +1: eos
        if kept <= len(answer):  # lost its eos at least: counts what it kept
            cut += 1
            expected_bytes += len(tokenizer.decode(answer[:kept]).encode("utf-8"))
        else:
            expected_bytes += len(row["completion"].encode("utf-8"))
    assert 0 < cut < len(answer_rows)
    assert (result["truncated_rows"], result["bytes"]) == (cut, expected_bytes)


def test_bits_per_byte_refuses_an_answer_with_nothing_before_it(tiny_model, plain_tokenizer):
    row = {"prompt": "", "messages": None, "completion": "x = 1", "record_id": "empty"}
    with pytest.raises(ValueError, match="row 'empty': the answer starts the sequence"):
        bits_per_byte(tiny_model, plain_tokenizer, [row], max_length=32)
