"""The alpha-beta divergence (ABKD): against the paper's formula in numpy, its limits, and in all three forms
(dense, sparse, chunked) with its closed-form gradient."""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.losses import (
    DIVERGENCES,
    SPARSE_TOKEN_DIVERGENCES,
    TOKEN_DIVERGENCES,
    alpha_beta,
    chunked_distill_loss,
    forward_kl,
    reverse_kl,
)
from kdistill.losses.token import ALPHA_BETA

torch.set_num_threads(1)

# (alpha, beta): inside the family, on both KL ends, on the alpha = 0 / beta = 0 edges, and beyond 1
PARAMS = [
    (0.5, 0.5),
    (0.2, 0.7),
    (0.8, 0.3),
    (2.0, 0.5),
    (1.5, 1.5),
    (1.0, 0.0),
    (0.0, 1.0),
    (0.5, 0.0),
    (0.0, 2.0),
]
IDS = [f"a{a}-b{b}" for a, b in PARAMS]
SPARSE = ALPHA_BETA.sparse


# --- independent reference: the paper's formula (and its limits) in numpy, one token at a time -----------


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _generalized_kl(x: np.ndarray, y: np.ndarray) -> float:
    """sum x log(x / y) - x + y for non-negative measures, 0 log 0 = 0."""
    return math.fsum(
        (float(xi * math.log(xi / yi)) if xi > 0 else 0.0) - xi + yi for xi, yi in zip(x, y, strict=True)
    )


def ab_reference(p_t: np.ndarray, p_s: np.ndarray, alpha: float, beta: float) -> float:
    """D_AB(p_t || p_s), Cichocki, Cruces & Amari (2011) eq. (4), as ABKD (arXiv:2505.04560) writes it."""
    if alpha > 0 and beta > 0:
        s = alpha + beta
        terms = p_t**alpha * p_s**beta - alpha / s * p_t**s - beta / s * p_s**s
        return -math.fsum(terms) / (alpha * beta)
    if beta == 0:  # 1 / alpha^2 * generalized KL(p_t^alpha || p_s^alpha)
        return _generalized_kl(p_t**alpha, p_s**alpha) / alpha**2
    return _generalized_kl(p_s**beta, p_t**beta) / beta**2  # alpha = 0


def reference(
    s: torch.Tensor, t: torch.Tensor, alpha: float, beta: float, temperature: float = 1.0
) -> np.ndarray:
    """(..., V) logits -> (...) per-token divergences."""
    s_rows = s.detach().double().reshape(-1, s.shape[-1]).numpy()
    t_rows = t.detach().double().reshape(-1, t.shape[-1]).numpy()
    out = [
        ab_reference(_softmax(tr / temperature), _softmax(sr / temperature), alpha, beta)
        for sr, tr in zip(s_rows, t_rows, strict=True)
    ]
    return np.array(out).reshape(s.shape[:-1])


def _logits(seed: int, shape: tuple[int, ...], scale: float = 3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=dtype), scale * torch.randn(
        *shape, generator=g, dtype=dtype
    )


# --- selectable by name everywhere ---------------------------------------------------------------------------


def test_registered_under_one_name_in_every_registry() -> None:
    assert DIVERGENCES.get("alpha_beta") is ALPHA_BETA
    assert TOKEN_DIVERGENCES.get("alpha_beta") is alpha_beta is ALPHA_BETA.dense
    assert SPARSE_TOKEN_DIVERGENCES.get("alpha_beta") is ALPHA_BETA.sparse
    assert ALPHA_BETA.parameters == {"alpha": 0.5, "beta": 0.5}
    assert "arXiv:2505.04560" in alpha_beta.__doc__
    assert list(inspect.signature(alpha_beta).parameters)[:4] == [
        "student_logits",
        "teacher_logits",
        "alpha",
        "beta",
    ]


# --- values --------------------------------------------------------------------------------------------------


def test_hand_computed_two_token_example() -> None:
    # p_t = (3/4, 1/4), p_s = (1/2, 1/2); alpha = beta = 1/2 is 2 sum (sqrt p_t - sqrt p_s)^2
    teacher = torch.tensor([[math.log(0.75), math.log(0.25)]], dtype=torch.float64)
    student = torch.zeros(1, 2, dtype=torch.float64)
    expected = 2 * ((math.sqrt(0.75) - math.sqrt(0.5)) ** 2 + (math.sqrt(0.25) - math.sqrt(0.5)) ** 2)
    assert alpha_beta(student, teacher).item() == pytest.approx(expected, rel=1e-14)
    # alpha = 2, beta = 1: -(1/2) sum [p^2 q - 2/3 p^3 - 1/3 q^3]
    terms = [p * p * 0.5 - 2 / 3 * p**3 - 1 / 3 * 0.125 for p in (0.75, 0.25)]
    got = alpha_beta(student, teacher, alpha=2.0, beta=1.0)
    assert got.item() == pytest.approx(-sum(terms) / 2, rel=1e-13)


@pytest.mark.parametrize(("alpha", "beta"), PARAMS, ids=IDS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_the_paper_formula(alpha: float, beta: float, temperature: float) -> None:
    s, t = _logits(1, (2, 3, 6))
    got = alpha_beta(s, t, alpha=alpha, beta=beta, temperature=temperature, reduction="none")
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got.numpy(), reference(s, t, alpha, beta, temperature), rtol=1e-10, atol=1e-13)


# --- the family's known members and limits ---------------------------------------------------------------------


def test_ends_are_exactly_forward_and_reverse_kl() -> None:
    s, t = _logits(2, (4, 7))
    for temperature in (1.0, 3.0):
        torch.testing.assert_close(
            alpha_beta(s, t, alpha=1.0, beta=0.0, temperature=temperature, reduction="none"),
            forward_kl(s, t, temperature=temperature, reduction="none"),
            rtol=1e-12,
            atol=1e-14,
        )
        torch.testing.assert_close(
            alpha_beta(s, t, alpha=0.0, beta=1.0, temperature=temperature, reduction="none"),
            reverse_kl(s, t, temperature=temperature, reduction="none"),
            rtol=1e-12,
            atol=1e-14,
        )


def test_continuous_at_the_ends() -> None:
    # the general formula (alpha, beta > 0) tends to the KLs with an O(eps) error: no jump at the edges
    s, t = _logits(3, (4, 7), scale=1.5)
    fwd, rev = forward_kl(s, t, reduction="none"), reverse_kl(s, t, reduction="none")
    for eps in (1e-3, 1e-6):
        near_fwd = alpha_beta(s, t, alpha=1.0, beta=eps, reduction="none")
        near_rev = alpha_beta(s, t, alpha=eps, beta=1.0, reduction="none")
        torch.testing.assert_close(near_fwd, fwd, rtol=10 * eps, atol=1e-12)
        torch.testing.assert_close(near_rev, rev, rtol=10 * eps, atol=1e-12)
        # and towards the beta = 0 edge away from alpha = 1
        torch.testing.assert_close(
            alpha_beta(s, t, alpha=0.4, beta=eps, reduction="none"),
            alpha_beta(s, t, alpha=0.4, beta=0.0, reduction="none"),
            rtol=10 * eps,
            atol=1e-12,
        )


def test_alpha_plus_beta_one_is_amaris_alpha_divergence() -> None:
    s, t = _logits(4, (3, 5))
    p_t, p_s = torch.softmax(t, -1), torch.softmax(s, -1)
    for a in (0.3, 0.5, 0.8):
        amari = (1 - (p_t**a * p_s ** (1 - a)).sum(-1)) / (a * (1 - a))
        torch.testing.assert_close(
            alpha_beta(s, t, alpha=a, beta=1 - a, reduction="none"), amari, rtol=1e-11, atol=0
        )


def test_float32_keeps_its_precision_for_nearby_distributions() -> None:
    # student ~ teacher: the divergence is ~1e-5; the paper's three O(1) sums would cancel down to float32
    # rounding noise of ~1e-7 / (alpha beta) (measured: errors from 10% to 100x); the per-entry gap form
    # keeps ~1e-4 (forward KL's O(d) terms, summed, are off by ~10% here)
    g = torch.Generator().manual_seed(5)
    t = 2 * torch.randn(6, 50, generator=g)
    s = t + 2e-3 * torch.randn(6, 50, generator=g)
    for alpha, beta in [(0.5, 0.5), (0.2, 0.1), (1.0, 1e-3), (1e-3, 1.0), (1.0, 0.0)]:
        got = alpha_beta(s, t, alpha=alpha, beta=beta, reduction="none")
        assert got.dtype == torch.float32
        want = alpha_beta(s.double(), t.double(), alpha=alpha, beta=beta, reduction="none")
        assert want.max() < 1e-4
        torch.testing.assert_close(got.double(), want, rtol=5e-4, atol=0)


# --- properties --------------------------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 4),
    v=st.integers(2, 8),
    scale=st.floats(0.1, 15.0),
    temperature=st.floats(0.5, 4.0),
    params=st.sampled_from(PARAMS),
)
def test_properties(
    seed: int, n: int, v: int, scale: float, temperature: float, params: tuple[float, float]
) -> None:
    alpha, beta = params
    s, t = _logits(seed, (n, v), scale)
    kw: dict[str, Any] = {"alpha": alpha, "beta": beta, "temperature": temperature}
    per_token = alpha_beta(s, t, reduction="none", **kw)
    assert (per_token >= 0).all()
    np.testing.assert_allclose(
        per_token.numpy(), reference(s, t, alpha, beta, temperature), rtol=1e-7, atol=1e-10
    )
    assert alpha_beta(s, s.clone(), **kw).item() == 0.0
    g = torch.Generator().manual_seed(seed + 1)
    shift_s, shift_t = (50 * torch.randn(n, 1, generator=g, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(
        alpha_beta(s + shift_s, t + shift_t, reduction="none", **kw), per_token, rtol=1e-7, atol=1e-9
    )
    torch.testing.assert_close(
        alpha_beta(s, t, scale_by_t2=True, **kw), temperature**2 * alpha_beta(s, t, **kw)
    )


# --- masking, reductions, numerics ---------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "beta"), PARAMS, ids=IDS)
def test_masked_garbage_and_all_masked(alpha: float, beta: float) -> None:
    s, t = _logits(6, (2, 4, 6))
    mask = torch.tensor([[True, False, True, True], [False, True, False, True]])
    clean = alpha_beta(s, t, mask=mask, alpha=alpha, beta=beta)
    assert clean.item() == pytest.approx(reference(s, t, alpha, beta)[mask.numpy()].mean(), rel=1e-10)
    bad_s, bad_t = s.clone(), t.clone()
    bad_s[~mask], bad_t[~mask] = float("nan"), float("inf")
    bad_s.requires_grad_()
    bad_t.requires_grad_()
    loss = alpha_beta(bad_s, bad_t, mask=mask, alpha=alpha, beta=beta)
    assert loss.item() == pytest.approx(clean.item(), rel=1e-12)
    loss.backward()
    for grad in (bad_s.grad, bad_t.grad):
        assert torch.isfinite(grad).all() and (grad[~mask] == 0).all()
    s0 = s.clone().requires_grad_()
    none = alpha_beta(s0, t, mask=torch.zeros(2, 4, dtype=torch.bool), alpha=alpha, beta=beta)
    none.backward()
    assert none.item() == 0.0 and torch.equal(s0.grad, torch.zeros_like(s0))


@pytest.mark.parametrize(("alpha", "beta"), PARAMS, ids=IDS)
def test_gradient_accumulation_with_num_tokens(alpha: float, beta: float) -> None:
    s, t = _logits(8, (4, 5, 6))
    mask = torch.rand(4, 5, generator=torch.Generator().manual_seed(8)) < 0.6
    full = s.clone().requires_grad_()
    alpha_beta(full, t, mask=mask, temperature=2.0, alpha=alpha, beta=beta).backward()
    acc = s.clone().requires_grad_()
    count = torch.tensor(int(mask.sum()))
    micro = [
        alpha_beta(acc[r], t[r], mask=mask[r], temperature=2.0, num_tokens=count, alpha=alpha, beta=beta)
        for r in (slice(0, 1), slice(1, 4))
    ]
    sum(micro).backward()
    torch.testing.assert_close(acc.grad, full.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(("alpha", "beta"), PARAMS, ids=IDS)
def test_gradcheck_dense_and_sparse(alpha: float, beta: float) -> None:
    s, t = _logits(9, (2, 2, 4), scale=1.0)
    mask = torch.tensor([[True, False], [True, True]])
    assert torch.autograd.gradcheck(
        lambda a, b: alpha_beta(a, b, mask=mask, temperature=1.5, alpha=alpha, beta=beta),
        (s.clone().requires_grad_(), t.clone().requires_grad_()),
    )
    log_p = torch.log_softmax(t, -1)
    ids = log_p.topk(3, -1).indices
    lp = log_p.gather(-1, ids)
    ids[0, 1, 2], lp[0, 1, 2] = -1, -math.inf  # one padded entry
    assert torch.autograd.gradcheck(
        lambda a, b: SPARSE(a, ids, b, mask=mask, temperature=1.5, alpha=alpha, beta=beta),
        (s.clone().requires_grad_(), lp.requires_grad_()),
    )


@pytest.mark.parametrize(("alpha", "beta"), PARAMS, ids=IDS)
def test_zero_probabilities(alpha: float, beta: float) -> None:
    # a token ruled out on both sides (a vocabulary mask) contributes nothing, with finite gradients
    s, t = _logits(10, (3, 5))
    s[:, 4], t[:, 4] = -math.inf, -math.inf
    s.requires_grad_()
    both = alpha_beta(s, t, alpha=alpha, beta=beta, reduction="none")
    np.testing.assert_allclose(both.detach().numpy(), reference(s[:, :4], t[:, :4], alpha, beta), rtol=1e-10)
    both.sum().backward()
    assert torch.isfinite(s.grad).all()
    # one side without mass: a finite term p^s / (beta s) or q^s / (alpha s), infinite on the KL side
    s, t = _logits(11, (3, 5))
    t_zero = t.clone()
    t_zero[:, 0] = -math.inf
    s_zero = s.clone()
    s_zero[:, 0] = -math.inf
    for student, teacher, finite in ((s, t_zero, alpha > 0), (s_zero, t, beta > 0)):
        value = alpha_beta(student, teacher, alpha=alpha, beta=beta, reduction="none")
        if finite:
            np.testing.assert_allclose(value.numpy(), reference(student, teacher, alpha, beta), rtol=1e-10)
        else:
            assert (value == math.inf).all()


# --- sparse form ----------------------------------------------------------------------------------------------


def _top_k(t: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    log_p = torch.log_softmax(t, dim=-1)
    ids = log_p.topk(k, dim=-1).indices
    order = torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed)).argsort(dim=-1)
    ids = ids.gather(-1, order)  # any order
    return ids, log_p.gather(-1, ids)


@pytest.mark.parametrize(("alpha", "beta"), PARAMS, ids=IDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_sparse_at_full_k_equals_dense(alpha: float, beta: float, temperature: float) -> None:
    s, t = _logits(12, (2, 3, 6))
    ids, lp = _top_k(t, 6, 12)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
    kw = {"mask": mask, "temperature": temperature, "alpha": alpha, "beta": beta}
    sparse, dense = SPARSE(a, ids, lp, **kw), alpha_beta(b, t, **kw)
    torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-13)
    sparse.backward()
    dense.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("alpha", "beta"), PARAMS, ids=IDS)
def test_sparse_is_the_formula_on_top_k_and_tail(alpha: float, beta: float) -> None:
    s, t = _logits(13, (4, 7), scale=1.5)
    ids, lp = _top_k(t, 3, 13)
    ids[0, 2], lp[0, 2] = -1, -math.inf  # a padded entry: absent
    got = SPARSE(s, ids, lp, temperature=1.3, alpha=alpha, beta=beta, reduction="none")
    expected = []
    for z, row_ids, row_lp in zip(s.numpy(), ids.numpy(), lp.numpy(), strict=True):
        row_ids, row_lp = row_ids[row_ids >= 0], row_lp[row_ids >= 0]
        p = _softmax(z / 1.3)
        p_s = np.append(p[row_ids], 1 - p[row_ids].sum())
        q = np.exp(row_lp)
        weights = np.append(q ** (1 / 1.3), (1 - q.sum()) ** (1 / 1.3))  # the tail tempered as one category
        expected.append(ab_reference(weights / weights.sum(), p_s, alpha, beta))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), v=st.integers(2, 8), data=st.data(), alpha=st.floats(0.0, 1.0))
def test_sparse_is_a_lower_bound_when_an_f_divergence(
    seed: int, v: int, data: st.DataObject, alpha: float
) -> None:
    # alpha + beta = 1 is Amari's alpha-divergence, an f-divergence: merging categories cannot increase it
    s, t = _logits(seed, (3, v))
    k = data.draw(st.integers(1, v), label="k")
    ids, lp = _top_k(t, k, seed)
    tail = 1 - lp.exp().sum(-1)  # the rounding of 1 - sum ~1e-16 must not matter (as in test_token_sparse)
    if k < v and not bool((tail > 1e-6).all()):
        return
    kw = {"alpha": alpha, "beta": 1.0 - alpha, "reduction": "none"}
    assert (SPARSE(s, ids, lp, **kw) <= alpha_beta(s, t, **kw) + 1e-9).all()


def test_sparse_confident_teacher_stays_finite() -> None:
    # float32 top-k mass rounds to 1 with only 2 of 5 tokens listed: the tail is floored, not 0
    s = torch.tensor([[0.0, 0.0, 1.0, 2.0, 3.0]], requires_grad=True)
    for alpha, beta in PARAMS:
        loss = SPARSE(s, torch.tensor([[0, 1]]), torch.tensor([[0.0, -40.0]]), alpha=alpha, beta=beta)
        (g,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(loss) and loss.item() >= 0 and torch.isfinite(g).all()


# --- closed-form gradient and the chunked form ------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "beta"), PARAMS, ids=IDS)
def test_closed_form_weight_is_the_derivative_in_log_p_s(alpha: float, beta: float) -> None:
    # w = dD/dlog p_s with the p_s free, including entries without mass on one side or both
    s, t = _logits(14, (3, 6))
    log_p_s, log_p_t = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    log_p_s[:, 5], log_p_t[:, 5] = -math.inf, -math.inf
    log_p_s[0, 4] = -math.inf  # student without mass where the teacher has some
    if alpha > 0:  # else this term (reverse-KL-like against a zero) is infinite
        log_p_t[1, 3] = -math.inf
    a = log_p_s.clone().requires_grad_()
    per_token = ALPHA_BETA.bind(alpha=alpha, beta=beta)
    (want,) = torch.autograd.grad(per_token(a, log_p_t).sum(), a)
    inputs = (log_p_s.clone(), log_p_t.clone())
    value, w = ALPHA_BETA.closed_form(alpha=alpha, beta=beta)(log_p_s, log_p_t, True)
    assert torch.equal(log_p_s, inputs[0]) and torch.equal(log_p_t, inputs[1])  # the chunk's buffers, intact
    torch.testing.assert_close(value, per_token(log_p_s, log_p_t), rtol=1e-14, atol=0)
    if beta == 0:  # at p_s = 0 the closed form keeps -p_t^alpha / alpha (autograd: 0 through the -inf edge)
        want[0, 4] = -math.exp(alpha * log_p_t[0, 4].item()) / alpha
    torch.testing.assert_close(w, want, rtol=1e-10, atol=1e-13)
    assert ALPHA_BETA.closed_form(alpha=alpha, beta=beta)(log_p_s, log_p_t, False)[1] is None


def _chunk_inputs(*, sparse: bool, seed: int, lead=(2, 5), vocab=11, dtype=torch.float64) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    kw: dict[str, Any] = {
        "student_hidden": torch.randn(*lead, 4, generator=g, dtype=dtype).requires_grad_(),
        "student_head": (torch.randn(vocab, 4, generator=g, dtype=dtype) / 2).requires_grad_(),
        "student_head_bias": torch.randn(vocab, generator=g, dtype=dtype).requires_grad_(),
        "mask": torch.rand(lead, generator=g) < 0.7,
        "labels": torch.where(
            torch.rand(lead, generator=g) < 0.25, -100, torch.randint(0, vocab, lead, generator=g)
        ),
    }
    t_hidden, t_head = (
        torch.randn(*lead, 5, generator=g, dtype=dtype),
        torch.randn(vocab, 5, generator=g, dtype=dtype),
    )
    if sparse:
        ids, lp = _top_k(t_hidden @ t_head.T, 4, seed)
        kw |= {
            "teacher_ids": ids.masked_fill(torch.rand(ids.shape, generator=g) < 0.2, -1),
            "teacher_logprobs": lp,
        }
    else:
        kw |= {"teacher_hidden": t_hidden, "teacher_head": t_head}
    return kw


def _plain(
    kw: dict[str, Any], params: dict[str, float], temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = F.linear(kw["student_hidden"], kw["student_head"], kw["student_head_bias"])
    options = {"mask": kw["mask"], "temperature": temperature, "scale_by_t2": True, **params}
    if "teacher_ids" in kw:
        div = SPARSE(logits, kw["teacher_ids"], kw["teacher_logprobs"], **options)
    else:
        div = alpha_beta(logits, kw["teacher_hidden"] @ kw["teacher_head"].T, **options)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), kw["labels"].reshape(-1), reduction="sum")
    return div, nll


STUDENT = ("student_hidden", "student_head", "student_head_bias")


@pytest.mark.parametrize(("alpha", "beta"), PARAMS, ids=IDS)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
def test_chunked_equals_plain(alpha: float, beta: float, sparse: bool, fused: bool) -> None:
    kw = _chunk_inputs(sparse=sparse, seed=20)
    params = {"alpha": alpha, "beta": beta}
    weights = {"kd_weight": 0.7, "ce_weight": 0.3} if fused else {}
    out = chunked_distill_loss(
        **kw,
        divergence="alpha_beta",
        divergence_kwargs=params,
        temperature=1.7,
        scale_by_t2=True,
        chunk_size=3,
        **weights,
    )
    div, nll = _plain(kw, params, 1.7)
    torch.testing.assert_close(out.divergence, div, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.nll_sum, nll, rtol=1e-10, atol=1e-12)
    params_ = [kw[n] for n in STUDENT]
    got = torch.autograd.grad(0.7 * out.divergence + 0.3 * out.nll_sum, params_)
    want = torch.autograd.grad(0.7 * div + 0.3 * nll, params_)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 0.5), (0.2, 0.7), (1.0, 0.0), (0.0, 1.0)])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_chunked_closed_form_gradcheck(alpha: float, beta: float, temperature: float) -> None:
    kw = _chunk_inputs(sparse=False, seed=21, lead=(2, 3), vocab=7)

    def loss(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        args = dict(kw, student_hidden=h, student_head=w, student_head_bias=b)
        out = chunked_distill_loss(
            **args,
            divergence="alpha_beta",
            divergence_kwargs={"alpha": alpha, "beta": beta},
            temperature=temperature,
            chunk_size=2,
            kd_weight=0.7,
            ce_weight=0.3,
        )
        return 0.7 * out.divergence + 0.3 * out.nll_sum

    assert torch.autograd.gradcheck(loss, tuple(kw[n] for n in STUDENT))


@pytest.mark.parametrize(("alpha", "beta"), PARAMS, ids=IDS)
def test_chunked_closed_form_equals_the_autograd_path(alpha: float, beta: float) -> None:
    """The same record without its closed form takes autograd through the chunk: same value and gradients."""
    kw = _chunk_inputs(sparse=False, seed=22)
    with torch.no_grad():  # a vocabulary entry ruled out for both sides
        kw["student_head_bias"][-1] = -math.inf
    kw["teacher_hidden"] = torch.cat([kw["teacher_hidden"], torch.ones(2, 5, 1, dtype=torch.float64)], -1)
    blocked = torch.zeros(11, 1, dtype=torch.float64)
    blocked[-1] = -math.inf
    kw["teacher_head"] = torch.cat([kw["teacher_head"], blocked], -1)
    kw["labels"] = kw["labels"].clamp_max(9)
    outs = []
    for record in (ALPHA_BETA, dataclasses.replace(ALPHA_BETA, closed_form=None)):
        out = chunked_distill_loss(
            **kw,
            divergence=record,
            divergence_kwargs={"alpha": alpha, "beta": beta},
            temperature=1.3,
            chunk_size=4,
        )
        loss = out.divergence + 0.2 * out.nll_sum
        outs.append((loss.detach(), torch.autograd.grad(loss, [kw[n] for n in STUDENT])))
    (closed, closed_grads), (auto, auto_grads) = outs
    assert torch.isfinite(closed)
    torch.testing.assert_close(closed, auto, rtol=1e-12, atol=1e-14)
    for g, w in zip(closed_grads, auto_grads, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


# --- argument errors --------------------------------------------------------------------------------------------


def test_parameter_errors() -> None:
    z = torch.zeros(2, 5)
    for bad in ({"alpha": -0.1}, {"beta": -1.0}, {"alpha": 0.0, "beta": 0.0}, {"alpha": math.inf}):
        with pytest.raises(ValueError, match="alpha and beta must be >= 0"):
            alpha_beta(z, z, **bad)
    with pytest.raises(
        TypeError, match="'alpha_beta' has no parameter \\['gamma'\\]; its parameters: alpha, beta"
    ):
        alpha_beta(z, z, gamma=1.0)
    kw = _chunk_inputs(sparse=True, seed=23)
    with pytest.raises(ValueError, match="alpha and beta"):  # checked even when every token is masked
        chunked_distill_loss(
            **dict(kw, mask=torch.zeros(2, 5, dtype=torch.bool)),
            divergence="alpha_beta",
            divergence_kwargs={"alpha": -1.0},
        )
