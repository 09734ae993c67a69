"""Sparse top-k token divergences: equal to the dense ones at k = V, and to a numpy bucket reference below."""

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
    SPARSE_TOKEN_DIVERGENCES,
    TOKEN_DIVERGENCES,
    sparse_forward_kl,
    sparse_generalized_jsd,
    sparse_reverse_kl,
    sparse_skew_kl,
    sparse_tvd,
)
from kdistill.losses.token import ALPHA_BETA

SETTINGS = settings(max_examples=15, deadline=None)

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
SPARSE: dict[str, Callable[..., torch.Tensor]] = {
    "forward_kl": sparse_forward_kl,
    "reverse_kl": sparse_reverse_kl,
    "generalized_jsd": sparse_generalized_jsd,
    "skew_kl": sparse_skew_kl,
    "tvd": sparse_tvd,
    "alpha_beta": ALPHA_BETA.sparse,  # its own tests: test_alpha_beta.py
}


# --- independent reference: numpy buckets, probabilities and plain sums -------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return sum(float(pi * math.log(pi / qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)


def divergence_reference(name: str, p_t: np.ndarray, p_s: np.ndarray, **params: Any) -> float:
    if name == "forward_kl" or (name == "generalized_jsd" and params["beta"] == 0.0):
        return _kl(p_t, p_s)
    if name == "reverse_kl" or (name == "generalized_jsd" and params["beta"] == 1.0):
        return _kl(p_s, p_t)
    if name == "generalized_jsd":
        beta = params["beta"]
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


def bucket_reference(
    name: str,
    s: torch.Tensor,
    ids: torch.Tensor,
    logprobs: torch.Tensor,
    temperature: float = 1.0,
    **params: Any,
) -> np.ndarray:
    """Per-token divergence on (top-k ids, tail), one row at a time; id -1 entries are skipped."""
    v = s.shape[-1]
    s_rows = s.detach().double().reshape(-1, v).numpy()
    id_rows = ids.reshape(-1, ids.shape[-1]).numpy()
    lp_rows = logprobs.detach().double().reshape(-1, ids.shape[-1]).numpy()
    out = []
    for z, row_ids, row_lp in zip(s_rows, id_rows, lp_rows, strict=True):
        keep = row_ids >= 0
        row_ids, row_lp = row_ids[keep], row_lp[keep]
        p = _softmax(z / temperature)
        others = [i for i in range(v) if i not in set(row_ids.tolist())]
        p_s = np.append(p[row_ids], p[others].sum())
        q = np.exp(row_lp)
        tail = 0.0 if len(row_ids) == v else max(1 - math.fsum(q), 0.0)  # ids covering V: no tail at all
        weights = np.append(q ** (1 / temperature), tail ** (1 / temperature))
        p_t = weights / weights.sum()
        out.append(divergence_reference(name, p_t, p_s, **params))
    return np.array(out).reshape(s.shape[:-1])


def _inputs(
    seed: int, shape: tuple[int, ...], k: int, scale: float = 3.0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student logits (..., V), teacher logits (..., V), and the teacher's top-k as (ids, log-probs) in a
    shuffled order (the top-k need not be sorted)."""
    g = torch.Generator().manual_seed(seed)
    s = scale * torch.randn(*shape, generator=g, dtype=dtype)
    t = scale * torch.randn(*shape, generator=g, dtype=dtype)
    log_p = torch.log_softmax(t, dim=-1)
    top_ids = log_p.topk(k, dim=-1).indices
    order = torch.rand(top_ids.shape, generator=g).argsort(dim=-1)
    ids = top_ids.gather(-1, order)
    return s, t, ids, log_p.gather(-1, ids)


# --- registry and hand example ----------------------------------------------------------------------


def test_registry_maps_the_dense_names() -> None:
    assert SPARSE_TOKEN_DIVERGENCES.names() == TOKEN_DIVERGENCES.names() == sorted(SPARSE)
    for name, fn in SPARSE.items():
        assert SPARSE_TOKEN_DIVERGENCES.get(name) is fn


# teacher top-1 = token 0 with p = 3/4 (tail 1/4); student p = (1/2, 1/4, 1/4), so buckets (1/2, 1/2)
HAND = [
    ("forward_kl", {}, 0.75 * math.log(1.5) + 0.25 * math.log(0.5)),
    ("reverse_kl", {}, 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)),
    (
        "generalized_jsd",
        {"beta": 0.5},
        0.5 * (0.75 * math.log(0.75 / 0.625) + 0.25 * math.log(0.25 / 0.375))
        + 0.5 * (0.5 * math.log(0.5 / 0.625) + 0.5 * math.log(0.5 / 0.375)),
    ),
    ("skew_kl", {"alpha": 0.1}, 0.75 * math.log(0.75 / 0.525) + 0.25 * math.log(0.25 / 0.475)),
    ("skew_kl", {"alpha": 0.1, "reverse": True}, 0.5 * math.log(0.5 / 0.725) + 0.5 * math.log(0.5 / 0.275)),
    ("tvd", {}, 0.25),
]


@pytest.mark.parametrize(("name", "params", "expected"), HAND, ids=[f"{n}{p}" for n, p, _ in HAND])
def test_hand_computed_top1_example(name: str, params: dict[str, Any], expected: float) -> None:
    student = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)]], dtype=torch.float64)
    ids = torch.tensor([[0]])
    logprobs = torch.tensor([[math.log(0.75)]], dtype=torch.float64)
    assert SPARSE[name](student, ids, logprobs, **params).item() == pytest.approx(expected, rel=1e-12)


# --- k = V: equal to the dense divergences --------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_full_k_equals_dense_values_and_grads(name: str, params: dict[str, Any], temperature: float) -> None:
    s, t, ids, logprobs = _inputs(1, (2, 3, 6), k=6)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    s_sparse = s.clone().requires_grad_()
    s_dense = s.clone().requires_grad_()
    sparse = SPARSE[name](s_sparse, ids, logprobs, mask=mask, temperature=temperature, **params)
    dense = TOKEN_DIVERGENCES.get(name)(s_dense, t, mask=mask, temperature=temperature, **params)
    torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-13)
    sparse.backward()
    dense.backward()
    assert s_sparse.grad is not None and s_dense.grad is not None
    torch.testing.assert_close(s_sparse.grad, s_dense.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_full_k_equals_dense_in_float32(name: str, params: dict[str, Any]) -> None:
    # float32 top-k mass is 1 only up to rounding: the tail must still be recognised as empty (else a forward
    # KL against the student's exactly-empty tail would be +inf)
    s, t, ids, logprobs = _inputs(2, (4, 50), k=50, scale=5.0, dtype=torch.float32)
    s.requires_grad_()
    sparse = SPARSE[name](s, ids, logprobs, temperature=2.0, reduction="none", **params)
    dense = TOKEN_DIVERGENCES.get(name)(s, t, temperature=2.0, reduction="none", **params)
    assert sparse.dtype == torch.float32
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-6)
    sparse.sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


# --- truncated k: the bucket reference and properties ------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 4),
    v=st.integers(2, 8),
    data=st.data(),
    scale=st.floats(0.1, 15.0),
    temperature=st.floats(0.5, 4.0),
)
def test_properties(
    name: str,
    params: dict[str, Any],
    seed: int,
    n: int,
    v: int,
    data: st.DataObject,
    scale: float,
    temperature: float,
) -> None:
    k = data.draw(st.integers(1, v), label="k")
    fn = SPARSE[name]
    s, t, ids, logprobs = _inputs(seed, (n, v), k, scale)
    per_token = fn(s, ids, logprobs, temperature=temperature, reduction="none", **params)
    assert torch.isfinite(per_token).all()
    assert (per_token >= -1e-6).all()
    if name == "tvd":
        assert (per_token <= 1 + 1e-12).all()
    # the teacher tail 1 - sum(exp(logprobs)) carries an absolute rounding error of ~1e-16 (for any
    # implementation), so the value checks need a tail well above it (here > 1e-6), or none at all (k = V)
    tail = 1 - torch.softmax(t, dim=-1).gather(-1, ids).sum(dim=-1)
    if k == v or bool((tail > 1e-6).all()):
        np.testing.assert_allclose(
            per_token.numpy(),
            bucket_reference(name, s, ids, logprobs, temperature, **params),
            rtol=1e-7,
            atol=1e-9,
        )
        # merging categories never increases an f-divergence: at T = 1 (exact buckets) sparse <= dense
        dense = TOKEN_DIVERGENCES.get(name)(s, t, reduction="none", **params)
        assert (fn(s, ids, logprobs, reduction="none", **params) <= dense + 1e-8).all()
    # zero when the student is the teacher (T = 1: both sides bucketed exactly)
    assert fn(t, ids, logprobs, **params).abs().item() <= 1e-12
    # a per-token constant added to the student's logits changes nothing
    g = torch.Generator().manual_seed(seed + 1)
    shift = 50 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    shifted = fn(s + shift, ids, logprobs, temperature=temperature, reduction="none", **params)
    torch.testing.assert_close(shifted, per_token, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(
        fn(s, ids, logprobs, temperature=temperature, scale_by_t2=True, **params),
        temperature**2 * fn(s, ids, logprobs, temperature=temperature, **params),
    )


def test_jsd_endpoints_and_limits_on_buckets() -> None:
    s, _, ids, logprobs = _inputs(3, (4, 7), k=3, scale=1.5)
    kl_ts = bucket_reference("forward_kl", s, ids, logprobs, 1.5)
    kl_st = bucket_reference("reverse_kl", s, ids, logprobs, 1.5)
    at_0 = sparse_generalized_jsd(s, ids, logprobs, beta=0.0, temperature=1.5, reduction="none")
    at_1 = sparse_generalized_jsd(s, ids, logprobs, beta=1.0, temperature=1.5, reduction="none")
    np.testing.assert_allclose(at_0.numpy(), kl_ts, rtol=1e-10)
    np.testing.assert_allclose(at_1.numpy(), kl_st, rtol=1e-10)
    for eps in (1e-3, 1e-5):
        near_0 = sparse_generalized_jsd(s, ids, logprobs, beta=eps, temperature=1.5, reduction="none") / eps
        near_1 = (
            sparse_generalized_jsd(s, ids, logprobs, beta=1 - eps, temperature=1.5, reduction="none") / eps
        )
        np.testing.assert_allclose(near_0.numpy(), kl_ts, rtol=20 * eps, atol=1e-9)
        np.testing.assert_allclose(near_1.numpy(), kl_st, rtol=20 * eps, atol=1e-9)


def test_skew_kl_alpha_zero_is_plain_kl() -> None:
    s, _, ids, logprobs = _inputs(4, (3, 6), k=2)
    torch.testing.assert_close(
        sparse_skew_kl(s, ids, logprobs, alpha=0.0, reduction="none"),
        sparse_forward_kl(s, ids, logprobs, reduction="none"),
        rtol=1e-12,
        atol=0.0,
    )
    torch.testing.assert_close(
        sparse_skew_kl(s, ids, logprobs, alpha=0.0, reverse=True, reduction="none"),
        sparse_reverse_kl(s, ids, logprobs, reduction="none"),
        rtol=1e-12,
        atol=0.0,
    )


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_padding_entries_are_absent(name: str, params: dict[str, Any]) -> None:
    s, _, ids, logprobs = _inputs(5, (3, 6), k=4)
    fn = SPARSE[name]
    # row 0 keeps entries 0 and 2, row 1 keeps none (teacher = all tail), row 2 keeps all four
    keep = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    padded_ids = ids.masked_fill(~keep, -1)
    padded_lp = logprobs.masked_fill(~keep, -math.inf)
    got = fn(s, padded_ids, padded_lp, temperature=1.3, reduction="none", **params)
    expected = [
        fn(s[0:1], ids[0:1, [0, 2]], logprobs[0:1, [0, 2]], temperature=1.3, reduction="none", **params),
        np.zeros(1),  # both sides are all tail: equal distributions
        fn(s[2:3], ids[2:3], logprobs[2:3], temperature=1.3, reduction="none", **params),
    ]
    np.testing.assert_allclose(
        got.numpy(), np.concatenate([np.asarray(e) for e in expected]), rtol=1e-12, atol=1e-15
    )
    # the value stored with a padding id does not matter
    garbage_lp = logprobs.masked_fill(~keep, float("nan"))
    torch.testing.assert_close(
        fn(s, padded_ids, garbage_lp, temperature=1.3, reduction="none", **params), got
    )


def test_student_tail_keeps_precision_when_top_k_mass_is_near_one() -> None:
    # the student's tail is ~1e-12: 1 - sum(top-k) in float32 would round it to 0 (forward KL = inf) or to
    # ~1e-7; a logsumexp over the non-top-k log-probs keeps it
    s = torch.tensor([[30.0, 2.0, 0.0, 0.0, 0.0]])
    ids = torch.tensor([[0, 1]])
    logprobs = torch.tensor([[math.log(0.25), math.log(0.25)]])
    got = sparse_forward_kl(s, ids, logprobs)
    expected = bucket_reference("forward_kl", s.double(), ids, logprobs.double())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(float(expected[0]), rel=1e-5)


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_confident_teacher_with_rounded_away_tail_stays_finite(name: str, params: dict[str, Any]) -> None:
    # float32 top-k mass rounds to exactly 1 though only 2 of 5 tokens are listed: the tail is floored, not 0
    s = torch.tensor([[0.0, 0.0, 1.0, 2.0, 3.0]], requires_grad=True)
    ids = torch.tensor([[0, 1]])
    logprobs = torch.tensor([[0.0, -40.0]])
    loss = SPARSE[name](s, ids, logprobs, **params)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() >= 0
    assert s.grad is not None and torch.isfinite(s.grad).all()


# --- masking and reductions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_masked_positions_never_count_even_with_garbage(name: str, params: dict[str, Any]) -> None:
    fn = SPARSE[name]
    s, _, ids, logprobs = _inputs(6, (2, 4, 6), k=3)
    mask = torch.tensor([[True, False, True, True], [False, True, False, True]])
    clean = fn(s, ids, logprobs, mask=mask, **params)
    expected = bucket_reference(name, s, ids, logprobs, **params)[mask.numpy()].mean()
    assert clean.item() == pytest.approx(expected, rel=1e-10)

    garbage_s, garbage_ids, garbage_lp = s.clone(), ids.clone(), logprobs.clone()
    garbage_s[~mask] = float("nan")
    garbage_ids[~mask] = 10**6  # out of the vocabulary: must not even be gathered
    garbage_lp[~mask] = float("inf")
    garbage_s.requires_grad_()
    garbage_lp.requires_grad_()
    loss = fn(garbage_s, garbage_ids, garbage_lp, mask=mask, **params)
    assert loss.item() == pytest.approx(clean.item(), rel=1e-12)
    loss.backward()
    for grad in (garbage_s.grad, garbage_lp.grad):
        assert grad is not None and torch.isfinite(grad).all()
        assert (grad[~mask] == 0).all()
    per_token = fn(garbage_s, garbage_ids, garbage_lp, mask=mask, reduction="none", **params)
    assert per_token.shape == mask.shape and (per_token[~mask] == 0).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_all_masked_gives_zero_with_zero_grads(name: str, params: dict[str, Any], reduction: str) -> None:
    s, _, ids, logprobs = _inputs(7, (2, 3, 5), k=2)
    s.requires_grad_()
    logprobs.requires_grad_()
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss = SPARSE[name](s, ids, logprobs, mask=mask, reduction=reduction, **params)
    assert (loss == 0).all()
    loss.sum().backward()
    assert s.grad is not None and torch.equal(s.grad, torch.zeros_like(s))
    assert logprobs.grad is not None and torch.equal(logprobs.grad, torch.zeros_like(logprobs))


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_mean_sum_and_num_tokens(name: str, params: dict[str, Any]) -> None:
    fn = SPARSE[name]
    s, _, ids, logprobs = _inputs(8, (4, 5, 6), k=3)
    g = torch.Generator().manual_seed(8)
    mask = torch.rand(4, 5, generator=g) < 0.6
    total = fn(s, ids, logprobs, mask=mask, reduction="sum", **params)
    torch.testing.assert_close(fn(s, ids, logprobs, mask=mask, **params), total / mask.sum())
    torch.testing.assert_close(fn(s, ids, logprobs, mask=mask, reduction="none", **params).sum(), total)

    # gradient accumulation: micro-batches normalised by the window's count sum to the full-batch gradient
    full_s = s.clone().requires_grad_()
    fn(full_s, ids, logprobs, mask=mask, temperature=2.0, **params).backward()
    acc_s = s.clone().requires_grad_()
    count = int(mask.sum())
    losses = [
        fn(acc_s[r], ids[r], logprobs[r], mask=mask[r], temperature=2.0, num_tokens=count, **params)
        for r in (slice(0, 3), slice(3, 4))
    ]
    sum(losses).backward()
    assert full_s.grad is not None and acc_s.grad is not None
    torch.testing.assert_close(acc_s.grad, full_s.grad, rtol=1e-10, atol=1e-14)


# --- numerics and errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_gradcheck(name: str, params: dict[str, Any]) -> None:
    s, _, ids, logprobs = _inputs(9, (2, 2, 5), k=3, scale=1.0)
    ids[0, 1, 2] = -1  # one padded entry
    logprobs[0, 1, 2] = -math.inf
    mask = torch.tensor([[True, True], [False, True]])
    fn = SPARSE[name]
    assert torch.autograd.gradcheck(
        lambda a, b: fn(a, ids, b, mask=mask, temperature=1.5, **params),
        (s.requires_grad_(), logprobs.requires_grad_()),
    )


def test_argument_errors() -> None:
    s = torch.zeros(2, 3, 5)
    ids = torch.zeros(2, 3, 2, dtype=torch.long)
    lp = torch.zeros(2, 3, 2)
    with pytest.raises(ValueError, match=r"teacher_ids \(2, 3, 2\).*teacher_logprobs \(2, 3, 3\)"):
        sparse_forward_kl(s, ids, torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"teacher_ids \(2, 4, 2\).*student_logits \(2, 3, 5\)"):
        sparse_reverse_kl(s, torch.zeros(2, 4, 2, dtype=torch.long), torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match=r"top-k \(6\).*vocabulary \(5\)"):
        sparse_tvd(s, torch.zeros(2, 3, 6, dtype=torch.long), torch.zeros(2, 3, 6))
    with pytest.raises(ValueError, match="teacher_ids must be an integer"):
        sparse_tvd(s, ids.float(), lp)
    with pytest.raises(ValueError, match=r"mask \(3, 2\)"):
        sparse_tvd(s, ids, lp, mask=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="beta"):
        sparse_generalized_jsd(s, ids, lp, beta=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        sparse_skew_kl(s, ids, lp, alpha=1.0)
    with pytest.raises(ValueError, match="temperature"):
        sparse_forward_kl(s, ids, lp, temperature=-1.0)
