"""Sentence-embedding losses against independent NumPy loops, their gradients (float64 gradcheck), properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdistill.losses.embedding import (
    EMBEDDING_LOSSES,
    ROW_WISE,
    embedding_cosine,
    embedding_mse,
    similarity_matrix_loss,
)
from kdistill.losses.relation import rkd_angle, rkd_distance
from kdistill.losses.spec import LOSSES


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- independent references: plain loops over rows and pairs --------------------------------------


def cosine_reference(s: np.ndarray, t: np.ndarray) -> float:
    return float(
        np.mean([1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(s, t, strict=True)])
    )


def mse_reference(s: np.ndarray, t: np.ndarray) -> float:
    return float(sum(((a - b) ** 2).sum() for a, b in zip(s, t, strict=True)) / s.size)


def similarity_matrix_reference(s: np.ndarray, t: np.ndarray) -> float:
    def cos(a, b):
        return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))

    b = len(s)
    pairs = [(i, j) for i in range(b) for j in range(b) if i != j]
    return sum((cos(s[i], s[j]) - cos(t[i], t[j])) ** 2 for i, j in pairs) / len(pairs)


def rkd_distance_reference(s: np.ndarray, t: np.ndarray) -> float:
    def psi(e):
        d = np.array([[np.linalg.norm(a - b) for b in e] for a in e])
        return d / (d.sum() / (len(e) * (len(e) - 1)))

    x = np.abs(psi(s) - psi(t))
    return float(np.where(x < 1, 0.5 * x**2, x - 0.5).mean())


def test_embedding_cosine_matches_reference() -> None:
    s, t = _randn(0, 7, 5), _randn(1, 7, 5)
    assert embedding_cosine(s, t).item() == pytest.approx(cosine_reference(s.numpy(), t.numpy()), rel=1e-12)
    per_text = embedding_cosine(s, t, reduction="none")
    assert per_text.shape == (7,)
    assert embedding_cosine(s, t, reduction="sum").item() == pytest.approx(per_text.sum().item(), rel=1e-12)


def test_embedding_mse_matches_reference() -> None:
    s, t = _randn(2, 6, 4), _randn(3, 6, 4)
    assert embedding_mse(s, t).item() == pytest.approx(mse_reference(s.numpy(), t.numpy()), rel=1e-12)


def test_similarity_matrix_matches_reference_with_different_widths() -> None:
    s, t = _randn(4, 6, 3), _randn(5, 6, 9)
    expected = similarity_matrix_reference(s.numpy(), t.numpy())
    assert similarity_matrix_loss(s, t).item() == pytest.approx(expected, rel=1e-12)


def test_rkd_distance_on_embeddings_matches_reference() -> None:
    s, t = 3 * _randn(6, 5, 4), _randn(7, 5, 8)  # scaled so both Huber branches occur
    expected = rkd_distance_reference(s.numpy(), t.numpy())
    assert EMBEDDING_LOSSES["rkd_distance"](s, t).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("name", sorted(EMBEDDING_LOSSES))
def test_gradients_match_finite_differences(name: str) -> None:
    fn = EMBEDDING_LOSSES[name]
    width_t = 5 if name in ROW_WISE else 7
    s = _randn(10, 5, 5).requires_grad_(True)
    t = _randn(11, 5, width_t).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (s, t), eps=1e-6, atol=1e-6)


def test_similarity_matrix_gradient_against_closed_form() -> None:
    # B = 2: loss = (cos(s0, s1) - c_t)^2 (both ordered pairs, divided by 2); d/ds0 = 2 (c_s - c_t) dcos/ds0
    s, t = _randn(12, 2, 4).requires_grad_(True), _randn(13, 2, 4)
    similarity_matrix_loss(s, t).backward()
    a, b = s.detach()
    c_s = a @ b / (a.norm() * b.norm())
    c_t = t[0] @ t[1] / (t[0].norm() * t[1].norm())
    dcos_da = b / (a.norm() * b.norm()) - c_s * a / a.norm() ** 2
    assert torch.allclose(s.grad[0], 2 * (c_s - c_t) * dcos_da, atol=1e-12)


# --- properties ------------------------------------------------------------------------------------


def test_relation_losses_are_zero_for_a_rotated_and_scaled_teacher() -> None:
    t = _randn(14, 8, 6)
    q, _ = torch.linalg.qr(_randn(15, 6, 6))
    s = 2.5 * t @ q  # same geometry, other basis and scale
    for name in ("similarity_matrix", "rkd_distance", "rkd_angle"):
        assert EMBEDDING_LOSSES[name](s, t).item() == pytest.approx(0.0, abs=1e-12), name
    assert embedding_cosine(t * (1 + _randn(16, 8, 1).abs()), t).item() == pytest.approx(0.0, abs=1e-12)


def test_similarity_matrix_batch_of_one_is_zero_and_float32_inputs_compute_in_float32() -> None:
    assert similarity_matrix_loss(torch.randn(1, 4), torch.randn(1, 6)).item() == 0.0
    out = similarity_matrix_loss(torch.randn(3, 4, dtype=torch.float16), torch.randn(3, 6))
    assert out.dtype == torch.float32


def test_similarity_matrix_flattens_features_like_the_other_relation_losses() -> None:
    s, t = _randn(17, 4, 2, 3, 3), _randn(18, 4, 5)
    assert similarity_matrix_loss(s, t).item() == similarity_matrix_loss(s.flatten(1), t).item()
    with pytest.raises(ValueError, match="batch sizes differ"):
        similarity_matrix_loss(torch.randn(3, 4), torch.randn(2, 4))


def test_row_wise_losses_refuse_different_widths() -> None:
    with pytest.raises(ValueError, match="project the student"):
        embedding_cosine(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="same B"):
        embedding_mse(torch.randn(3, 4), torch.randn(2, 4))


def test_similarity_matrix_is_registered_as_a_relation_loss() -> None:
    spec = LOSSES.get("similarity_matrix")
    assert spec.fn is similarity_matrix_loss and spec.role == "relation"
    assert EMBEDDING_LOSSES["rkd_distance"] is rkd_distance and EMBEDDING_LOSSES["rkd_angle"] is rkd_angle
