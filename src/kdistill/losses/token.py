"""Token-level divergences for language-model distillation: each one record, with its dense form here.

Every divergence compares, at each token position, the teacher's and the student's next-token distributions

    p_t = softmax(teacher_logits / T),   p_s = softmax(student_logits / T)      over the vocabulary V

and reduces the per-token divergence over the positions that `mask` keeps. Shapes: logits are (B, S, V) or
(N, V) (any leading shape works); `mask` is bool with the leading shape ((B, S) or (N,)), True = this token
counts, None = every position counts. Positions are already aligned by the caller: nothing is shifted here.

T is the *distillation* temperature, dividing both sides' logits before the softmax; it is not the
sampling temperature used to generate the sequences. `scale_by_t2=True` multiplies the result by T^2
(Hinton et al. 2015: keeps the gradient scale independent of T); the default does not scale.

Reductions (shared by every function here and in `token_sparse`, `kdistill.losses.masking`):
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

Each divergence below is one `Divergence` record (`kdistill.losses.divergence`): its per-token function on
log-probabilities, optionally a closed-form gradient for the chunked loss, and `register(...)`. The public
function (`forward_kl`, ...) is the record's dense form; its sparse form (`token_sparse`) and its chunked form
(`chunked`) come from the same record. Adding a divergence = one more section here, and its tests.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kdistill.losses.divergence import (
    DIVERGENCES,
    TOKEN_DIVERGENCES,
    ClosedForm,
    Divergence,
    PerToken,
    register,
)
from kdistill.losses.masking import REDUCTIONS, Reduction
from kdistill.losses.numerics import safe_logsumexp

__all__ = [
    "ALPHA_BETA",
    "DIVERGENCES",
    "FORWARD_KL",
    "GENERALIZED_JSD",
    "REDUCTIONS",
    "REVERSE_KL",
    "SKEW_KL",
    "TOKEN_DIVERGENCES",
    "TVD",
    "Reduction",
    "alpha_beta",
    "forward_kl",
    "generalized_jsd",
    "reverse_kl",
    "skew_kl",
    "tvd",
]


def _check_unit_interval(name: str, value: float, *, closed_right: bool) -> None:
    ok = 0.0 <= value <= 1.0 if closed_right else 0.0 <= value < 1.0
    if not ok:
        bound = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must be in {bound}, got {value}")


# --- log-space building blocks (with autograd) -----------------------------------------------------------


def _log_mix(log_p: Tensor, log_q: Tensor, w: float) -> Tensor:
    """log(w * p + (1 - w) * q) from log-probabilities, w in [0, 1]: a logsumexp of the weighted terms."""
    if w == 0.0:
        return log_q
    if w == 1.0:
        return log_p
    return safe_logsumexp(torch.stack([log_p + math.log(w), log_q + math.log1p(-w)]), dim=0)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) over the last dim, with 0 * log(0 / q) = 0: (..., V) -> (...).

    The where() keeps p = 0 entries (including log_p = log_q = -inf, which would be NaN) out of both the
    value and the gradient.
    """
    p = log_p.exp()
    diff = torch.where(p > 0, log_p - log_q, torch.zeros((), dtype=p.dtype, device=p.device))
    return (p * diff).sum(dim=-1)


# --- closed-form gradients (for the chunked loss) -------------------------------------------------------
# The chunked loss (losses/chunked.py) forms each chunk's gradient without autograd through the vocabulary.
# For that a divergence may also give, per vocabulary entry,
#     w_v = dDiv / d(log p_s,v)        (a = log p_s, b = log p_t; the p_s,v taken as free variables)
# and the caller applies the softmax chain rule: dDiv / dz_v = (w_v - p_s,v * sum_u w_u) / T. A term
# c * p_s,v drops out there (sum_u p_s,u = 1), so the forms below leave it out:
#     forward KL   sum p_t (b - a)                        w = -p_t
#     reverse KL   sum p_s (a - b)                        w = p_s (a - b)
#     JSD_beta     beta KL(p_t||M) + (1-beta) KL(p_s||M)  w = (1 - beta) p_s (a - log M),  M = beta p_t + (1-beta) p_s
#     skew fwd     KL(p_t || M),  M = alpha p_t + (1-alpha) p_s      w = -(1 - alpha) p_t p_s / M
#     skew rev     KL(p_s || M),  M = alpha p_s + (1-alpha) p_t      w = p_s (a - log M) - alpha p_s^2 / M
#     TVD          0.5 sum |p_s - p_t|                    w = 0.5 p_s sign(p_s - p_t)
#     alpha-beta   see its section                        w = p_s^beta (p_s^alpha - p_t^alpha) / alpha
# Where w is p_s^c times a factor (c > 0: all but forward KL and alpha-beta at beta = 0), entries with p_s = 0
# are set to exactly 0 (never 0 * inf = NaN). The tests compare the chunked gradients built from these with autograd through the
# dense forms.
#
# The closed forms run without autograd on (chunk, V) tensors, so they are written for memory: at most two
# (chunk, V) temporaries alive at a time besides their inputs and their result (alpha-beta: a few more).


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


# --- forward KL -----------------------------------------------------------------------------------------


def _per_token_forward_kl(log_p_s: Tensor, log_p_t: Tensor) -> Tensor:
    return _kl(log_p_t, log_p_s)


def _forward_kl_form(log_p_s: Tensor, log_p_t: Tensor, with_weight: bool) -> tuple[Tensor, Tensor | None]:
    return _kl_lean(log_p_t, log_p_s), (log_p_t.exp().neg_() if with_weight else None)


FORWARD_KL = register(
    Divergence(
        name="forward_kl",
        summary="KL(teacher || student) per token, mean-seeking",
        doc="""Forward KL, "mean-seeking" (what Hinton KD uses): per token

            KL(p_t || p_s) = sum_v p_t,v (log p_t,v - log p_s,v)
        """,
        per_token=lambda: _per_token_forward_kl,
        closed_form=lambda: _forward_kl_form,
        in_place_forward_kl=True,
    )
)
forward_kl = FORWARD_KL.dense


# --- reverse KL -----------------------------------------------------------------------------------------


def _per_token_reverse_kl(log_p_s: Tensor, log_p_t: Tensor) -> Tensor:
    return _kl(log_p_s, log_p_t)


def _reverse_kl_form(log_p_s: Tensor, log_p_t: Tensor, with_weight: bool) -> tuple[Tensor, Tensor | None]:
    value = _kl_lean(log_p_s, log_p_t)
    if not with_weight:
        return value, None
    return value, _student_mass_only(log_p_s, (log_p_s - log_p_t).mul_(log_p_s.exp()))


REVERSE_KL = register(
    Divergence(
        name="reverse_kl",
        summary="KL(student || teacher) per token, mode-seeking",
        doc="""Reverse KL, "mode-seeking" (MiniLLM, Gu et al. 2024): per token

            KL(p_s || p_t) = sum_v p_s,v (log p_s,v - log p_t,v)
        """,
        per_token=lambda: _per_token_reverse_kl,
        closed_form=lambda: _reverse_kl_form,
    )
)
reverse_kl = REVERSE_KL.dense


# --- generalized JSD ------------------------------------------------------------------------------------


def _per_token_generalized_jsd(log_p_s: Tensor, log_p_t: Tensor, beta: float) -> Tensor:
    if beta == 0.0:
        return _kl(log_p_t, log_p_s)
    if beta == 1.0:
        return _kl(log_p_s, log_p_t)
    log_m = _log_mix(log_p_t, log_p_s, beta)  # M = beta * p_t + (1 - beta) * p_s
    return beta * _kl(log_p_t, log_m) + (1.0 - beta) * _kl(log_p_s, log_m)


def _generalized_jsd(beta: float = 0.5) -> PerToken:
    _check_unit_interval("beta", beta, closed_right=True)
    return lambda ls, lt: _per_token_generalized_jsd(ls, lt, beta)


def _generalized_jsd_form(beta: float = 0.5) -> ClosedForm:
    _check_unit_interval("beta", beta, closed_right=True)
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


GENERALIZED_JSD = register(
    Divergence(
        name="generalized_jsd",
        summary="GKD generalized JSD (beta=0.5); beta=0 forward KL, beta=1 reverse KL",
        doc="""Generalized Jensen-Shannon divergence of GKD (Agarwal et al., ICLR 2024, arXiv:2306.13649):
        per token

            M = beta * p_t + (1 - beta) * p_s
            JSD_beta = beta * KL(p_t || M) + (1 - beta) * KL(p_s || M)

        beta in [0, 1] (default 0.5, the symmetric JSD). The endpoints follow the TRL/GKD convention: beta = 0
        returns the forward KL(p_t || p_s) and beta = 1 the reverse KL(p_s || p_t). JSD_beta itself goes to 0
        at both ends, so these endpoints are a deliberate discontinuity: JSD_beta / beta -> KL(p_t || p_s) as
        beta -> 0 and JSD_beta / (1 - beta) -> KL(p_s || p_t) as beta -> 1.
        """,
        per_token=_generalized_jsd,
        closed_form=_generalized_jsd_form,
    )
)
generalized_jsd = GENERALIZED_JSD.dense


# --- skew KL --------------------------------------------------------------------------------------------


def _per_token_skew_kl(log_p_s: Tensor, log_p_t: Tensor, alpha: float, reverse: bool) -> Tensor:
    if reverse:
        return _kl(log_p_s, _log_mix(log_p_s, log_p_t, alpha))
    return _kl(log_p_t, _log_mix(log_p_t, log_p_s, alpha))


def _skew_kl(alpha: float = 0.1, reverse: bool = False) -> PerToken:
    _check_unit_interval("alpha", alpha, closed_right=False)
    return lambda ls, lt: _per_token_skew_kl(ls, lt, alpha, reverse)


def _skew_kl_form(alpha: float = 0.1, reverse: bool = False) -> ClosedForm:
    _check_unit_interval("alpha", alpha, closed_right=False)

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


SKEW_KL = register(
    Divergence(
        name="skew_kl",
        summary="DistiLLM skew KL (alpha=0.1, reverse=False)",
        doc="""Skew KL of DistiLLM (Ko et al., ICML 2024, arXiv:2402.03898): per token

            forward (reverse=False): KL(p_t || alpha * p_t + (1 - alpha) * p_s)
            reverse (reverse=True):  KL(p_s || alpha * p_s + (1 - alpha) * p_t)

        alpha in [0, 1) (paper default 0.1); alpha = 0 is the plain forward / reverse KL. The skew bounds the
        divergence by log(1 / alpha) and keeps it finite where the second distribution has no mass.
        """,
        per_token=_skew_kl,
        closed_form=_skew_kl_form,
    )
)
skew_kl = SKEW_KL.dense


# --- total variation ------------------------------------------------------------------------------------


def _per_token_tvd(log_p_s: Tensor, log_p_t: Tensor) -> Tensor:
    return 0.5 * (log_p_t.exp() - log_p_s.exp()).abs().sum(dim=-1)


def _tvd_form(log_p_s: Tensor, log_p_t: Tensor, with_weight: bool) -> tuple[Tensor, Tensor | None]:
    p_s = log_p_s.exp()
    diff = log_p_t.exp().sub_(p_s)  # p_t - p_s
    value = 0.5 * diff.abs().sum(dim=-1)
    if not with_weight:
        return value, None
    return value, diff.sign_().mul_(p_s).mul_(-0.5)  # 0.5 p_s sign(p_s - p_t)


TVD = register(
    Divergence(
        name="tvd",
        summary="total variation distance 0.5 * sum |p_t - p_s| per token",
        doc="""Total variation distance: per token

            TVD(p_t, p_s) = 0.5 * sum_v |p_t,v - p_s,v|        in [0, 1]
        """,
        per_token=lambda: _per_token_tvd,
        closed_form=lambda: _tvd_form,
    )
)
tvd = TVD.dense


# --- alpha-beta divergence ------------------------------------------------------------------------------
# With p = p_t, q = p_s and s = alpha + beta, each vocabulary entry's term is a scaled gap of the weighted
# AM-GM inequality between p^s and q^s, with the weights l_u = alpha / s and l_v = beta / s:
#     D_AB = (1 / (alpha beta)) sum_v [l_u p^s + l_v q^s - p^alpha q^beta]
#          = (1 / s^2) sum_v G(s log p_v, s log q_v),
#     G(u, v) = [l_u e^u + l_v e^v - e^(l_u u + l_v v)] / (l_u l_v)  >= 0.
# Summing the paper's three terms over the vocabulary cancels O(1) sums down to the divergence and divides
# the rounding error by alpha beta (in float32 near p_s = p_t no digit survives). Per entry instead, with
# hi, lo = max, min(u, v), x = lo - hi <= 0 and c the weight of the smaller argument,
#     G = e^hi psi_c(x),   psi_c(x) = e^(c x) E_(1-c)(x) - E_c(x),   E_k(x) = expm1(k x) / k,  E_0(x) = x:
# no exp overflows, nothing is amplified by 1 / (alpha beta), and alpha = 0 or beta = 0 (c = 0 or 1) is the
# same formula at its limit. Where exactly one side has no mass psi_c(-inf) = 1 / c (infinite for c = 0: a
# KL end against a zero); where neither has, the term is 0.
# Closed form: dD/dlog q_v = q^beta (q^alpha - p^alpha) / alpha (q^beta (log q - log p) at alpha = 0),
# formed as
#     sign(a - b) exp(beta a + alpha max(a, b)) * -expm1(-alpha |a - b|) / alpha,   a = log q, b = log p.


def _expm1_over(k: Tensor, x: Tensor) -> Tensor:
    """expm1(k x) / k elementwise, and its limit x where k = 0."""
    at_zero = k == 0
    return torch.where(at_zero, x, torch.expm1(k * x) / torch.where(at_zero, 1.0, k))


def _am_gm_gap(u: Tensor, v: Tensor, weight_u: float, weight_v: float) -> Tensor:
    """G(u, v) elementwise (see the section comment): u, v in [-inf, 0], weights >= 0 summing to 1. Its
    gradients are finite wherever its value is, also at -inf entries."""
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    hi, lo = torch.maximum(u, v), torch.minimum(u, v)
    empty = hi == -math.inf  # neither side has mass: the term is 0 (psi_c(0) = 0 below)
    hi = torch.where(empty, zero, hi)
    x = torch.where(empty, zero, lo - hi)  # <= 0; -inf where exactly one side has mass
    one_sided = x == -math.inf
    x = torch.where(one_sided, zero, x)  # finite: no inf reaches a gradient through the unused branch
    v_smaller = u >= v
    c = torch.where(v_smaller, u.new_tensor(weight_v), u.new_tensor(weight_u))  # the smaller one's weight
    c_other = torch.where(v_smaller, u.new_tensor(weight_u), u.new_tensor(weight_v))
    psi = torch.exp(c * x) * _expm1_over(c_other, x) - _expm1_over(c, x)
    return torch.exp(hi) * torch.where(one_sided, 1.0 / c, psi)


def _per_token_alpha_beta(log_p_s: Tensor, log_p_t: Tensor, alpha: float, beta: float) -> Tensor:
    s = alpha + beta
    return _am_gm_gap(s * log_p_t, s * log_p_s, alpha / s, beta / s).sum(dim=-1) / s**2


def _check_alpha_beta(alpha: float, beta: float) -> None:
    if not (alpha >= 0 and beta >= 0 and alpha + beta > 0 and math.isfinite(alpha + beta)):
        raise ValueError(f"alpha and beta must be >= 0 with alpha + beta > 0, got alpha={alpha}, beta={beta}")


def _alpha_beta(alpha: float = 0.5, beta: float = 0.5) -> PerToken:
    _check_alpha_beta(alpha, beta)
    return lambda ls, lt: _per_token_alpha_beta(ls, lt, alpha, beta)


def _am_gm_gap_lean(u: Tensor, v: Tensor, weight_u: float, weight_v: float) -> Tensor:
    """`_am_gm_gap` without a graph, for the closed form: it overwrites u (pass new tensors) and keeps four
    (..., V) buffers alive (the autograd version about a dozen)."""
    v_smaller = u >= v
    hi = torch.maximum(u, v)
    x = u.sub_(v).abs_().neg_()  # lo - hi: NaN where neither side has mass, -inf where one has
    del v
    one_sided = x == -math.inf
    x.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # psi_c(0) = 0; the one-sided entries are set below
    c = torch.full_like(x, weight_u).masked_fill_(v_smaller, weight_v)  # the smaller argument's weight
    if weight_u > 0.0 and weight_v > 0.0:
        cx = c * x
        c.fill_(weight_v).masked_fill_(v_smaller, weight_u)  # now 1 - c, the larger argument's weight
        psi = x.mul_(c).expm1_().div_(c)  # E_(1-c)(x), in x's buffer
        psi.mul_(c.copy_(cx).exp_())  # e^(c x) E_(1-c)(x)
        psi.sub_(cx.expm1_().div_(c.fill_(weight_u).masked_fill_(v_smaller, weight_v)))  # - E_c(x)
    else:  # alpha = 0 or beta = 0: c is 0 or 1 per entry
        e = torch.expm1(x)
        psi = torch.where(c == 0.0, e - x, torch.exp(x) * x - e)  # psi_0, psi_1
    inv_u = 1.0 / weight_u if weight_u > 0.0 else math.inf  # psi_c(-inf) = 1 / c
    inv_v = 1.0 / weight_v if weight_v > 0.0 else math.inf
    psi.masked_fill_(one_sided & v_smaller, inv_v).masked_fill_(one_sided & ~v_smaller, inv_u)
    return psi.mul_(hi.exp_())


def _alpha_beta_form(alpha: float = 0.5, beta: float = 0.5) -> ClosedForm:
    _check_alpha_beta(alpha, beta)
    s = alpha + beta

    def form(log_p_s: Tensor, log_p_t: Tensor, with_weight: bool) -> tuple[Tensor, Tensor | None]:
        value = _am_gm_gap_lean(s * log_p_t, s * log_p_s, alpha / s, beta / s).sum(dim=-1) / s**2
        if not with_weight:
            return value, None
        gap = log_p_s - log_p_t  # a - b; NaN where both are -inf (p_s = 0: fixed below)
        if alpha == 0.0:
            w = gap.mul_((beta * log_p_s).exp_())  # q^beta (a - b)
        else:  # sign(a - b) exp(beta a + alpha max(a, b)) * -expm1(-alpha |a - b|) / alpha
            w = torch.maximum(log_p_s, log_p_t).mul_(alpha).add_(log_p_s, alpha=beta).exp_().copysign_(gap)
            w.mul_(gap.abs_().mul_(-alpha).expm1_()).div_(-alpha)
        if beta > 0.0:
            return value, _student_mass_only(log_p_s, w)
        # beta = 0: w = (q^alpha - p^alpha) / alpha, which is -p^alpha / alpha where q = 0
        return value, torch.where(log_p_s == -math.inf, (alpha * log_p_t).exp_().div_(-alpha), w)

    return form


ALPHA_BETA = register(
    Divergence(
        name="alpha_beta",
        summary="ABKD alpha-beta divergence (alpha=0.5, beta=0.5); (1, 0) forward KL, (0, 1) reverse KL",
        doc="""Alpha-beta divergence of ABKD (Wang et al., ICML 2025, arXiv:2505.04560; the AB-divergence
        of Cichocki, Cruces & Amari, Entropy 2011): per token, with p = p_t, q = p_s,

            D_AB = -1 / (alpha beta) * sum_v [p_v^alpha q_v^beta - alpha / (alpha + beta) p_v^(alpha + beta)
                                                              - beta / (alpha + beta) q_v^(alpha + beta)]

        alpha, beta >= 0 with alpha + beta > 0 (default 0.5, 0.5), and its continuous limits where alpha or
        beta is 0: (alpha, beta) = (1, 0) is the forward KL(p_t || p_s), (0, 1) the reverse KL(p_s || p_t),
        alpha + beta = 1 Amari's alpha-divergence (1 - sum p^alpha q^(1 - alpha)) / (alpha (1 - alpha)),
        (0.5, 0.5) twice the squared L2 distance of the square roots, 2 sum (sqrt p - sqrt q)^2. ABKD tunes
        (alpha, beta) per task to place the student's probability mass between those of forward and reverse
        KL. Its official code's separate alpha = 0 / beta = 0 branches scale by 1 / beta, 1 / alpha instead of
        the limits' 1 / beta^2, 1 / alpha^2 used here (equal at 1). Negative alpha or beta are not supported:
        the divergence would be infinite wherever p or q is 0.
        """,
        per_token=_alpha_beta,
        closed_form=_alpha_beta_form,
    )
)
alpha_beta = ALPHA_BETA.dense
