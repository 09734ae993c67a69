"""Feature losses (fitnet_hint, attention_transfer) against numpy loop references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.losses import LOSSES, attention_transfer, fitnet_hint

SETTINGS = settings(max_examples=30, deadline=None)


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def at_reference(s: np.ndarray, t: np.ndarray, p: int) -> float:
    """(1 / (B * P)) sum_b ||q_s - q_t||^2, q = channel *sum* of |A|^p, flattened, unit norm (same-size maps)."""
    b = s.shape[0]
    total = 0.0
    n_positions = 0
    for i in range(b):
        q_s = (np.abs(s[i]) ** p).sum(axis=0).ravel()
        q_t = (np.abs(t[i]) ** p).sum(axis=0).ravel()
        q_s, q_t = q_s / np.linalg.norm(q_s), q_t / np.linalg.norm(q_t)
        total += float(((q_s - q_t) ** 2).sum())
        n_positions = q_s.size
    return total / (b * n_positions)


def _block_mean(x: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Average non-overlapping blocks of the spatial dims of (B, C, *spatial) by integer factors."""
    b, c, *spatial = x.shape
    shape = [b, c]
    for size, f in zip(spatial, factors, strict=True):
        shape += [size // f, f]
    axes = tuple(3 + 2 * k for k in range(len(spatial)))
    return x.reshape(shape).mean(axis=axes)


# --- registry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fn", "needs_adapter"),
    [("fitnet_hint", fitnet_hint, True), ("attention_transfer", attention_transfer, False)],
)
def test_registered(name: str, fn: object, needs_adapter: bool) -> None:
    spec = LOSSES.get(name)
    assert spec.role == "feature"
    assert spec.fn is fn
    assert spec.needs_adapter is needs_adapter
    assert spec.needs_target is False


# --- fitnet_hint ------------------------------------------------------------------------------------


def test_fitnet_hint_is_elementwise_mse() -> None:
    s, t = _randn(0, 2, 3, 4, 5), _randn(1, 2, 3, 4, 5)
    expected = float(((s.numpy() - t.numpy()) ** 2).sum() / s.numel())
    assert fitnet_hint(s, t).item() == pytest.approx(expected, rel=1e-12)


def test_fitnet_hint_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 5, 4\)"):
        fitnet_hint(torch.zeros(2, 3, 4), torch.zeros(2, 5, 4))


def test_fitnet_hint_gradcheck_and_bfloat16() -> None:
    s, t = _randn(2, 2, 3, 2), _randn(3, 2, 3, 2)
    assert torch.autograd.gradcheck(lambda x: fitnet_hint(x, t), (s.requires_grad_(),))
    out = fitnet_hint(s.detach().bfloat16(), t.float())
    assert out.dtype == torch.float32 and out.ndim == 0


# --- attention_transfer -----------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize(
    ("s_shape", "t_shape"), [((3, 4, 5, 6), (3, 7, 5, 6)), ((3, 4, 10), (3, 2, 10))], ids=["2d", "1d"]
)
def test_attention_transfer_matches_reference(
    p: int, s_shape: tuple[int, ...], t_shape: tuple[int, ...]
) -> None:
    s, t = _randn(4, *s_shape), _randn(5, *t_shape)
    expected = at_reference(s.numpy(), t.numpy(), p)
    assert attention_transfer(s, t, p=p).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "s_factors", "t_factors"),
    [
        ((2, 3, 8, 8), (2, 5, 4, 4), (2, 2), (1, 1)),  # student larger: pooled 2x2
        ((2, 3, 4, 6), (2, 5, 8, 3), (1, 2), (2, 1)),  # each larger in one dim: both pooled
        ((2, 3, 12), (2, 4, 4), (3,), (1,)),  # 1-D conv features
    ],
)
def test_attention_transfer_pools_larger_map(
    s_shape: tuple[int, ...], t_shape: tuple[int, ...], s_factors: tuple[int, ...], t_factors: tuple[int, ...]
) -> None:
    s, t = _randn(6, *s_shape), _randn(7, *t_shape)
    expected = at_reference(_block_mean(s.numpy(), s_factors), _block_mean(t.numpy(), t_factors), 2)
    assert attention_transfer(s, t).item() == pytest.approx(expected, rel=1e-10)


def test_attention_transfer_gradcheck() -> None:
    t = _randn(8, 2, 3, 2, 2)
    s = _randn(9, 2, 2, 4, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: attention_transfer(x, t), (s,))
    t1 = _randn(10, 2, 3, 3)
    s1 = _randn(11, 2, 2, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: attention_transfer(x, t1, p=3), (s1,))


def test_attention_transfer_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 3, 16\)"):
        attention_transfer(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 16))
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(3, 3, 4\)"):
        attention_transfer(torch.zeros(2, 3, 4), torch.zeros(3, 3, 4))


def test_attention_transfer_float16_returns_float32() -> None:
    s, t = _randn(12, 2, 3, 4, 4), _randn(13, 2, 5, 4, 4)
    out = attention_transfer(s.half(), t.half())
    assert out.dtype == torch.float32 and out.ndim == 0
    torch.testing.assert_close(
        out.double(), attention_transfer(s.half().double(), t.half().double()), rtol=1e-5, atol=1e-8
    )


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    c_s=st.integers(1, 4),
    c_t=st.integers(1, 4),
    scale_s=st.floats(1e-2, 1e2),
    scale_t=st.floats(1e-2, 1e2),
    p=st.integers(1, 4),
)
def test_attention_transfer_properties(
    seed: int, c_s: int, c_t: int, scale_s: float, scale_t: float, p: int
) -> None:
    s, t = _randn(seed, 2, c_s, 3, 3), _randn(seed + 1, 2, c_t, 3, 3)
    loss = attention_transfer(s, t, p=p)
    # unit-norm maps: 0 <= ||q_s - q_t||^2 <= 2 per sample (both maps are non-negative), so loss <= 2 / P
    assert -1e-12 <= loss.item() <= 2 / 9 + 1e-12
    assert attention_transfer(s, s, p=p).item() == pytest.approx(0.0, abs=1e-15)
    torch.testing.assert_close(attention_transfer(scale_s * s, scale_t * t, p=p), loss, rtol=1e-9, atol=1e-12)
