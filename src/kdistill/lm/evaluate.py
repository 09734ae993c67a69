"""How close a student LM is to its teacher on held-out teacher answers.

- perplexity of the student on the teacher's answers (response tokens only): how likely it finds them;
- top-1 agreement with the teacher, next token by next token along the teacher's answers (needs the
  teacher model, and the same tokenizer for both);
- the student's own greedy answers, scored against the teacher's with ROUGE-L F1 and exact match, and
  timed as they come (the report's speed is measured apart: `generation_call`, same prompts and forced
  lengths for every model, timed in turns by kdistill.runs.timing);
- bits per byte of the answers' text, which, unlike perplexity per token, compares models whose
  tokenizers differ.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from kdistill.lm.degeneration import degeneration
from kdistill.lm.models import backbone_and_head
from kdistill.lm.sft_data import (
    IGNORE_INDEX,
    answer_ended,
    collate,
    encode_prompt,
    tokenize_row,
    tokenize_rows,
)
from kdistill.losses.numerics import compute_dtype

__all__ = [
    "Generations",
    "bits_per_byte",
    "evaluate_student",
    "exact_match",
    "generate_answers",
    "generation_call",
    "lcs_length",
    "response_perplexity",
    "rouge_l_f1",
    "teacher_agreement",
]


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence of two sequences (dynamic programming, O(len a * len b))."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace-separated words: 2PR / (P + R) with P = LCS/|cand|, R = LCS/|ref|.

    Two empty texts match (1.0); one empty text scores 0.0. Case and punctuation count as written.
    """
    cand, ref = candidate.split(), reference.split()
    if not cand and not ref:
        return 1.0
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(candidate: str, reference: str) -> bool:
    """Equal after stripping surrounding whitespace."""
    return candidate.strip() == reference.strip()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(examples: Sequence[Mapping[str, Any]], batch_size: int, pad_token_id: int):
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start : start + batch_size], pad_token_id=pad_token_id)


def _response_logits(model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits (n, V) at the batch's n response positions (position t predicts token t + 1) and their
    targets (n,), on the model's device.

    For a plain-head causal LM only those rows go through the head: prompt and padding positions cost no
    (V x H) matmul and no logits memory. Models that transform their logits after the head use their own.
    """
    device = _device(model)
    input_ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    targets = batch["labels"][:, 1:].to(device)
    scored = targets != IGNORE_INDEX  # (B, T-1)
    try:
        backbone, head = backbone_and_head(model)
    except (ValueError, AttributeError):
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]  # (B, T-1, V)
        return logits[scored], targets[scored]
    hidden = backbone(input_ids=input_ids, attention_mask=attention).last_hidden_state[:, :-1]
    return head(hidden[scored]), targets[scored]


@torch.inference_mode()
def response_perplexity(
    model: nn.Module, examples: Sequence[Mapping[str, Any]], *, pad_token_id: int, batch_size: int = 8
) -> dict[str, float]:
    """exp(mean nll per response token) over all examples, with the nll and the token count."""
    nll, tokens = 0.0, 0
    for batch in _batches(examples, batch_size, pad_token_id):
        logits, targets = _response_logits(model, batch)  # (n, V), (n,)
        nll += F.cross_entropy(logits.to(compute_dtype(logits)), targets, reduction="sum").item()
        tokens += targets.numel()
    if tokens == 0:
        raise ValueError("no response tokens to score")
    return {"perplexity": math.exp(nll / tokens), "nll_per_token": nll / tokens, "tokens": tokens}


@torch.inference_mode()
def bits_per_byte(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Iterable[Mapping[str, Any]],
    *,
    max_length: int,
    batch_size: int = 8,
    pad_token_id: int | None = None,
) -> dict[str, Any]:
    """-log2 p(answer text), summed over rows, per UTF-8 byte of the answers: tokenizer-independent.

    Per-token perplexity depends on how finely a tokenizer cuts the text; the probability of the whole
    answer text does not, so two models with different tokenizers get comparable figures on the same rows.
    Rows are tokenized as for training (`tokenize_row`: the prompt rendered by this tokenizer's chat
    template, then the answer). The eos after the answer is not scored: it stands for no byte of the text,
    and counting it would charge each tokenizer's stop decision to the text. An answer cut by max_length
    is scored on the tokens kept and counts the bytes those tokens cover (by their offsets; a kept token
    holding part of a multi-byte character counts the whole character); figures are comparable across
    tokenizers when `truncated_rows` is 0.

    Returns bits_per_byte, bits (the summed -log2 p), bytes, tokens (scored), rows, truncated_rows.
    """
    rows = list(rows)
    candidates = (pad_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id)
    pad = next((p for p in candidates if p is not None), None)  # masks, not this id, decide what is padding
    if pad is None:
        raise ValueError(
            "bits_per_byte needs a pad_token_id: the tokenizer has neither a pad nor an eos token"
        )
    examples, n_bytes, truncated = [], 0, 0
    for row in rows:
        example, _, answer_cut = tokenize_row(tokenizer, row, max_length=max_length)
        labels = list(example["labels"])
        if labels and labels[0] != IGNORE_INDEX:
            raise ValueError(
                f"row {row.get('record_id')!r}: the answer starts the sequence (empty prompt, no bos), so its "
                "first token has no prediction to score"
            )
        if answer_cut:
            truncated += 1
            kept = sum(label != IGNORE_INDEX for label in labels)
            n_bytes += _answer_prefix_bytes(tokenizer, row["completion"], kept)
        else:
            if answer_ended(row):
                labels[-1] = IGNORE_INDEX  # the eos encode_completion appended (none after a cut-off answer)
            n_bytes += len(row["completion"].encode("utf-8"))
        examples.append({**example, "labels": labels})
    nll, tokens = 0.0, 0
    for batch in _batches(examples, batch_size, pad):
        logits, targets = _response_logits(model, batch)  # (n, V), (n,)
        nll += F.cross_entropy(logits.to(compute_dtype(logits)), targets, reduction="sum").item()
        tokens += targets.numel()
    if n_bytes == 0:
        raise ValueError("no answer bytes to score (every completion is empty)")
    bits = nll / math.log(2)
    return {
        "bits_per_byte": bits / n_bytes,
        "bits": bits,
        "bytes": n_bytes,
        "tokens": tokens,
        "rows": len(rows),
        "truncated_rows": truncated,
    }


def _answer_prefix_bytes(tokenizer: PreTrainedTokenizerBase, answer: str, kept: int) -> int:
    """UTF-8 bytes of `answer` covered by its first `kept` tokens (tokenized alone, as encode_completion)."""
    if kept == 0:
        return 0
    offsets = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return len(answer[: offsets[kept - 1][1]].encode("utf-8"))


@torch.inference_mode()
def teacher_agreement(
    student: nn.Module,
    teacher: nn.Module,
    examples: Sequence[Mapping[str, Any]],
    *,
    pad_token_id: int,
    batch_size: int = 8,
) -> float:
    """Fraction of response positions where student and teacher predict the same next token (top-1)."""
    agree, total = 0, 0
    for batch in _batches(examples, batch_size, pad_token_id):
        # (n,) each: the guess for token t + 1 at every response position, in the same order
        student_top1, teacher_top1 = (
            _response_logits(m, batch)[0].argmax(dim=-1).cpu() for m in (student, teacher)
        )
        agree += int((student_top1 == teacher_top1).sum())
        total += student_top1.numel()
    if total == 0:
        raise ValueError("no response tokens to compare")
    return agree / total


@dataclass(frozen=True)
class Generations:
    texts: list[str]  # decoded answers, special tokens removed
    new_tokens: list[int]  # generated tokens per answer, its eos included
    seconds: float  # wall time inside generate(), all batches
    hit_limit: list[bool] = field(default_factory=list)  # used every allowed new token without an eos


def _left_padded(prompts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T) and attention mask (B, T) of `prompts`, left-padded with `pad` to the longest."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        attention_mask[i, width - len(p) :] = 1
    return input_ids, attention_mask


def generation_call(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    *,
    new_tokens: int,
    max_prompt_length: int,
) -> Callable[[], None]:
    """A call for the timing phase: greedy answers to all `rows` in one left-padded batch, exactly
    `new_tokens` tokens each (min_new_tokens = max_new_tokens: no model looks faster by stopping early), the
    prompts cut to their last `max_prompt_length` tokens. Tokenized once, here; the call raises if the
    answers came out shorter. The model should be in eval mode."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer needs a pad token for batched generation (load_tokenizer sets one)")
    prompts = [encode_prompt(tokenizer, row)[-max_prompt_length:] for row in rows]
    device = _device(model)
    input_ids, attention_mask = (t.to(device) for t in _left_padded(prompts, pad))
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=pad,
        eos_token_id=eos,
    )

    def call() -> None:
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=config
            )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if output.shape[1] - input_ids.shape[1] != new_tokens:
            raise RuntimeError(f"generated {output.shape[1] - input_ids.shape[1]} tokens, not {new_tokens}")

    return call


@torch.inference_mode()
def generate_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Iterable[Mapping[str, Any]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    max_prompt_length: int | None = None,
) -> Generations:
    """Greedy answers to each row's prompt, in batches left-padded by hand.

    The prompt ids are exactly those training used (`encode_prompt`), cut to their last
    `max_prompt_length` tokens if given. Left padding puts every prompt's last token at the same position,
    so the first new token of every row is generated in the same step.
    """
    rows = list(rows)  # a datasets.Dataset slices into columns; iterating gives rows
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer needs a pad token for batched generation (load_tokenizer sets one)")
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos
    )
    device = _device(model)
    was_training = model.training
    model.eval()
    texts, counts, cut, seconds = [], [], [], 0.0
    try:
        for start in range(0, len(rows), batch_size):
            prompts = [encode_prompt(tokenizer, row) for row in rows[start : start + batch_size]]
            if max_prompt_length is not None:
                prompts = [p[-max_prompt_length:] for p in prompts]
            input_ids, attention_mask = _left_padded(prompts, pad)
            width = input_ids.shape[1]
            begin = time.perf_counter()
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - begin
            for new in output[:, width:].cpu().tolist():
                length = new.index(eos) + 1 if eos in new else len(new)  # rows that stopped early are padded
                counts.append(length)
                cut.append(eos not in new[:length] and length >= max_new_tokens)
                texts.append(tokenizer.decode(new[:length], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return Generations(texts=texts, new_tokens=counts, seconds=seconds, hit_limit=cut)


def evaluate_student(
    student: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Iterable[Mapping[str, Any]],
    *,
    teacher: nn.Module | None = None,
    max_length: int = 512,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    generate: bool = True,
) -> dict[str, Any]:
    """Every metric above on held-out rows, as a plain dict (JSON-able)."""
    rows = list(rows)
    tokenized = tokenize_rows(tokenizer, rows, max_length=max_length)
    pad = tokenizer.pad_token_id
    result: dict[str, Any] = {"rows": len(rows), "truncated_rows": tokenized.num_truncated}
    ppl = response_perplexity(student, tokenized.examples, pad_token_id=pad, batch_size=batch_size)
    result |= {
        "perplexity": ppl["perplexity"],
        "nll_per_token": ppl["nll_per_token"],
        "tokens": ppl["tokens"],
    }
    if teacher is not None:
        result["teacher_agreement"] = teacher_agreement(
            student, teacher, tokenized.examples, pad_token_id=pad, batch_size=batch_size
        )
    if generate:
        gen = generate_answers(student, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=batch_size)
        references = [row["completion"] for row in rows]
        rouge = [rouge_l_f1(c, r) for c, r in zip(gen.texts, references, strict=True)]
        exact = [exact_match(c, r) for c, r in zip(gen.texts, references, strict=True)]
        new_tokens = sum(gen.new_tokens)
        result |= {
            "rouge_l_f1": sum(rouge) / len(rouge),
            "exact_match": sum(exact) / len(exact),
            "seconds_per_answer": gen.seconds / len(rows),  # batched: wall time / answers
            "new_tokens_per_second": new_tokens / gen.seconds if gen.seconds > 0 else float("nan"),
            "mean_new_tokens": new_tokens / len(rows),
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
            "answers": gen.texts,
        }
        result |= degeneration(gen.texts, gen.hit_limit)  # does its own text read well (loops, cut answers)?
    return result
