"""Response losses (cross_entropy, hinton_kd, dkd) against loop references written from the papers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.losses import LOSSES, cross_entropy, dkd, hinton_kd

SETTINGS = settings(max_examples=30, deadline=None)


def _logits(seed: int, b: int, c: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = scale * torch.randn(b, c, generator=g, dtype=torch.float64)
    t = scale * torch.randn(b, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (b,), generator=g)
    return s, t, y


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return sum(float(pi * math.log(pi / qi)) for pi, qi in zip(p, q, strict=True))


def hinton_reference(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    """T^2 / B * sum_i sum_c p_ic log(p_ic / q_ic), one sample and one class at a time."""
    total = 0.0
    for i in range(s.shape[0]):
        total += _kl(_softmax(t[i] / temperature), _softmax(s[i] / temperature))
    return temperature**2 * total / s.shape[0]


def dkd_reference(
    s: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float, beta: float, temperature: float
) -> float:
    """DKD from the paper's definitions: b = (p_t, 1 - p_t), p_hat = p over non-target classes / (1 - p_t)."""
    tckd = nckd = 0.0
    for i in range(s.shape[0]):
        p_s, p_t = _softmax(s[i] / temperature), _softmax(t[i] / temperature)
        target = int(y[i])
        b_s = np.array([p_s[target], 1.0 - p_s[target]])
        b_t = np.array([p_t[target], 1.0 - p_t[target]])
        tckd += _kl(b_t, b_s)
        others = [c for c in range(s.shape[1]) if c != target]
        nckd += _kl(p_t[others] / b_t[1], p_s[others] / b_s[1])
    return temperature**2 * (alpha * tckd + beta * nckd) / s.shape[0]


# --- registry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "role", "needs_target"),
    [("cross_entropy", "label", False), ("hinton_kd", "response", False), ("dkd", "response", True)],
)
def test_registered(name: str, role: str, needs_target: bool) -> None:
    spec = LOSSES.get(name)
    assert spec.role == role
    assert spec.needs_target is needs_target
    assert spec.needs_adapter is False
    assert spec.fn is {"cross_entropy": cross_entropy, "hinton_kd": hinton_kd, "dkd": dkd}[name]


# --- cross_entropy ----------------------------------------------------------------------------------


def test_cross_entropy_matches_torch_on_labeled_subset() -> None:
    s, _, y = _logits(0, 10, 5)
    y[[1, 4, 7]] = -1
    labeled = y != -1
    expected = F.cross_entropy(s[labeled], y[labeled])
    torch.testing.assert_close(cross_entropy(s, y), expected)


def test_cross_entropy_all_unlabeled_is_zero_with_zero_grad() -> None:
    s = torch.randn(4, 3, requires_grad=True)
    loss = cross_entropy(s, torch.full((4,), -1))
    assert loss.ndim == 0
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad is not None
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_cross_entropy_flattens_leading_dims() -> None:
    s, _, y = _logits(1, 6, 4)
    y[2] = -1
    torch.testing.assert_close(cross_entropy(s.view(2, 3, 4), y.view(2, 3)), cross_entropy(s, y))


def test_cross_entropy_gradcheck() -> None:
    s, _, y = _logits(2, 4, 3)
    y[0] = -1
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, y), (s.requires_grad_(),))


# --- hinton_kd --------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_hinton_kd_matches_loop_reference(temperature: float) -> None:
    s, t, _ = _logits(3, 5, 7)
    expected = hinton_reference(s.numpy(), t.numpy(), temperature)
    assert hinton_kd(s, t, temperature).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_hinton_kd_gradcheck() -> None:
    s, t, _ = _logits(4, 3, 4)
    assert torch.autograd.gradcheck(lambda x: hinton_kd(x, t, 2.0), (s.requires_grad_(),))


def test_hinton_kd_shape_mismatch_names_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        hinton_kd(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_hinton_kd_low_precision_computes_in_float32(dtype: torch.dtype) -> None:
    s, t, _ = _logits(5, 4, 6)
    out = hinton_kd(s.to(dtype), t.to(dtype))
    assert out.dtype == torch.float32 and out.ndim == 0
    expected = hinton_kd(s.to(dtype).double(), t.to(dtype).double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 6),
    c=st.integers(2, 9),
    scale=st.floats(0.1, 20.0),
    temperature=st.floats(0.5, 8.0),
)
def test_hinton_kd_properties(seed: int, b: int, c: int, scale: float, temperature: float) -> None:
    s, t, _ = _logits(seed, b, c, scale)
    loss = hinton_kd(s, t, temperature)
    assert loss.ndim == 0
    assert loss.item() >= -1e-6
    assert hinton_kd(s, s, temperature).item() == 0.0
    # T^2 scaling: T^2 times the plain KL of the softened distributions, computed by torch.distributions
    p_t = torch.distributions.Categorical(logits=t / temperature)
    p_s = torch.distributions.Categorical(logits=s / temperature)
    kl = torch.distributions.kl_divergence(p_t, p_s).mean()
    torch.testing.assert_close(loss, temperature**2 * kl, rtol=1e-9, atol=1e-10)
    # a per-sample constant added to either side's logits changes no softmax
    g = torch.Generator().manual_seed(seed + 1)
    shift_s = 50 * torch.randn(b, 1, generator=g, dtype=torch.float64)
    shift_t = 50 * torch.randn(b, 1, generator=g, dtype=torch.float64)
    torch.testing.assert_close(hinton_kd(s + shift_s, t + shift_t, temperature), loss, rtol=1e-7, atol=1e-9)


# --- dkd --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 3.0)]
)
def test_dkd_matches_paper_reference(alpha: float, beta: float, temperature: float) -> None:
    s, t, y = _logits(6, 6, 5)
    expected = dkd_reference(s.numpy(), t.numpy(), y.numpy(), alpha, beta, temperature)
    got = dkd(s, t, y, alpha=alpha, beta=beta, temperature=temperature)
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_dkd_two_classes_has_no_nckd() -> None:
    # with C = 2 the non-target distribution is a single class: NCKD = 0, so beta cannot matter
    s, t, y = _logits(7, 5, 2)
    torch.testing.assert_close(dkd(s, t, y, beta=0.0), dkd(s, t, y, beta=100.0))


def test_dkd_gradcheck() -> None:
    s, t, y = _logits(8, 3, 4)
    assert torch.autograd.gradcheck(lambda x: dkd(x, t, y, 1.0, 8.0, 2.0), (s.requires_grad_(),))


def test_dkd_gradient_finite_with_extreme_logits() -> None:
    # the teacher puts ~all mass on the target: b_nt underflows in float32, log space must keep it finite
    s = torch.tensor([[30.0, -30.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[200.0, -200.0, 0.0], [-200.0, 200.0, 0.0]])
    loss = dkd(s, t, torch.tensor([0, 1]), temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_dkd_rejects_unlabeled_target() -> None:
    s, t, _ = _logits(9, 3, 4)
    with pytest.raises(ValueError, match="unlabeled"):
        dkd(s, t, torch.tensor([0, -1, 2]))


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 6),
    c=st.integers(2, 9),
    scale=st.floats(0.1, 20.0),
    alpha=st.floats(0.0, 4.0),
    beta=st.floats(0.0, 10.0),
    temperature=st.floats(0.5, 8.0),
)
def test_dkd_properties(
    seed: int, b: int, c: int, scale: float, alpha: float, beta: float, temperature: float
) -> None:
    s, t, y = _logits(seed, b, c, scale)
    loss = dkd(s, t, y, alpha, beta, temperature)
    assert loss.ndim == 0
    assert loss.item() >= -1e-6
    assert dkd(s, s, y, alpha, beta, temperature).item() == 0.0
    g = torch.Generator().manual_seed(seed + 1)
    shift_s = 50 * torch.randn(b, 1, generator=g, dtype=torch.float64)
    shift_t = 50 * torch.randn(b, 1, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        dkd(s + shift_s, t + shift_t, y, alpha, beta, temperature), loss, rtol=1e-7, atol=1e-9
    )


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), c=st.integers(2, 9), temperature=st.floats(0.5, 8.0))
def test_dkd_reformulates_kd(seed: int, c: int, temperature: float) -> None:
    # paper eq. (1): KD = TCKD + (1 - b_t^T) NCKD per sample, so DKD with alpha = 1, beta = 1 - b_t^T is KD
    s, t, y = _logits(seed, 1, c)
    b_nt_teacher = 1.0 - torch.softmax(t / temperature, dim=-1)[0, y[0]].item()
    got = dkd(s, t, y, alpha=1.0, beta=b_nt_teacher, temperature=temperature)
    torch.testing.assert_close(got, hinton_kd(s, t, temperature), rtol=1e-9, atol=1e-10)
