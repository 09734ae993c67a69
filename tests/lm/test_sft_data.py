"""SFT data: the loss covers exactly the teacher's answer (and its eos), nothing of the prompt or padding."""

import pytest
import torch
from datasets import Dataset

from kdistill.lm.sft_data import (
    IGNORE_INDEX,
    collate,
    count_response_tokens,
    encode_prompt,
    fit_lengths,
    tokenize_row,
    tokenize_rows,
)


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_chat_rows_render_the_template_with_the_generation_prompt(tokenizer, rows):
    # the expected prompt is written out by hand, not produced by apply_chat_template
    chat_row, prompt_row = rows[1], rows[0]
    name = chat_row["messages"][1]["content"]
    expected = f"<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n{name}<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(encode_prompt(tokenizer, chat_row)) == expected
    assert encode_prompt(tokenizer, chat_row) == _ids(tokenizer, expected)
    expected = f"<|im_start|>user\n{prompt_row['prompt']}<|im_end|>\n<|im_start|>assistant\n"
    assert encode_prompt(tokenizer, prompt_row) == _ids(tokenizer, expected)


def test_plain_prompt_without_template_is_raw_text(plain_tokenizer, rows):
    row = rows[0]
    assert encode_prompt(plain_tokenizer, row) == plain_tokenizer(row["prompt"])["input_ids"]
    with pytest.raises(ValueError, match="chat template|template"):
        encode_prompt(plain_tokenizer, rows[1])  # messages need a template


@pytest.mark.parametrize("which", ["tokenizer", "plain_tokenizer"])
def test_labels_are_exactly_the_completion_tokens_and_eos(which, rows, request):
    tokenizer = request.getfixturevalue(which)
    eos = tokenizer.eos_token_id
    for row in rows[::2] if which == "plain_tokenizer" else rows:
        example, prompt_cut, completion_cut = tokenize_row(tokenizer, row, max_length=256)
        prompt = encode_prompt(tokenizer, row)
        completion = _ids(tokenizer, row["completion"]) + [eos]
        assert not prompt_cut and not completion_cut
        assert example["input_ids"] == prompt + completion
        assert example["labels"] == [IGNORE_INDEX] * len(prompt) + completion
        scored = [t for t in example["labels"] if t != IGNORE_INDEX]
        assert tokenizer.decode(scored) == row["completion"] + tokenizer.eos_token
        assert example["record_id"] == row["record_id"]


def test_fit_lengths_keeps_the_answer_and_the_prompt_tail():
    # (prompt, completion, max_length) -> (kept prompt, kept completion)
    assert fit_lengths(5, 5, 20) == (5, 5)  # fits
    assert fit_lengths(10, 5, 12) == (7, 5)  # prompt loses its head, answer whole
    assert fit_lengths(10, 20, 12) == (6, 6)  # both too long: prompt keeps half, answer the rest
    assert fit_lengths(3, 20, 12) == (3, 9)  # short prompt whole, answer cut
    assert fit_lengths(0, 20, 12) == (0, 12)
    with pytest.raises(ValueError):
        fit_lengths(1, 1, 1)


def test_truncation_keeps_the_prompt_tail_and_counts_rows(tokenizer, rows):
    long_prompt = {**rows[0], "prompt": " ".join(["word"] * 80), "record_id": "long-prompt"}
    long_answer = {**rows[0], "completion": " ".join(["answer"] * 80), "record_id": "long-answer"}
    out = tokenize_rows(tokenizer, [rows[0], long_prompt, long_answer], max_length=64)
    assert (out.num_truncated, out.num_prompt_truncated, out.num_completion_truncated) == (2, 1, 1)
    assert all(len(e["input_ids"]) <= 64 for e in out.examples)

    cut = out.examples[1]
    prompt = encode_prompt(tokenizer, long_prompt)
    completion = _ids(tokenizer, long_prompt["completion"]) + [tokenizer.eos_token_id]
    assert len(cut["input_ids"]) == 64
    assert cut["input_ids"] == prompt[-(64 - len(completion)) :] + completion  # the tail, next to the answer
    assert [t for t in cut["labels"] if t != IGNORE_INDEX] == completion

    cut = out.examples[2]
    prompt = encode_prompt(tokenizer, long_answer)
    assert cut["input_ids"][: len(prompt)] == prompt  # short prompt kept whole
    assert cut["labels"][len(prompt) :] == _ids(tokenizer, long_answer["completion"])[: 64 - len(prompt)]
    assert out.num_response_tokens == sum(
        count_response_tokens(collate([e], pad_token_id=0)["labels"]) for e in out.examples
    )


def test_collate_right_pads_and_masks_padding(tokenizer, rows):
    examples = tokenize_rows(tokenizer, rows[:4], max_length=256).examples
    batch = collate(examples, pad_token_id=tokenizer.pad_token_id)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == batch["labels"].shape == (4, max(lengths))
    for i, (e, n) in enumerate(zip(examples, lengths, strict=True)):
        assert batch["input_ids"][i, :n].tolist() == e["input_ids"]
        assert batch["labels"][i, :n].tolist() == e["labels"]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()


def test_eos_is_learned_even_when_pad_is_eos(tokenizer, rows):
    # SmolLM2's pad token is its eos: the mask, not the token id, must decide what is padding
    examples = tokenize_rows(tokenizer, rows[:3], max_length=256).examples
    eos = tokenizer.eos_token_id
    batch = collate(examples, pad_token_id=eos)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        assert batch["labels"][i, n - 1] == eos
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
    assert count_response_tokens(batch["labels"]) == sum(
        sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples
    )


def test_a_datasets_dataset_tokenizes_like_a_list(tokenizer, rows):
    from_list = tokenize_rows(tokenizer, rows, max_length=64)
    from_dataset = tokenize_rows(tokenizer, Dataset.from_list(rows), max_length=64)
    assert from_dataset == from_list


def test_bad_rows_fail_with_the_record_id(tokenizer, rows):
    both = {**rows[1], "prompt": "x"}
    with pytest.raises(ValueError, match="'r1'.*exactly one"):
        encode_prompt(tokenizer, both)
    ends_with_answer = {**rows[1], "messages": rows[1]["messages"] + [{"role": "assistant", "content": "x"}]}
    with pytest.raises(ValueError, match="'r1'.*non-assistant"):
        encode_prompt(tokenizer, ends_with_answer)
    with pytest.raises(ValueError):
        collate([], pad_token_id=0)
    assert torch.equal(
        collate([{"input_ids": [5], "labels": [5]}], pad_token_id=0)["labels"], torch.tensor([[5]])
    )
