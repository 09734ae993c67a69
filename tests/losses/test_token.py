"""Dense token divergences against numpy references written from the formulas, one token at a time."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.losses import (
    TOKEN_DIVERGENCES,
    alpha_beta,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    tvd,
)

SETTINGS = settings(max_examples=15, deadline=None)

# (registry name, keyword parameters): every configuration the property tests run over
CASES: list[tuple[str, dict[str, Any]]] = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("generalized_jsd", {"beta": 0.5}),
    ("generalized_jsd", {"beta": 0.1}),
    ("generalized_jsd", {"beta": 0.0}),
    ("generalized_jsd", {"beta": 1.0}),
    ("skew_kl", {"alpha": 0.1}),
    ("skew_kl", {"alpha": 0.3, "reverse": True}),
    ("tvd", {}),
]
CASE_IDS = [f"{name}{params}" for name, params in CASES]
FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "generalized_jsd": generalized_jsd,
    "skew_kl": skew_kl,
    "tvd": tvd,
    "alpha_beta": alpha_beta,  # its own tests: test_alpha_beta.py
}


# --- independent reference: numpy probabilities and plain sums --------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return sum(float(pi * math.log(pi / qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def divergence_reference(name: str, p_t: np.ndarray, p_s: np.ndarray, **params: Any) -> float:
    """The divergence of two probability vectors, straight from its definition."""
    if name == "forward_kl":
        return _kl(p_t, p_s)
    if name == "reverse_kl":
        return _kl(p_s, p_t)
    if name == "generalized_jsd":
        beta = params["beta"]
        if beta == 0.0:
            return _kl(p_t, p_s)
        if beta == 1.0:
            return _kl(p_s, p_t)
        m = beta * p_t + (1 - beta) * p_s
        return beta * _kl(p_t, m) + (1 - beta) * _kl(p_s, m)
    if name == "skew_kl":
        alpha = params["alpha"]
        if params.get("reverse", False):
            return _kl(p_s, alpha * p_s + (1 - alpha) * p_t)
        return _kl(p_t, alpha * p_t + (1 - alpha) * p_s)
    if name == "tvd":
        return 0.5 * float(np.abs(p_t - p_s).sum())
    raise AssertionError(name)


def per_token_reference(
    name: str, s: torch.Tensor, t: torch.Tensor, temperature: float = 1.0, **params: Any
) -> np.ndarray:
    """(..., V) logits -> (...) per-token divergences, one row at a time."""
    s_rows = s.detach().double().reshape(-1, s.shape[-1]).numpy()
    t_rows = t.detach().double().reshape(-1, t.shape[-1]).numpy()
    out = [
        divergence_reference(name, _softmax(tr / temperature), _softmax(sr / temperature), **params)
        for sr, tr in zip(s_rows, t_rows, strict=True)
    ]
    return np.array(out).reshape(s.shape[:-1])


def _logits(seed: int, shape: tuple[int, ...], scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = scale * torch.randn(*shape, generator=g, dtype=torch.float64)
    t = scale * torch.randn(*shape, generator=g, dtype=torch.float64)
    return s, t


def _random_mask(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) < 0.6


# --- registry ---------------------------------------------------------------------------------------


def test_registry_maps_names_to_functions() -> None:
    assert TOKEN_DIVERGENCES.names() == sorted(FUNCTIONS)
    for name, fn in FUNCTIONS.items():
        assert TOKEN_DIVERGENCES.get(name) is fn
    with pytest.raises(KeyError, match="did you mean 'forward_kl'"):
        TOKEN_DIVERGENCES.get("forward_kll")


# --- values -----------------------------------------------------------------------------------------

# two-token distributions worked out by hand: p_t = (3/4, 1/4), p_s = (1/2, 1/2)
HAND = [
    ("forward_kl", {}, 0.75 * math.log(1.5) + 0.25 * math.log(0.5)),
    ("reverse_kl", {}, 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)),
    # M = (5/8, 3/8)
    (
        "generalized_jsd",
        {"beta": 0.5},
        0.5 * (0.75 * math.log(0.75 / 0.625) + 0.25 * math.log(0.25 / 0.375))
        + 0.5 * (0.5 * math.log(0.5 / 0.625) + 0.5 * math.log(0.5 / 0.375)),
    ),
    # forward skew, alpha = 0.1: mixture = 0.1 p_t + 0.9 p_s = (0.525, 0.475)
    ("skew_kl", {"alpha": 0.1}, 0.75 * math.log(0.75 / 0.525) + 0.25 * math.log(0.25 / 0.475)),
    # reverse skew, alpha = 0.1: mixture = 0.1 p_s + 0.9 p_t = (0.725, 0.275)
    ("skew_kl", {"alpha": 0.1, "reverse": True}, 0.5 * math.log(0.5 / 0.725) + 0.5 * math.log(0.5 / 0.275)),
    ("tvd", {}, 0.25),
]


@pytest.mark.parametrize(("name", "params", "expected"), HAND, ids=[f"{n}{p}" for n, p, _ in HAND])
def test_hand_computed_two_token_example(name: str, params: dict[str, Any], expected: float) -> None:
    teacher = torch.tensor([[math.log(0.75), math.log(0.25)]], dtype=torch.float64)
    student = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    got = FUNCTIONS[name](student, teacher, **params)
    assert got.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_reference_per_token(name: str, params: dict[str, Any], temperature: float) -> None:
    s, t = _logits(1, (2, 3, 6))
    got = FUNCTIONS[name](s, t, temperature=temperature, reduction="none", **params)
    assert got.shape == (2, 3)
    expected = per_token_reference(name, s, t, temperature, **params)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 5),
    v=st.integers(2, 8),
    scale=st.floats(0.1, 15.0),
    temperature=st.floats(0.5, 4.0),
)
def test_properties(
    name: str, params: dict[str, Any], seed: int, n: int, v: int, scale: float, temperature: float
) -> None:
    fn = FUNCTIONS[name]
    s, t = _logits(seed, (n, v), scale)
    per_token = fn(s, t, temperature=temperature, reduction="none", **params)
    assert (per_token >= -1e-6).all()
    if name == "tvd":
        assert (per_token <= 1 + 1e-12).all()
    np.testing.assert_allclose(
        per_token.numpy(), per_token_reference(name, s, t, temperature, **params), rtol=1e-8, atol=1e-11
    )
    # zero when both distributions are equal
    assert fn(s, s.clone(), temperature=temperature, **params).abs().item() <= 1e-12
    # a per-token constant added to either side's logits changes no softmax
    g = torch.Generator().manual_seed(seed + 1)
    shift_s = 50 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    shift_t = 50 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    shifted = fn(s + shift_s, t + shift_t, temperature=temperature, reduction="none", **params)
    torch.testing.assert_close(shifted, per_token, rtol=1e-7, atol=1e-9)
    # T^2 option multiplies by T^2 and nothing else
    torch.testing.assert_close(
        fn(s, t, temperature=temperature, scale_by_t2=True, **params),
        temperature**2 * fn(s, t, temperature=temperature, **params),
    )


# --- generalized JSD and skew KL: endpoints and limits -------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_jsd_endpoints_are_forward_and_reverse_kl(temperature: float) -> None:
    s, t = _logits(2, (4, 7))
    kl_ts = per_token_reference("forward_kl", s, t, temperature)  # KL(p_t || p_s)
    kl_st = per_token_reference("reverse_kl", s, t, temperature)  # KL(p_s || p_t)
    at_0 = generalized_jsd(s, t, beta=0.0, temperature=temperature, reduction="none")
    at_1 = generalized_jsd(s, t, beta=1.0, temperature=temperature, reduction="none")
    np.testing.assert_allclose(at_0.numpy(), kl_ts, rtol=1e-10)
    np.testing.assert_allclose(at_1.numpy(), kl_st, rtol=1e-10)


def test_jsd_mixture_formula_tends_to_the_endpoint_kls() -> None:
    # JSD_beta / beta -> KL(p_t || p_s) as beta -> 0 and JSD_beta / (1 - beta) -> KL(p_s || p_t) as beta -> 1,
    # with an O(eps) error: this exercises the mixture branch, not the endpoint special cases
    s, t = _logits(3, (4, 7), scale=1.5)
    kl_ts = per_token_reference("forward_kl", s, t)
    kl_st = per_token_reference("reverse_kl", s, t)
    for eps in (1e-3, 1e-5):
        near_0 = generalized_jsd(s, t, beta=eps, reduction="none") / eps
        near_1 = generalized_jsd(s, t, beta=1 - eps, reduction="none") / eps
        np.testing.assert_allclose(near_0.numpy(), kl_ts, rtol=20 * eps, atol=1e-9)
        np.testing.assert_allclose(near_1.numpy(), kl_st, rtol=20 * eps, atol=1e-9)


def test_skew_kl_alpha_zero_is_plain_kl() -> None:
    s, t = _logits(4, (3, 5))
    np.testing.assert_allclose(
        skew_kl(s, t, alpha=0.0, reduction="none").numpy(),
        per_token_reference("forward_kl", s, t),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        skew_kl(s, t, alpha=0.0, reverse=True, reduction="none").numpy(),
        per_token_reference("reverse_kl", s, t),
        rtol=1e-12,
    )


def test_skew_kl_is_bounded_by_log_inverse_alpha() -> None:
    # the student puts ~no mass where the teacher does: plain KL is huge, the skewed one stays <= log(1/alpha)
    s = torch.tensor([[40.0, -40.0, -40.0]], dtype=torch.float64)
    t = torch.tensor([[-40.0, 40.0, 0.0]], dtype=torch.float64)
    assert forward_kl(s, t).item() > 50
    assert skew_kl(s, t, alpha=0.1).item() <= math.log(10) + 1e-12


# --- masking and reductions ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_masked_positions_never_count_even_with_nan_logits(name: str, params: dict[str, Any]) -> None:
    fn = FUNCTIONS[name]
    s, t = _logits(5, (2, 4, 6))
    mask = torch.tensor([[True, False, True, True], [False, True, False, True]])
    clean = fn(s, t, mask=mask, **params)
    expected = per_token_reference(name, s, t, **params)[mask.numpy()].mean()
    assert clean.item() == pytest.approx(expected, rel=1e-10)

    garbage_s, garbage_t = s.clone(), t.clone()
    garbage_s[~mask] = float("nan")
    garbage_t[~mask] = float("inf")
    garbage_t[0, 1, 2] = -float("inf")
    garbage_s.requires_grad_()
    garbage_t.requires_grad_()
    loss = fn(garbage_s, garbage_t, mask=mask, **params)
    assert loss.item() == pytest.approx(clean.item(), rel=1e-12)
    loss.backward()
    for grad in (garbage_s.grad, garbage_t.grad):
        assert grad is not None and torch.isfinite(grad).all()
        assert (grad[~mask] == 0).all()
    per_token = fn(garbage_s, garbage_t, mask=mask, reduction="none", **params)
    assert per_token.shape == mask.shape
    assert (per_token[~mask] == 0).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_all_masked_gives_zero_with_zero_grads(name: str, params: dict[str, Any], reduction: str) -> None:
    s, t = _logits(6, (2, 3, 5))
    s[0, 0, 0] = float("nan")
    s.requires_grad_()
    t.requires_grad_()
    loss = FUNCTIONS[name](s, t, mask=torch.zeros(2, 3, dtype=torch.bool), reduction=reduction, **params)
    assert (loss == 0).all()
    loss.sum().backward()
    assert s.grad is not None and torch.equal(s.grad, torch.zeros_like(s))
    assert t.grad is not None and torch.equal(t.grad, torch.zeros_like(t))


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_mean_is_sum_over_count_and_none_sums_to_sum(name: str, params: dict[str, Any]) -> None:
    fn = FUNCTIONS[name]
    s, t = _logits(7, (3, 4, 5))
    mask = _random_mask(7, (3, 4))
    total = fn(s, t, mask=mask, reduction="sum", **params)
    torch.testing.assert_close(fn(s, t, mask=mask, **params), total / mask.sum())
    torch.testing.assert_close(fn(s, t, mask=mask, reduction="none", **params).sum(), total)
    torch.testing.assert_close(fn(s, t, mask=mask, num_tokens=5, **params), total / 5)
    torch.testing.assert_close(fn(s, t, mask=mask, num_tokens=torch.tensor(5), **params), total / 5)
    # no mask: every position counts
    torch.testing.assert_close(fn(s, t, **params), fn(s, t, reduction="sum", **params) / 12)


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_num_tokens_makes_gradient_accumulation_invariant(name: str, params: dict[str, Any]) -> None:
    fn = FUNCTIONS[name]
    s, t = _logits(8, (4, 5, 6))
    mask = _random_mask(8, (4, 5))
    full_s = s.clone().requires_grad_()
    fn(full_s, t, mask=mask, temperature=2.0, **params).backward()

    # two micro-batches of unequal real-token counts, each normalised by the window's total count
    acc_s = s.clone().requires_grad_()
    total = int(mask.sum())
    losses = [
        fn(acc_s[rows], t[rows], mask=mask[rows], temperature=2.0, num_tokens=torch.tensor(total), **params)
        for rows in (slice(0, 1), slice(1, 4))
    ]
    sum(losses).backward()
    assert full_s.grad is not None and acc_s.grad is not None
    torch.testing.assert_close(acc_s.grad, full_s.grad, rtol=1e-10, atol=1e-14)


# --- numerics -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_gradcheck(name: str, params: dict[str, Any]) -> None:
    s, t = _logits(9, (2, 2, 4), scale=1.0)
    mask = torch.tensor([[True, False], [True, True]])
    fn = FUNCTIONS[name]
    assert torch.autograd.gradcheck(
        lambda a, b: fn(a, b, mask=mask, temperature=1.5, **params),
        (s.requires_grad_(), t.requires_grad_()),
    )


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_minus_inf_logits_give_finite_values_and_grads(name: str, params: dict[str, Any]) -> None:
    # a vocabulary mask: the token is impossible for both sides (0 * log 0 = 0 everywhere)
    s, t = _logits(10, (3, 5))
    s[:, 4] = -float("inf")
    t[:, 4] = -float("inf")
    s.requires_grad_()
    loss = FUNCTIONS[name](s, t, reduction="none", **params)
    expected = per_token_reference(name, s[:, :4], t[:, :4], **params)
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-10)
    loss.sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_computes_in_float32(dtype: torch.dtype) -> None:
    s, t = _logits(11, (2, 3, 8))
    out = generalized_jsd(s.to(dtype), t.to(dtype))
    assert out.dtype == torch.float32 and out.ndim == 0
    expected = generalized_jsd(s.to(dtype).double(), t.to(dtype).double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


# --- argument errors ----------------------------------------------------------------------------------


def test_shape_errors_name_the_argument_and_shapes() -> None:
    with pytest.raises(ValueError, match=r"student_logits \(2, 3, 5\).*teacher_logits \(2, 3, 4\)"):
        forward_kl(torch.zeros(2, 3, 5), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"mask \(2, 4\).*\(2, 3, 5\).*\(2, 3\)"):
        reverse_kl(torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be a bool"):
        tvd(torch.zeros(2, 5), torch.zeros(2, 5), mask=torch.ones(2))


def test_parameter_errors() -> None:
    z = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(z, z, beta=1.5)
    with pytest.raises(ValueError, match="alpha"):
        skew_kl(z, z, alpha=1.0)
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        forward_kl(z, z, reduction="batchmean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_tokens"):
        forward_kl(z, z, reduction="sum", num_tokens=3)
