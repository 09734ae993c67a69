"""Teacher answers -> token ids and labels for supervised fine-tuning, the loss on the answer only.

A row is {"prompt": str | None, "messages": [{role, content}] | None, "completion": str, "record_id": str},
with exactly one of prompt/messages. The prompt is rendered the way the student will see it at inference
(the chat template with the generation prompt, when the tokenizer has one) and tokenized on its own; the
completion is tokenized on its own and followed by eos. Tokenizing the two apart is what lets the labels
mask be exactly the completion's tokens, and it is also what generation sees: prompt ids, then new tokens.

Labels use the usual -100 for "no loss here": every prompt token and every padding position.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedRows:
    """Tokenized examples plus how many rows had to be shortened to fit max_length."""

    examples: list[dict[str, Any]]  # {"input_ids": list[int], "labels": list[int], "record_id": str}
    num_truncated: int  # rows that lost any token
    num_prompt_truncated: int  # rows whose prompt lost its head
    num_completion_truncated: int  # rows whose completion lost its tail (and its eos, if it had one)
    num_response_tokens: int  # tokens the loss covers, over all rows


def encode_prompt(tokenizer: PreTrainedTokenizerBase, row: Mapping[str, Any]) -> list[int]:
    """Token ids the model sees before the answer: the chat template's generation prompt when there is one."""
    messages, prompt = row.get("messages"), row.get("prompt")
    if (messages is None) == (prompt is None):
        raise ValueError(f"row {row.get('record_id')!r}: exactly one of 'prompt' and 'messages' must be set")
    if messages is None and tokenizer.chat_template is None:
        # A plain LM: the prompt is raw text, with whatever special tokens (bos) the tokenizer adds.
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if messages is None:
        messages = [{"role": "user", "content": prompt}]
    if not messages or messages[-1]["role"] == "assistant":
        raise ValueError(
            f"row {row.get('record_id')!r}: messages must end with a non-assistant turn; the answer is 'completion'"
        )
    # The template writes its own special tokens, so the rendered text is encoded without adding more.
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


#: the finish_reason of an answer cut off by the token limit (OpenAI's word, which vLLM and llama.cpp share)
CUT_OFF = "length"


def answer_ended(row: Mapping[str, Any]) -> bool:
    """Whether the teacher ended this answer itself (so eos follows it); False for one cut off by max_tokens."""
    return row.get("finish_reason") != CUT_OFF


def encode_completion(
    tokenizer: PreTrainedTokenizerBase, completion: str, *, ended: bool = True
) -> list[int]:
    """The answer's ids followed by eos when the teacher `ended` it, so the student learns where the teacher
    stopped (and only there: a cut-off answer has no eos)."""
    ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if not ended:
        return ids
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; an answer needs one to end")
    return ids + [tokenizer.eos_token_id]


def fit_lengths(prompt_len: int, completion_len: int, max_length: int) -> tuple[int, int]:
    """How many prompt tokens (from its tail) and completion tokens (from its head) fit in max_length.

    The whole completion is kept when the prompt can still keep max_length // 2 tokens (or all of
    itself); otherwise the prompt keeps that tail and the completion is cut to the rest. The prompt's
    tail is the part next to the answer, so it is what matters most for predicting it.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    keep_prompt = min(prompt_len, max(max_length - completion_len, max_length // 2))
    keep_completion = min(completion_len, max_length - keep_prompt)
    return keep_prompt, keep_completion


def tokenize_row(
    tokenizer: PreTrainedTokenizerBase, row: Mapping[str, Any], *, max_length: int
) -> tuple[dict[str, Any], bool, bool]:
    """One example {"input_ids", "labels", "record_id"} and whether its prompt / completion was cut."""
    prompt_ids = encode_prompt(tokenizer, row)
    completion_ids = encode_completion(tokenizer, row["completion"], ended=answer_ended(row))
    keep_p, keep_c = fit_lengths(len(prompt_ids), len(completion_ids), max_length)
    kept_prompt = prompt_ids[len(prompt_ids) - keep_p :]
    kept_completion = completion_ids[:keep_c]
    example = {
        "input_ids": kept_prompt + kept_completion,
        "labels": [IGNORE_INDEX] * keep_p + kept_completion,
        "record_id": str(row.get("record_id", "")),
    }
    return example, keep_p < len(prompt_ids), keep_c < len(completion_ids)


def tokenize_rows(
    tokenizer: PreTrainedTokenizerBase, rows: Iterable[Mapping[str, Any]], *, max_length: int
) -> TokenizedRows:
    """Tokenize every row (any iterable of dicts, e.g. a datasets.Dataset) and count the truncations."""
    examples: list[dict[str, Any]] = []
    cut_prompt = cut_completion = cut_any = 0
    for row in rows:
        example, p_cut, c_cut = tokenize_row(tokenizer, row, max_length=max_length)
        examples.append(example)
        cut_prompt += p_cut
        cut_completion += c_cut
        cut_any += p_cut or c_cut
    # labels[0] is never predicted (nothing precedes it), as in count_response_tokens
    response_tokens = sum(sum(t != IGNORE_INDEX for t in e["labels"][1:]) for e in examples)
    return TokenizedRows(examples, cut_any, cut_prompt, cut_completion, response_tokens)


def collate(examples: Sequence[Mapping[str, Any]], *, pad_token_id: int) -> dict[str, Tensor]:
    """Right-padded batch: input_ids and labels (B, T), attention_mask (B, T) with 1 on real tokens.

    Right padding keeps every real token at the same position as without padding, so a causal model
    gives the real tokens the same logits whatever else shares the batch.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(e["labels"], dtype=torch.long)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def count_response_tokens(labels: Tensor) -> int:
    """Tokens the loss covers in a (B, T) labels tensor: positions 1.. whose label is not -100.

    Position 0 is never predicted (nothing precedes it), so the shifted loss cannot cover it.
    """
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
