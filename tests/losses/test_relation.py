"""Relation losses (rkd_distance, rkd_angle, similarity_preserving) against numpy loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.losses import LOSSES, rkd_angle, rkd_distance, similarity_preserving

SETTINGS = settings(max_examples=30, deadline=None)


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


def _normalised_distance_matrix(e: np.ndarray) -> list[list[float]]:
    b = e.shape[0]
    d = [[math.dist(e[i], e[j]) for j in range(b)] for i in range(b)]
    mean = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
    return [[d[i][j] / mean for j in range(b)] for i in range(b)]


def rkd_distance_reference(s: np.ndarray, t: np.ndarray) -> float:
    b = s.shape[0]
    ds, dt = _normalised_distance_matrix(s), _normalised_distance_matrix(t)
    return sum(_huber(ds[i][j] - dt[i][j]) for i in range(b) for j in range(b)) / b**2


def _cosine_at(e: np.ndarray, i: int, j: int, k: int) -> float:
    if j == i or k == i:  # degenerate triplet: no angle, 0 on both sides
        return 0.0
    u, v = e[j] - e[i], e[k] - e[i]
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def rkd_angle_reference(s: np.ndarray, t: np.ndarray) -> float:
    b = s.shape[0]
    total = 0.0
    for i in range(b):
        for j in range(b):
            for k in range(b):
                total += _huber(_cosine_at(s, i, j, k) - _cosine_at(t, i, j, k))
    return total / b**3


def sp_reference(s: np.ndarray, t: np.ndarray) -> float:
    b = s.shape[0]
    fs, ft = s.reshape(b, -1), t.reshape(b, -1)
    total = 0.0
    for i in range(b):
        gs = np.array([fs[i] @ fs[j] for j in range(b)])
        gt = np.array([ft[i] @ ft[j] for j in range(b)])
        total += float(((gs / np.linalg.norm(gs) - gt / np.linalg.norm(gt)) ** 2).sum())
    return total / b**2


# --- registry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fn"),
    [
        ("rkd_distance", rkd_distance),
        ("rkd_angle", rkd_angle),
        ("similarity_preserving", similarity_preserving),
    ],
)
def test_registered(name: str, fn: object) -> None:
    spec = LOSSES.get(name)
    assert spec.role == "relation"
    assert spec.fn is fn
    assert spec.needs_target is False and spec.needs_adapter is False


# --- references, with different student/teacher widths and >2-D inputs -----------------------------


def test_rkd_distance_matches_reference() -> None:
    # scale 3 makes some normalised-distance differences exceed 1, exercising both Huber branches
    s, t = 3 * _randn(0, 6, 5), _randn(1, 6, 8)
    expected = rkd_distance_reference(s.numpy(), t.numpy())
    assert rkd_distance(s, t).item() == pytest.approx(expected, rel=1e-9)


def test_rkd_angle_matches_reference() -> None:
    s, t = _randn(2, 5, 4), _randn(3, 5, 7)
    expected = rkd_angle_reference(s.numpy(), t.numpy())
    assert rkd_angle(s, t).item() == pytest.approx(expected, rel=1e-10)


def test_similarity_preserving_matches_reference() -> None:
    s, t = _randn(4, 6, 3, 2, 2), _randn(5, 6, 5, 3)
    expected = sp_reference(s.numpy(), t.numpy())
    assert similarity_preserving(s, t).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("fn", [rkd_distance, rkd_angle, similarity_preserving])
def test_inputs_are_flattened(fn) -> None:
    s, t = _randn(6, 4, 3, 2, 2), _randn(7, 4, 5)
    torch.testing.assert_close(fn(s, t), fn(s.flatten(1), t))


# --- gradients --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [rkd_distance, rkd_angle, similarity_preserving])
def test_gradcheck(fn) -> None:
    s, t = _randn(8, 4, 3), _randn(9, 4, 5)  # distinct points almost surely
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (s.requires_grad_(),))


@pytest.mark.parametrize("fn", [rkd_distance, rkd_angle])
def test_coinciding_samples_have_finite_gradients(fn) -> None:
    s = torch.randn(4, 6)
    s[1] = s[0]  # two identical embeddings: distance 0, zero difference vector
    s.requires_grad_()
    loss = fn(s, torch.randn(4, 3))
    loss.backward()
    assert torch.isfinite(loss)
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_rkd_distance_batch_of_one_is_zero() -> None:
    s = torch.randn(1, 4, requires_grad=True)
    loss = rkd_distance(s, torch.randn(1, 3))
    loss.backward()
    assert loss.item() == 0.0
    assert s.grad is not None and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("fn", [rkd_distance, rkd_angle, similarity_preserving])
def test_batch_mismatch_names_shapes(fn) -> None:
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 4\)"):
        fn(torch.zeros(3, 4), torch.zeros(5, 4))


@pytest.mark.parametrize("fn", [rkd_distance, rkd_angle, similarity_preserving])
def test_bfloat16_computes_in_float32(fn) -> None:
    s, t = _randn(10, 5, 4).bfloat16(), _randn(11, 5, 6).bfloat16()
    out = fn(s, t)
    assert out.dtype == torch.float32 and out.ndim == 0
    torch.testing.assert_close(out.double(), fn(s.double(), t.double()), rtol=1e-4, atol=1e-6)


# --- invariances ------------------------------------------------------------------------------------


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(2, 6),
    scale_s=st.floats(1e-2, 1e2),
    scale_t=st.floats(1e-2, 1e2),
)
def test_rkd_distance_scale_invariant(seed: int, b: int, scale_s: float, scale_t: float) -> None:
    s, t = _randn(seed, b, 4), _randn(seed + 1, b, 3)
    loss = rkd_distance(s, t)
    assert loss.item() >= 0.0
    assert rkd_distance(s, s).item() == pytest.approx(0.0, abs=1e-20)
    torch.testing.assert_close(rkd_distance(scale_s * s, scale_t * t), loss, rtol=1e-7, atol=1e-10)


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(3, 6),
    scale_s=st.floats(1e-2, 1e2),
    scale_t=st.floats(1e-2, 1e2),
    shift=st.floats(-10.0, 10.0),
)
def test_rkd_angle_scale_and_translation_invariant(
    seed: int, b: int, scale_s: float, scale_t: float, shift: float
) -> None:
    s, t = _randn(seed, b, 4), _randn(seed + 1, b, 3)
    offset = shift * _randn(seed + 2, 1, 4)  # one vector added to every student embedding
    loss = rkd_angle(s, t)
    assert loss.item() >= 0.0
    torch.testing.assert_close(
        rkd_angle(scale_s * s + offset, scale_t * t - shift), loss, rtol=1e-7, atol=1e-10
    )


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 6),
    scale_s=st.floats(1e-2, 1e2),
    scale_t=st.floats(1e-2, 1e2),
)
def test_similarity_preserving_global_scale_invariant(
    seed: int, b: int, scale_s: float, scale_t: float
) -> None:
    s, t = _randn(seed, b, 2, 3), _randn(seed + 1, b, 5)
    loss = similarity_preserving(s, t)
    # rows of G are unit vectors: each squared row difference is at most 4, so loss <= 4 / B
    assert 0.0 <= loss.item() <= 4 / b + 1e-12
    torch.testing.assert_close(similarity_preserving(scale_s * s, scale_t * t), loss, rtol=1e-9, atol=1e-12)
