"""Token-level divergences against a sparse top-k teacher (an API's top_logprobs, or a capture cache).

The teacher is known only on its k most likely tokens per position:
  teacher_ids:      (..., k) integer token ids, id -1 = padding ("absent" entry)
  teacher_logprobs: (..., k) log-probabilities at temperature 1 under the teacher's full softmax
                    (absent entries are ignored whatever their value; -inf is the convention)
Real ids must lie in [0, V) and be distinct within a row (duplicates are not checked at run time: they
double-count the student's mass).

Tail bucket: the vocabulary is collapsed into k + 1 categories, the k teacher tokens and one "tail" holding
every other token, and the dense divergence formula of `kdistill.losses.token` is applied to these k + 1
categories.
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

Shapes, mask, temperature, scale_by_t2 and the reductions ("mean" over unmasked tokens by default, with
`num_tokens` for gradient accumulation; "sum"; "none") are those of `kdistill.losses.token`, and the same
reduction helper is used. At T = 1 the bucketing is exact on both sides, and merging categories never
increases an f-divergence (all five here are), so each sparse value is then a lower bound of the dense
one. With k = V (the full log_softmax and a permutation of the vocabulary as ids) every function here
equals its dense counterpart. The teacher log-probabilities are not detached here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.numerics import compute_dtype
from kdistill.losses.token import (
    Reduction,
    _check_mask,
    _check_options,
    _check_unit_interval,
    _log_softmax_rows,
    _per_token_forward_kl,
    _per_token_generalized_jsd,
    _per_token_reverse_kl,
    _per_token_skew_kl,
    _per_token_tvd,
    _reduce_tokens,
    _safe_logsumexp,
)
from kdistill.registry import Registry

ABSENT = -1  # teacher id that marks a padded (absent) top-k entry


def _check_sparse_inputs(student_logits: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor) -> None:
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


def _present(teacher_ids: Tensor, mask: Tensor | None) -> Tensor:
    """(..., k) bool: the teacher entries that count (a real id, on an unmasked row)."""
    present = teacher_ids >= 0
    if mask is not None:
        present = present & mask.unsqueeze(-1)  # masked rows: no teacher entry, garbage never read
    return present


def _scatter_ids(teacher_ids: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
    """Ids safe to gather/scatter with, (..., k), and (..., 1) whether the row has any present entry.

    Absent entries point at the row's largest id (itself present if any entry is), so that a scatter writes
    one consistent value per index; a row with no entry points at index 0.
    """
    row_max = teacher_ids.masked_fill(~present, ABSENT).amax(dim=-1, keepdim=True)  # (..., 1)
    return torch.where(present, teacher_ids, row_max).clamp_min(0), row_max >= 0


def _teacher_bucket_log_probs(
    teacher_logprobs: Tensor, present: Tensor, vocab: int, temperature: float, dtype: torch.dtype
) -> Tensor:
    """The teacher's log-probabilities over the k + 1 categories, tempered: (..., k) -> (..., k + 1).

    Top-k log-probs at T = 1 plus log(1 - their mass), then softmax over the k + 1 logits / T.
    """
    neg_inf = torch.full((), -math.inf, dtype=dtype, device=teacher_logprobs.device)
    t_top = torch.where(present, teacher_logprobs.to(dtype), neg_inf)  # (..., k)
    top_mass = _safe_logsumexp(t_top, dim=-1).clamp_max(0.0)  # (...,) log of the top-k mass
    tail_prob = (-torch.expm1(top_mass)).clamp_min(torch.finfo(dtype).tiny)
    covers_vocab = present.sum(dim=-1) == vocab  # distinct ids covering V: the tail is empty
    t_tail = torch.where(covers_vocab, neg_inf, tail_prob.log())  # (...,)
    logits = torch.cat([t_top, t_tail.unsqueeze(-1)], dim=-1)
    if temperature != 1.0:  # x / 1 == x: skip the copy
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def _bucketed_log_probs(
    student_logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor | None,
    temperature: float,
) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities over the k + 1 categories (top-k, tail): two (..., k + 1)."""
    dtype = compute_dtype(student_logits, teacher_logprobs)
    present = _present(teacher_ids, mask)  # (..., k)
    neg_inf = torch.full((), -math.inf, dtype=dtype, device=student_logits.device)

    # student: full tempered softmax, gathered at the k ids, the rest summed into the tail
    log_p_s = _log_softmax_rows(student_logits, mask, temperature, dtype)  # (..., V)
    ids, any_present = _scatter_ids(teacher_ids, present)  # (..., k), (..., 1)
    in_top_k = torch.zeros_like(log_p_s, dtype=torch.bool).scatter(-1, ids, present | any_present)
    s_top = torch.where(present, log_p_s.gather(-1, ids), neg_inf)  # (..., k)
    s_tail = _safe_logsumexp(log_p_s.masked_fill(in_top_k, -math.inf), dim=-1)  # (..., )

    log_p_t = _teacher_bucket_log_probs(
        teacher_logprobs, present, student_logits.shape[-1], temperature, dtype
    )
    return torch.cat([s_top, s_tail.unsqueeze(-1)], dim=-1), log_p_t


# Per-token divergence over the k + 1 buckets, built from a function's own parameters: (log_p_s, log_p_t)
# (..., k + 1) -> (...). The public functions below use these, and `chunked_distill_loss` looks them up by
# function (SPARSE_PER_TOKEN) to differentiate on the k + 1 buckets instead of through the whole vocabulary.
PerToken = Callable[[Tensor, Tensor], Tensor]


def _forward_kl_per_token() -> PerToken:
    return _per_token_forward_kl


def _reverse_kl_per_token() -> PerToken:
    return _per_token_reverse_kl


def _generalized_jsd_per_token(beta: float = 0.5) -> PerToken:
    _check_unit_interval("beta", beta, closed_right=True)
    return lambda ls, lt: _per_token_generalized_jsd(ls, lt, beta)


def _skew_kl_per_token(alpha: float = 0.1, reverse: bool = False) -> PerToken:
    _check_unit_interval("alpha", alpha, closed_right=False)
    return lambda ls, lt: _per_token_skew_kl(ls, lt, alpha, reverse)


def _tvd_per_token() -> PerToken:
    return _per_token_tvd


def _sparse(
    per_token_fn: Callable[[Tensor, Tensor], Tensor],
    student_logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor | None,
    temperature: float,
    scale_by_t2: bool,
    reduction: str,
    num_tokens: int | Tensor | None,
) -> Tensor:
    """Check, bucket both sides into k + 1 categories, apply the per-token divergence, scale, reduce."""
    _check_options(temperature, reduction, num_tokens)
    _check_sparse_inputs(student_logits, teacher_ids, teacher_logprobs)
    _check_mask(mask, student_logits.shape[:-1], "student_logits", student_logits.shape)
    log_p_s, log_p_t = _bucketed_log_probs(student_logits, teacher_ids, teacher_logprobs, mask, temperature)
    per_token = per_token_fn(log_p_s, log_p_t)  # (...)
    if scale_by_t2:
        per_token = per_token * temperature**2
    return _reduce_tokens(per_token, mask, reduction, num_tokens)


def sparse_forward_kl(
    student_logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """KL(p_t || p_s) over the k + 1 categories (top-k + tail), per token; see the module docstring.

    student_logits: (..., V); teacher_ids, teacher_logprobs: (..., k); mask: (...) bool, True = counts.
    Reduction units: summed over the k + 1 categories per token, then reduced over unmasked tokens as
    `reduction` says (default: mean over unmasked tokens). Times T^2 if scale_by_t2.
    """
    return _sparse(
        _per_token_forward_kl,
        student_logits,
        teacher_ids,
        teacher_logprobs,
        mask,
        temperature,
        scale_by_t2,
        reduction,
        num_tokens,
    )


def sparse_reverse_kl(
    student_logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """KL(p_s || p_t) over the k + 1 categories, per token. Shapes and reduction as `sparse_forward_kl`."""
    return _sparse(
        _per_token_reverse_kl,
        student_logits,
        teacher_ids,
        teacher_logprobs,
        mask,
        temperature,
        scale_by_t2,
        reduction,
        num_tokens,
    )


def sparse_generalized_jsd(
    student_logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    *,
    beta: float = 0.5,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """GKD generalized JSD over the k + 1 categories, per token:

        M = beta * p_t + (1 - beta) * p_s,   JSD_beta = beta * KL(p_t || M) + (1 - beta) * KL(p_s || M)

    beta in [0, 1]; beta = 0 gives KL(p_t || p_s), beta = 1 gives KL(p_s || p_t) (as the dense
    `generalized_jsd`). Shapes and reduction as `sparse_forward_kl`.
    """
    return _sparse(
        _generalized_jsd_per_token(beta),
        student_logits,
        teacher_ids,
        teacher_logprobs,
        mask,
        temperature,
        scale_by_t2,
        reduction,
        num_tokens,
    )


def sparse_skew_kl(
    student_logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    *,
    alpha: float = 0.1,
    reverse: bool = False,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """DistiLLM skew KL over the k + 1 categories, per token:

        forward: KL(p_t || alpha * p_t + (1 - alpha) * p_s);  reverse: KL(p_s || alpha * p_s + (1 - alpha) * p_t)

    alpha in [0, 1). Shapes and reduction as `sparse_forward_kl`.
    """
    return _sparse(
        _skew_kl_per_token(alpha, reverse),
        student_logits,
        teacher_ids,
        teacher_logprobs,
        mask,
        temperature,
        scale_by_t2,
        reduction,
        num_tokens,
    )


def sparse_tvd(
    student_logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """0.5 * sum |p_t - p_s| over the k + 1 categories, per token.

    Shapes and reduction as `sparse_forward_kl`.
    """
    return _sparse(
        _per_token_tvd,
        student_logits,
        teacher_ids,
        teacher_logprobs,
        mask,
        temperature,
        scale_by_t2,
        reduction,
        num_tokens,
    )


SPARSE_TOKEN_DIVERGENCES: Registry[Callable[..., Tensor]] = Registry("sparse divergence")
SPARSE_TOKEN_DIVERGENCES.add(
    "forward_kl", sparse_forward_kl, "KL(teacher || student) on top-k + tail buckets"
)
SPARSE_TOKEN_DIVERGENCES.add(
    "reverse_kl", sparse_reverse_kl, "KL(student || teacher) on top-k + tail buckets"
)
SPARSE_TOKEN_DIVERGENCES.add(
    "generalized_jsd", sparse_generalized_jsd, "GKD generalized JSD (beta=0.5) on top-k + tail buckets"
)
SPARSE_TOKEN_DIVERGENCES.add(
    "skew_kl", sparse_skew_kl, "DistiLLM skew KL (alpha=0.1) on top-k + tail buckets"
)
SPARSE_TOKEN_DIVERGENCES.add("tvd", sparse_tvd, "total variation distance on top-k + tail buckets")

SPARSE_PER_TOKEN: dict[Callable[..., Tensor], Callable[..., PerToken]] = {
    sparse_forward_kl: _forward_kl_per_token,
    sparse_reverse_kl: _reverse_kl_per_token,
    sparse_generalized_jsd: _generalized_jsd_per_token,
    sparse_skew_kl: _skew_kl_per_token,
    sparse_tvd: _tvd_per_token,
}
