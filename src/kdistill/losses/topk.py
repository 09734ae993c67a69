"""A sparse top-k teacher, and the k + 1 categories (top-k + tail) every sparse divergence is taken over.

The teacher is known only on its k most likely tokens per position:
  teacher_ids:      (..., k) integer token ids, id -1 (ABSENT) = padding
  teacher_logprobs: (..., k) log-probabilities at temperature 1 under the teacher's full softmax
                    (absent entries are ignored whatever their value; -inf is the convention)
Real ids must lie in [0, V) and be distinct within a row (duplicates are not checked at run time: they
double-count the student's mass).

Tail bucket: the vocabulary is collapsed into k + 1 categories, the k teacher tokens and one "tail" holding
every other token.
  teacher: exp(logprob_i) on its k tokens; tail = 1 - sum_i exp(logprob_i), computed as
           log(-expm1(logsumexp(logprobs))) and clamped at >= 0. When the ids cover the whole vocabulary the
           tail is exactly empty; when they do not but the top-k mass rounds to 1, the tail's probability is
           floored at the dtype's smallest normal number (log ~ -87 in float32) so that mode-seeking
           divergences stay finite instead of +inf.
  student: its full softmax at temperature T, gathered at the k ids; tail = its mass on every other token,
           a logsumexp over the non-top-k log-probabilities (no 1 - sum, so nothing is lost when the top-k
           mass is near 1).
Temperature: the student is tempered exactly (full softmax of logits / T, then bucketed). For the teacher
only the top-k log-probabilities at T = 1 are known, so the tail is tempered as one category: the tempered
teacher is softmax over the k + 1 logits (logprob_1 / T, ..., logprob_k / T, log(tail) / T). This equals
the dense tempering exactly when the tail is empty (k = V) and is an approximation otherwise (tempering
the tail's tokens one by one would spread more or less mass into it). At T = 1 it only renormalises.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.numerics import compute_dtype, log_softmax_rows, safe_logsumexp

ABSENT = -1  # teacher id that marks a padded (absent) top-k entry


def check_sparse_inputs(student_logits: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor) -> None:
    """Raise ValueError unless student_logits is (..., V) and the teacher's ids and log-probs are (..., k)
    integer and floating tensors with the same leading shape, k <= V."""
    if student_logits.ndim < 2:
        raise ValueError(f"student_logits must be (..., V), got {tuple(student_logits.shape)}")
    if teacher_ids.dtype.is_floating_point or teacher_ids.dtype == torch.bool or teacher_ids.is_complex():
        raise ValueError(f"teacher_ids must be an integer tensor, got dtype {teacher_ids.dtype}")
    if teacher_ids.shape != teacher_logprobs.shape:
        raise ValueError(
            f"teacher_ids {tuple(teacher_ids.shape)} and teacher_logprobs {tuple(teacher_logprobs.shape)} "
            "differ in shape"
        )
    if teacher_ids.ndim != student_logits.ndim or teacher_ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"teacher_ids {tuple(teacher_ids.shape)} does not match student_logits {tuple(student_logits.shape)}: "
            f"expected (..., k) with leading shape {tuple(student_logits.shape[:-1])}"
        )
    vocab, k = student_logits.shape[-1], teacher_ids.shape[-1]
    if k > vocab:
        raise ValueError(f"teacher top-k ({k}) exceeds the student's vocabulary ({vocab})")


def present_entries(teacher_ids: Tensor, mask: Tensor | None) -> Tensor:
    """(..., k) bool: the teacher entries that count (a real id, on an unmasked row)."""
    present = teacher_ids >= 0
    if mask is not None:
        present = present & mask.unsqueeze(-1)  # masked rows: no teacher entry, garbage never read
    return present


def scatter_ids(teacher_ids: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
    """Ids safe to gather/scatter with, (..., k), and (..., 1) whether the row has any present entry.

    Absent entries point at the row's largest id (itself present if any entry is), so that a scatter writes
    one consistent value per index; a row with no entry points at index 0.
    """
    row_max = teacher_ids.masked_fill(~present, ABSENT).amax(dim=-1, keepdim=True)  # (..., 1)
    return torch.where(present, teacher_ids, row_max).clamp_min(0), row_max >= 0


def teacher_bucket_log_probs(
    teacher_logprobs: Tensor, present: Tensor, vocab: int, temperature: float, dtype: torch.dtype
) -> Tensor:
    """The teacher's log-probabilities over the k + 1 categories, tempered: (..., k) -> (..., k + 1).

    Top-k log-probs at T = 1 plus log(1 - their mass), then softmax over the k + 1 logits / T.
    """
    neg_inf = torch.full((), -math.inf, dtype=dtype, device=teacher_logprobs.device)
    t_top = torch.where(present, teacher_logprobs.to(dtype), neg_inf)  # (..., k)
    top_mass = safe_logsumexp(t_top, dim=-1).clamp_max(0.0)  # (...,) log of the top-k mass
    tail_prob = (-torch.expm1(top_mass)).clamp_min(torch.finfo(dtype).tiny)
    covers_vocab = present.sum(dim=-1) == vocab  # distinct ids covering V: the tail is empty
    t_tail = torch.where(covers_vocab, neg_inf, tail_prob.log())  # (...,)
    logits = torch.cat([t_top, t_tail.unsqueeze(-1)], dim=-1)
    if temperature != 1.0:  # x / 1 == x: skip the copy
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def bucketed_log_probs(
    student_logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor | None,
    temperature: float,
) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities over the k + 1 categories (top-k, tail): two (..., k + 1).

    student_logits (..., V); teacher_ids, teacher_logprobs (..., k); mask (...) bool or None (masked rows
    hold everything in the tail on both sides, whatever garbage their inputs contain).
    """
    dtype = compute_dtype(student_logits, teacher_logprobs)
    present = present_entries(teacher_ids, mask)  # (..., k)
    neg_inf = torch.full((), -math.inf, dtype=dtype, device=student_logits.device)

    # student: full tempered softmax, gathered at the k ids, the rest summed into the tail
    log_p_s = log_softmax_rows(student_logits, mask, temperature, dtype)  # (..., V)
    ids, any_present = scatter_ids(teacher_ids, present)  # (..., k), (..., 1)
    in_top_k = torch.zeros_like(log_p_s, dtype=torch.bool).scatter(-1, ids, present | any_present)
    s_top = torch.where(present, log_p_s.gather(-1, ids), neg_inf)  # (..., k)
    s_tail = safe_logsumexp(log_p_s.masked_fill(in_top_k, -math.inf), dim=-1)  # (..., )

    log_p_t = teacher_bucket_log_probs(
        teacher_logprobs, present, student_logits.shape[-1], temperature, dtype
    )
    return torch.cat([s_top, s_tail.unsqueeze(-1)], dim=-1), log_p_t
