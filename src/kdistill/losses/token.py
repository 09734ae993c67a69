"""Token-level divergences for language-model distillation, on full (dense) vocabulary logits.

Every function compares, at each token position, the teacher's and the student's next-token distributions

    p_t = softmax(teacher_logits / T),   p_s = softmax(student_logits / T)      over the vocabulary V

and reduces the per-token divergence over the positions that `mask` keeps. Shapes: logits are (B, S, V) or
(N, V) (any leading shape works); `mask` is bool with the leading shape ((B, S) or (N,)), True = this token
counts, None = every position counts. Positions are already aligned by the caller: nothing is shifted here.

T is the *distillation* temperature, dividing both sides' logits before the softmax; it is not the
sampling temperature used to generate the sequences. `scale_by_t2=True` multiplies the result by T^2
(Hinton et al. 2015: keeps the gradient scale independent of T); the default does not scale.

Reductions (shared by every function here and in `token_sparse`):
  "mean" (default): sum over unmasked tokens of the per-token divergence / number of unmasked tokens
                    (clamped at >= 1, so an all-masked batch gives exactly 0 with zero gradients). If
                    `num_tokens` is given (int or 0-dim tensor) it is the divisor instead (also clamped at
                    >= 1): pass the unmasked-token count of the whole gradient-accumulation window, summed
                    over processes, so that summing the micro-batch losses gives the full-batch mean.
  "sum":            sum over unmasked tokens.
  "none":           the per-token divergence, shape logits.shape[:-1], exactly 0 at masked positions.

Numerics: float32 (float64 inputs stay float64), log space throughout (log_softmax; mixtures by logsumexp of
log-probabilities plus log-weights), 0 * log 0 = 0 so -inf logits (a vocabulary mask) give finite values
and gradients. Masked positions contribute nothing even when their logits are NaN/inf garbage.

The teacher side is NOT detached here: the caller decides (normally it passes a tensor computed under
torch.no_grad(); self-distillation may want gradients through both sides).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.numerics import compute_dtype
from kdistill.registry import Registry

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS = ("mean", "sum", "none")

# --- checks -----------------------------------------------------------------------------------------


def _check_options(temperature: float, reduction: str, num_tokens: int | Tensor | None) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if num_tokens is not None:
        if reduction != "mean":
            raise ValueError(f"num_tokens only applies to reduction='mean', got reduction={reduction!r}")
        if isinstance(num_tokens, Tensor):
            if num_tokens.ndim != 0:
                raise ValueError(
                    f"num_tokens must be an int or a 0-dim tensor, got shape {tuple(num_tokens.shape)}"
                )
        elif num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")


def _check_mask(
    mask: Tensor | None, positions: torch.Size, logits_name: str, logits_shape: torch.Size
) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.shape != positions:
        raise ValueError(
            f"mask {tuple(mask.shape)} does not match {logits_name} {tuple(logits_shape)}: "
            f"expected mask of shape {tuple(positions)} (the logits' leading shape)"
        )


def _check_unit_interval(name: str, value: float, *, closed_right: bool) -> None:
    ok = 0.0 <= value <= 1.0 if closed_right else 0.0 <= value < 1.0
    if not ok:
        bound = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must be in {bound}, got {value}")


# --- numerics shared with token_sparse --------------------------------------------------------------


def _log_softmax_rows(logits: Tensor, mask: Tensor | None, temperature: float, dtype: torch.dtype) -> Tensor:
    """log softmax(logits / T) in `dtype`: (..., V) -> (..., V); masked rows are zeroed first.

    Zeroing (not just ignoring) masked rows keeps NaN/inf garbage there out of the forward *and* backward
    pass: the gradient reaching the garbage through torch.where is exactly 0.
    """
    z = logits.to(dtype)
    if mask is not None:
        z = torch.where(mask.unsqueeze(-1), z, torch.zeros((), dtype=dtype, device=z.device))
    if temperature != 1.0:  # x / 1 == x: skip a (..., V) copy
        z = z / temperature
    return F.log_softmax(z, dim=-1)


def _safe_logsumexp(x: Tensor, dim: int) -> Tensor:
    """logsumexp that is -inf (with zero gradient, not NaN) for a slice that is entirely -inf."""
    empty = (x == -math.inf).all(dim=dim, keepdim=True)
    x = torch.where(empty, torch.zeros((), dtype=x.dtype, device=x.device), x)
    out = torch.logsumexp(x, dim=dim, keepdim=True)
    out = torch.where(empty, torch.full((), -math.inf, dtype=x.dtype, device=x.device), out)
    return out.squeeze(dim)


def _log_mix(log_p: Tensor, log_q: Tensor, w: float) -> Tensor:
    """log(w * p + (1 - w) * q) from log-probabilities, w in [0, 1]: a logsumexp of the weighted terms."""
    if w == 0.0:
        return log_q
    if w == 1.0:
        return log_p
    return _safe_logsumexp(torch.stack([log_p + math.log(w), log_q + math.log1p(-w)]), dim=0)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) over the last dim, with 0 * log(0 / q) = 0: (..., V) -> (...).

    The where() keeps p = 0 entries (including log_p = log_q = -inf, which would be NaN) out of both the
    value and the gradient.
    """
    p = log_p.exp()
    diff = torch.where(p > 0, log_p - log_q, torch.zeros((), dtype=p.dtype, device=p.device))
    return (p * diff).sum(dim=-1)


def _per_token_forward_kl(log_p_s: Tensor, log_p_t: Tensor) -> Tensor:
    return _kl(log_p_t, log_p_s)


def _per_token_reverse_kl(log_p_s: Tensor, log_p_t: Tensor) -> Tensor:
    return _kl(log_p_s, log_p_t)


def _per_token_generalized_jsd(log_p_s: Tensor, log_p_t: Tensor, beta: float) -> Tensor:
    if beta == 0.0:
        return _kl(log_p_t, log_p_s)
    if beta == 1.0:
        return _kl(log_p_s, log_p_t)
    log_m = _log_mix(log_p_t, log_p_s, beta)  # M = beta * p_t + (1 - beta) * p_s
    return beta * _kl(log_p_t, log_m) + (1.0 - beta) * _kl(log_p_s, log_m)


def _per_token_skew_kl(log_p_s: Tensor, log_p_t: Tensor, alpha: float, reverse: bool) -> Tensor:
    if reverse:
        return _kl(log_p_s, _log_mix(log_p_s, log_p_t, alpha))
    return _kl(log_p_t, _log_mix(log_p_t, log_p_s, alpha))


def _per_token_tvd(log_p_s: Tensor, log_p_t: Tensor) -> Tensor:
    return 0.5 * (log_p_t.exp() - log_p_s.exp()).abs().sum(dim=-1)


def _reduce_tokens(
    per_token: Tensor, mask: Tensor | None, reduction: str, num_tokens: int | Tensor | None
) -> Tensor:
    """The masked token reduction shared by every token divergence (dense and sparse).

    per_token: (...) divergence per position; mask: (...) bool or None. Masked positions are set to exactly
    0 (torch.where, so NaN there cannot leak), then "none" returns them, "sum" sums, and "mean" divides the
    sum by num_tokens if given, else by the number of unmasked positions; both divisors clamped at >= 1.
    """
    if mask is not None:
        per_token = torch.where(
            mask, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device)
        )
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    if num_tokens is None:
        count = mask.sum() if mask is not None else torch.tensor(per_token.numel(), device=total.device)
    elif isinstance(num_tokens, Tensor):
        count = num_tokens.to(device=total.device)
    else:
        count = torch.tensor(num_tokens, device=total.device)
    return total / count.to(total.dtype).clamp_min(1)


def _dense(
    per_token_fn: Callable[[Tensor, Tensor], Tensor],
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None,
    temperature: float,
    scale_by_t2: bool,
    reduction: str,
    num_tokens: int | Tensor | None,
) -> Tensor:
    """Check, soften both sides, apply the per-token divergence, scale, reduce."""
    _check_options(temperature, reduction, num_tokens)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "differ in shape"
        )
    if student_logits.ndim < 2:
        raise ValueError(
            f"logits must be (..., V) with at least one position dim, got {tuple(student_logits.shape)}"
        )
    _check_mask(mask, student_logits.shape[:-1], "student_logits", student_logits.shape)
    dtype = compute_dtype(student_logits, teacher_logits)
    log_p_s = _log_softmax_rows(student_logits, mask, temperature, dtype)  # (..., V)
    log_p_t = _log_softmax_rows(teacher_logits, mask, temperature, dtype)  # (..., V)
    per_token = per_token_fn(log_p_s, log_p_t)  # (...)
    if scale_by_t2:
        per_token = per_token * temperature**2
    return _reduce_tokens(per_token, mask, reduction, num_tokens)


# --- public API ---------------------------------------------------------------------------------------


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """Forward KL, "mean-seeking" (what Hinton KD uses): per token

        KL(p_t || p_s) = sum_v p_t,v (log p_t,v - log p_s,v)

    student_logits, teacher_logits: (..., V), same shape; mask: (...) bool, True = counts. teacher_logits is
    not detached (pass a no_grad tensor unless gradients should reach the teacher).
    Reduction units: the divergence is summed over the vocabulary per token, then reduced over unmasked
    tokens as `reduction` says (default: mean over unmasked tokens). Times T^2 if scale_by_t2.
    """
    return _dense(
        _per_token_forward_kl,
        student_logits,
        teacher_logits,
        mask,
        temperature,
        scale_by_t2,
        reduction,
        num_tokens,
    )


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """Reverse KL, "mode-seeking" (MiniLLM, Gu et al. 2024): per token

        KL(p_s || p_t) = sum_v p_s,v (log p_s,v - log p_t,v)

    Shapes and reduction units as `forward_kl`.
    """
    return _dense(
        _per_token_reverse_kl,
        student_logits,
        teacher_logits,
        mask,
        temperature,
        scale_by_t2,
        reduction,
        num_tokens,
    )


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 0.5,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al., ICLR 2024, arXiv:2306.13649): per token

        M = beta * p_t + (1 - beta) * p_s
        JSD_beta = beta * KL(p_t || M) + (1 - beta) * KL(p_s || M)

    beta in [0, 1]; beta = 0.5 is the symmetric JSD. The endpoints follow the TRL/GKD convention:
    beta = 0 returns the forward KL(p_t || p_s) and beta = 1 the reverse KL(p_s || p_t). JSD_beta itself goes
    to 0 at both ends, so these endpoints are a deliberate discontinuity: JSD_beta / beta -> KL(p_t || p_s) as
    beta -> 0 and JSD_beta / (1 - beta) -> KL(p_s || p_t) as beta -> 1.

    Shapes and reduction units as `forward_kl`.
    """
    _check_unit_interval("beta", beta, closed_right=True)
    return _dense(
        lambda ls, lt: _per_token_generalized_jsd(ls, lt, beta),
        student_logits,
        teacher_logits,
        mask,
        temperature,
        scale_by_t2,
        reduction,
        num_tokens,
    )


def skew_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    alpha: float = 0.1,
    reverse: bool = False,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """Skew KL of DistiLLM (Ko et al., ICML 2024, arXiv:2402.03898): per token

        forward (reverse=False): KL(p_t || alpha * p_t + (1 - alpha) * p_s)
        reverse (reverse=True):  KL(p_s || alpha * p_s + (1 - alpha) * p_t)

    alpha in [0, 1) (paper default 0.1); alpha = 0 is the plain forward / reverse KL. The skew bounds the
    divergence by log(1 / alpha) and keeps it finite where the second distribution has no mass.
    Shapes and reduction units as `forward_kl`.
    """
    _check_unit_interval("alpha", alpha, closed_right=False)
    return _dense(
        lambda ls, lt: _per_token_skew_kl(ls, lt, alpha, reverse),
        student_logits,
        teacher_logits,
        mask,
        temperature,
        scale_by_t2,
        reduction,
        num_tokens,
    )


def tvd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """Total variation distance: per token

        TVD(p_t, p_s) = 0.5 * sum_v |p_t,v - p_s,v|        in [0, 1]

    Shapes and reduction units as `forward_kl`.
    """
    return _dense(
        _per_token_tvd, student_logits, teacher_logits, mask, temperature, scale_by_t2, reduction, num_tokens
    )


TOKEN_DIVERGENCES: Registry[Callable[..., Tensor]] = Registry("divergence")
TOKEN_DIVERGENCES.add("forward_kl", forward_kl, "KL(teacher || student) per token, mean-seeking")
TOKEN_DIVERGENCES.add("reverse_kl", reverse_kl, "KL(student || teacher) per token, mode-seeking")
TOKEN_DIVERGENCES.add(
    "generalized_jsd", generalized_jsd, "GKD generalized JSD (beta=0.5); beta=0 forward KL, beta=1 reverse KL"
)
TOKEN_DIVERGENCES.add("skew_kl", skew_kl, "DistiLLM skew KL (alpha=0.1, reverse=False)")
TOKEN_DIVERGENCES.add("tvd", tvd, "total variation distance 0.5 * sum |p_t - p_s| per token")


# --- closed-form gradients (for the chunked loss) -------------------------------------------------------
# The chunked loss (losses/chunked.py) forms each chunk's gradient without autograd through the vocabulary.
# For that every divergence here also gives, per vocabulary entry,
#     w_v = dDiv / d(log p_s,v)        (a = log p_s, b = log p_t; the p_s,v taken as free variables)
# and the caller applies the softmax chain rule: dDiv / dz_v = (w_v - p_s,v * sum_u w_u) / T. A term
# c * p_s,v drops out there (sum_u p_s,u = 1), so the forms below leave it out:
#     forward KL   sum p_t (b - a)                        w = -p_t
#     reverse KL   sum p_s (a - b)                        w = p_s (a - b)
#     JSD_beta     beta KL(p_t||M) + (1-beta) KL(p_s||M)  w = (1 - beta) p_s (a - log M),  M = beta p_t + (1-beta) p_s
#     skew fwd     KL(p_t || M),  M = alpha p_t + (1-alpha) p_s      w = -(1 - alpha) p_t p_s / M
#     skew rev     KL(p_s || M),  M = alpha p_s + (1-alpha) p_t      w = p_s (a - log M) - alpha p_s^2 / M
#     TVD          0.5 sum |p_s - p_t|                    w = 0.5 p_s sign(p_s - p_t)
# Each w is p_s times a factor, so entries with p_s = 0 are set to exactly 0 (never 0 * inf = NaN). The
# tests compare the chunked gradients built from these with autograd through the functions above.

# (log_p_s, log_p_t, with_weight) -> (the per-token divergence (c,), w (c, V) or None)
ClosedForm = Callable[[Tensor, Tensor, bool], tuple[Tensor, Tensor | None]]


# The closed forms run without autograd on (chunk, V) tensors, so they are written for memory: at most two
# (chunk, V) temporaries alive at a time besides their inputs and their result.


def _kl_lean(log_p: Tensor, log_q: Tensor) -> Tensor:
    """`_kl` without a graph: (..., V) -> (...); 0 * log(0 / q) = 0, an infinite term where p > 0 stays inf."""
    terms = (log_p - log_q).mul_(log_p.exp())
    return terms.nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf).sum(dim=-1)


def _log_mix_lean(log_p: Tensor, log_q: Tensor, w: float) -> Tensor:
    """`_log_mix` without a graph, a new tensor: log(w p + (1 - w) q) = hi + log1p(exp(-|x - y|)) with
    x = log p + log w, y = log q + log(1 - w), hi = max(x, y); -inf where both are -inf."""
    if w == 0.0:
        return log_q.clone()
    if w == 1.0:
        return log_p.clone()
    x = log_p + math.log(w)
    y = log_q + math.log1p(-w)
    hi = torch.maximum(x, y)
    gap = x.sub_(y).abs_().neg_().exp_().log1p_()  # NaN where both are -inf: hi stays -inf there
    del y
    return hi.add_(gap.nan_to_num_(nan=0.0))


def _student_mass_only(log_p_s: Tensor, w: Tensor) -> Tensor:
    """w with exactly 0 where p_s = 0 (in place)."""
    return w.masked_fill_(log_p_s == -math.inf, 0.0)


def _forward_kl_form(log_p_s: Tensor, log_p_t: Tensor, with_weight: bool) -> tuple[Tensor, Tensor | None]:
    return _kl_lean(log_p_t, log_p_s), (log_p_t.exp().neg_() if with_weight else None)


def _reverse_kl_form(log_p_s: Tensor, log_p_t: Tensor, with_weight: bool) -> tuple[Tensor, Tensor | None]:
    value = _kl_lean(log_p_s, log_p_t)
    if not with_weight:
        return value, None
    return value, _student_mass_only(log_p_s, (log_p_s - log_p_t).mul_(log_p_s.exp()))


def _jsd_form(beta: float) -> ClosedForm:
    if beta == 0.0:
        return _forward_kl_form
    if beta == 1.0:
        return _reverse_kl_form

    def form(log_p_s: Tensor, log_p_t: Tensor, with_weight: bool) -> tuple[Tensor, Tensor | None]:
        log_m = _log_mix_lean(log_p_t, log_p_s, beta)  # shared by the value and w
        value = beta * _kl_lean(log_p_t, log_m) + (1.0 - beta) * _kl_lean(log_p_s, log_m)
        if not with_weight:
            return value, None
        w = log_m.sub_(log_p_s).mul_(log_p_s.exp()).mul_(beta - 1.0)  # (1 - beta) p_s (a - log M), in place
        return value, _student_mass_only(log_p_s, w)

    return form


def _skew_kl_form(alpha: float, reverse: bool) -> ClosedForm:
    def form(log_p_s: Tensor, log_p_t: Tensor, with_weight: bool) -> tuple[Tensor, Tensor | None]:
        if reverse:
            log_m = _log_mix_lean(log_p_s, log_p_t, alpha)
            value = _kl_lean(log_p_s, log_m)
            if not with_weight:
                return value, None
            ratio = (2 * log_p_s - log_m).exp_().mul_(alpha)  # alpha p_s^2 / M
            w = (
                log_m.neg_().add_(log_p_s).mul_(log_p_s.exp()).sub_(ratio)
            )  # p_s (a - log M) - alpha p_s^2 / M
        else:
            log_m = _log_mix_lean(log_p_t, log_p_s, alpha)
            value = _kl_lean(log_p_t, log_m)
            if not with_weight:
                return value, None
            w = log_m.neg_().add_(log_p_t).add_(log_p_s).exp_().mul_(alpha - 1.0)  # -(1-alpha) p_t p_s / M
        return value, _student_mass_only(log_p_s, w)

    return form


def _tvd_form(log_p_s: Tensor, log_p_t: Tensor, with_weight: bool) -> tuple[Tensor, Tensor | None]:
    p_s = log_p_s.exp()
    diff = log_p_t.exp().sub_(p_s)  # p_t - p_s
    value = 0.5 * diff.abs().sum(dim=-1)
    if not with_weight:
        return value, None
    return value, diff.sign_().mul_(p_s).mul_(-0.5)  # 0.5 p_s sign(p_s - p_t)


def _generalized_jsd_closed_form(beta: float = 0.5) -> ClosedForm:
    _check_unit_interval("beta", beta, closed_right=True)
    return _jsd_form(beta)


def _skew_kl_closed_form(alpha: float = 0.1, reverse: bool = False) -> ClosedForm:
    _check_unit_interval("alpha", alpha, closed_right=False)
    return _skew_kl_form(alpha, reverse)


# divergence function -> factory(**its own parameters) -> its closed form; the factory checks the parameters
DENSE_CLOSED_FORMS: dict[Callable[..., Tensor], Callable[..., ClosedForm]] = {
    forward_kl: lambda: _forward_kl_form,
    reverse_kl: lambda: _reverse_kl_form,
    generalized_jsd: _generalized_jsd_closed_form,
    skew_kl: _skew_kl_closed_form,
    tvd: lambda: _tvd_form,
}
