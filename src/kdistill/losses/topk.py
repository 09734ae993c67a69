"""A sparse top-k teacher, and the k + 1 categories (top-k + tail) every sparse divergence is taken over.

The teacher is known only on its k most likely tokens per position:
  teacher_ids:      (..., k) integer token ids, id -1 (ABSENT) = padding
  teacher_logprobs: (..., k) log-probabilities at temperature 1 under the teacher's full softmax
                    (absent entries are ignored whatever their value; -inf is the convention)
Real ids must lie in [0, V) and be distinct within a row: a repeated id would count the student's
probability twice, so `check_distinct_ids` refuses it (`bucketed_log_probs` runs it on the present entries).

Tail bucket: the vocabulary is collapsed into k + 1 categories, the k teacher tokens and one "tail" holding
every other token.
  teacher: exp(logprob_i) on its k tokens; tail = 1 - sum_i exp(logprob_i), computed as
           log(-expm1(logsumexp(logprobs))) and clamped at >= 0. When the ids cover the whole vocabulary the
           tail is exactly empty.
  student: its full softmax at temperature T, gathered at the k ids; tail = its mass on every other token,
           a logsumexp over the non-top-k log-probabilities (no 1 - sum, so nothing is lost when the top-k
           mass is near 1).

Over-full rows (docs/topk_tail.md). When the top-k log-probs of a row sum to >= 1 (an endpoint's rounding)
although the ids do not cover the vocabulary, the teacher's tail is below what its numbers can resolve. A
tail floored at a tiny number would make a mode-seeking divergence charge log(1 / tiny) (~87 nats in
float32, ~708 in float64) per unit of student tail; a tail of 0 would make it +inf. `bucketed_log_probs` instead compares
both sides *conditioned on the top-k*: each renormalised over the k ids, both tails empty. That is the
only thing such a row states exactly (at every T: the conditional of softmax(z / T) over a set of tokens
depends only on their logits), and no tail term charges the student. If the true tail is 0, forward KL,
reverse KL and TVD stay lower bounds of their dense values at T = 1 (KL(p_t || p_s) = KL(p_t || p_s | top-k)
- log S_s with S_s <= 1 the student's top-k mass; reverse KL is then +inf densely; TVD by the triangle
inequality). Rows whose top-k mass is below 1 are not touched.
`teacher_bucket_log_probs` alone keeps the floor (its callers that bucket the student themselves).

Temperature: the student is tempered exactly (full softmax of logits / T, then bucketed). For the teacher
only the top-k log-probabilities at T = 1 are known, so the tail is tempered as one category: the tempered
teacher is softmax over the k + 1 logits (logprob_1 / T, ..., logprob_k / T, log(tail) / T). This equals
the dense tempering exactly when the tail is empty (k = V) and at T = 1; otherwise it errs on a known side.
With a = 1 / T, tail mass m and n tail tokens of probabilities q_j, the dense tempering gives the tail the
unnormalised weight S = sum_j q_j^a, the one-bucket tempering m^a, and
    T > 1 (a < 1):  m^a <= S <= n^(1 - a) m^a      one bucket UNDERestimates the tail
    T < 1 (a > 1):  n^(1 - a) m^a <= S <= m^a      one bucket OVERestimates the tail
Proof: S / m^a = sum_j (q_j / m)^a, and 0 <= q_j / m <= 1 gives t^a >= t for a < 1 (<= for a > 1), so
the sum is >= (<=) sum_j q_j / m = 1; the other side is the power-mean (Jensen) inequality
(1/n) sum_j q_j^a <= (>=) ((1/n) sum_j q_j)^a for a < 1 (> 1). Equality: m^a when one tail token holds
the whole tail, n^(1 - a) m^a when the tail is uniform. The tempered tail probability S / (W + S), with
W = sum_i q_i^a over the top-k, increases with S, so the bounds carry over to it
(`tempered_tail_bounds`), and each top-k probability errs the other way. If no tail token is more likely
than the least likely present entry c (true when the ids are the teacher's top-k, not when an endpoint
row adds a sampled token from further down), the extreme tails are floor(m / c) tokens at c plus one at
the rest: S_c = floor(m / c) c^a + (m - floor(m / c) c)^a replaces m^a as the bound (x^a summed is
Schur-concave for a < 1). docs/topk_tail.md measures the errors on Zipf-like distributions: they are
large at T = 2, 4 and 0.5 for every k from 1 to 50, and at T > 1 no estimate from the top-k alone closes them.
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
    integer and floating tensors with the same leading shape, k <= V. (Repeated ids are refused by
    `check_distinct_ids`, which needs the mask: masked rows may hold garbage.)"""
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


def check_distinct_ids(teacher_ids: Tensor, present: Tensor) -> None:
    """Raise ValueError when a row repeats a present id (it would count the student's mass twice).

    A sort of the (..., k) ids, so cheap beside the (..., V) softmax, and one host sync to decide.
    """
    if teacher_ids.shape[-1] < 2:
        return
    ids = teacher_ids.masked_fill(~present, ABSENT).sort(dim=-1).values  # (..., k), absent first
    repeated = ((ids[..., 1:] == ids[..., :-1]) & (ids[..., 1:] != ABSENT)).any(dim=-1)  # (...)
    if bool(repeated.any()):
        rows = int(repeated.sum())
        first = tuple(int(i) for i in repeated.nonzero()[0])
        raise ValueError(
            f"teacher_ids repeat a token id within {rows} of {repeated.numel()} rows (first at index {first}): "
            "the ids of a row must be distinct, a repeated id counts the student's probability twice"
        )


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


def _teacher_top_and_tail(
    teacher_logprobs: Tensor, present: Tensor, vocab: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """(..., k) top-k log-probs (-inf where absent), (...) log of the tail (floored at the dtype's tiny, -inf
    when the ids cover the vocabulary), (...) bool whether the floor replaced a tail that rounded to <= 0."""
    neg_inf = torch.full((), -math.inf, dtype=dtype, device=teacher_logprobs.device)
    t_top = torch.where(present, teacher_logprobs.to(dtype), neg_inf)  # (..., k)
    top_mass = safe_logsumexp(t_top, dim=-1).clamp_max(0.0)  # (...,) log of the top-k mass
    tail_prob = -torch.expm1(top_mass)
    covers_vocab = present.sum(dim=-1) == vocab  # distinct ids covering V: the tail is empty
    floored = (tail_prob < torch.finfo(dtype).tiny) & ~covers_vocab
    t_tail = torch.where(covers_vocab, neg_inf, tail_prob.clamp_min(torch.finfo(dtype).tiny).log())
    return t_top, t_tail, floored


def teacher_bucket_log_probs(
    teacher_logprobs: Tensor, present: Tensor, vocab: int, temperature: float, dtype: torch.dtype
) -> Tensor:
    """The teacher's log-probabilities over the k + 1 categories, tempered: (..., k) -> (..., k + 1).

    Top-k log-probs at T = 1 plus log(1 - their mass), then softmax over the k + 1 logits / T. A tail that
    rounds to <= 0 is floored at the dtype's tiny here, so that a caller comparing with an unconditioned
    student stays finite; `bucketed_log_probs` conditions such rows on the top-k instead.
    """
    t_top, t_tail, _ = _teacher_top_and_tail(teacher_logprobs, present, vocab, dtype)
    return _tempered(t_top, t_tail, temperature)


def over_full_rows(teacher_logprobs: Tensor, present: Tensor, vocab: int, dtype: torch.dtype) -> Tensor:
    """(...) bool: the rows to condition on the top-k, whose top-k mass rounds to >= 1 in `dtype` (the tail
    would be floored) though the ids do not cover the vocabulary."""
    return _teacher_top_and_tail(teacher_logprobs, present, vocab, dtype)[2]


def _tempered(t_top: Tensor, t_tail: Tensor, temperature: float) -> Tensor:
    """log softmax of the k + 1 logits (t_top, t_tail) / T: (..., k), (...) -> (..., k + 1)."""
    logits = torch.cat([t_top, t_tail.unsqueeze(-1)], dim=-1)
    if temperature != 1.0:  # x / 1 == x: skip the copy
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def condition_on_top_k(log_p: Tensor, rows: Tensor) -> Tensor:
    """(..., k + 1) bucket log-probs with `rows` (...) renormalised over the k top-k buckets, tail -inf:
    the distribution conditioned on the top-k, for the over-full rows (module docstring)."""
    top = log_p[..., :-1]
    norm = torch.where(rows, safe_logsumexp(top, dim=-1), 0.0)  # 0 elsewhere: no -inf - -inf NaN
    tail = torch.where(rows, -math.inf, log_p[..., -1])
    return torch.cat([top - norm.unsqueeze(-1), tail.unsqueeze(-1)], dim=-1)


def tempered_tail_bounds(
    teacher_logprobs: Tensor,
    present: Tensor,
    vocab: int,
    temperature: float,
    dtype: torch.dtype,
    *,
    ids_are_top_k: bool = False,
) -> tuple[Tensor, Tensor]:
    """(low, high), each (...): where the densely tempered teacher's tail probability must lie.

    The bracket of the module docstring on S = sum over the tail of q_j^(1/T), carried to S / (W + S).
    `ids_are_top_k`: also assume no tail token is more likely than the least likely present entry, which
    tightens the side that the one-bucket tempering sits on. Rows with an empty tail give (0, 0).
    """
    a = 1.0 / temperature
    t_top, t_tail, _ = _teacher_top_and_tail(teacher_logprobs, present, vocab, dtype)
    log_w = safe_logsumexp(a * t_top, dim=-1)  # (...) log W
    n = (vocab - present.sum(dim=-1)).to(dtype)  # tail tokens
    concentrated = a * t_tail  # log m^a: the whole tail on one token (= the one-bucket tempering)
    uniform = (1.0 - a) * n.clamp_min(1).log() + a * t_tail  # log n^(1 - a) m^a
    if ids_are_top_k:
        log_c = torch.where(present, t_top, math.inf).amin(dim=-1)  # least likely present entry
        ratio = (t_tail - log_c).exp()  # m / c
        full = ratio.floor()
        rest = t_tail + torch.log1p(-(full / ratio).clamp_max(1.0))  # log(m - floor(m / c) c)
        capped = torch.logaddexp(full.log() + a * log_c, a * rest)  # log S_c; = a log m when m < c
        # the assumption is false (or says nothing) where m > n c, or without a present entry or a tail
        consistent = torch.isfinite(log_c) & torch.isfinite(t_tail) & (ratio <= n)
        concentrated = torch.where(consistent, capped, concentrated)
    low_s, high_s = (concentrated, uniform) if a < 1 else (uniform, concentrated)

    def tail_prob(log_s: Tensor) -> Tensor:
        return (log_s - torch.logaddexp(log_w, log_s)).exp().nan_to_num(nan=0.0)  # empty tail: -inf - -inf

    return tail_prob(low_s), tail_prob(high_s)


def bucketed_log_probs(
    student_logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor | None,
    temperature: float,
) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities over the k + 1 categories (top-k, tail): two (..., k + 1).

    student_logits (..., V); teacher_ids, teacher_logprobs (..., k); mask (...) bool or None (masked rows
    hold everything in the tail on both sides, whatever garbage their inputs contain). Over-full rows (the
    top-k mass rounds to >= 1) are conditioned on the top-k on both sides (module docstring).
    """
    dtype = compute_dtype(student_logits, teacher_logprobs)
    present = present_entries(teacher_ids, mask)  # (..., k)
    check_distinct_ids(teacher_ids, present)
    neg_inf = torch.full((), -math.inf, dtype=dtype, device=student_logits.device)

    # student: full tempered softmax, gathered at the k ids, the rest summed into the tail
    log_p_s = log_softmax_rows(student_logits, mask, temperature, dtype)  # (..., V)
    ids, any_present = scatter_ids(teacher_ids, present)  # (..., k), (..., 1)
    in_top_k = torch.zeros_like(log_p_s, dtype=torch.bool).scatter(-1, ids, present | any_present)
    s_top = torch.where(present, log_p_s.gather(-1, ids), neg_inf)  # (..., k)
    s_tail = safe_logsumexp(log_p_s.masked_fill(in_top_k, -math.inf), dim=-1)  # (..., )

    t_top, t_tail, over_full = _teacher_top_and_tail(
        teacher_logprobs, present, student_logits.shape[-1], dtype
    )
    log_p_t = _tempered(t_top, t_tail, temperature)  # (..., k + 1)
    log_b_s = torch.cat([s_top, s_tail.unsqueeze(-1)], dim=-1)
    return condition_on_top_k(log_b_s, over_full), condition_on_top_k(log_p_t, over_full)
