"""Detection distillation losses against numpy float64 loop references written from the papers."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from kdistill.losses.detection import (
    GlobalContextBlock,
    dense_response_kd,
    fgd_loss,
    fine_grained_imitation,
    imitation_mask,
    localization_distillation,
    max_class_probability,
    pkd_loss,
)


def _randn(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return sum(float(pi * math.log(pi / qi)) for pi, qi in zip(p, q, strict=True))


def _weighted_mean(values: list[float], weights: list[float]) -> float:
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


def dense_reference(
    levels: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], temperature: float
) -> float:
    """T^2 * sum_k binary KL(sigmoid(t_k / T) || sigmoid(s_k / T)), weighted mean over every position."""
    values, weights = [], []
    for s, t, w in levels:
        s2, t2 = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
        w2 = np.ones(s2.shape[0]) if w is None else w.reshape(-1).astype(np.float64)
        for i in range(s2.shape[0]):
            per_position = 0.0
            for k in range(s2.shape[1]):
                p, q = _sigmoid(t2[i, k] / temperature), _sigmoid(s2[i, k] / temperature)
                per_position += _kl(np.array([p, 1 - p]), np.array([q, 1 - q]))
            values.append(temperature**2 * per_position)
            weights.append(float(w2[i]))
    return _weighted_mean(values, weights)


def ld_reference(s: np.ndarray, t: np.ndarray, temperature: float, w: np.ndarray | None) -> float:
    """T^2 * sum over the 4 edges of KL(softmax(t_e / T) || softmax(s_e / T)), weighted mean over positions."""
    s2, t2 = s.reshape(-1, 4, s.shape[-1]), t.reshape(-1, 4, t.shape[-1])
    w2 = np.ones(s2.shape[0]) if w is None else w.reshape(-1).astype(np.float64)
    values = []
    for i in range(s2.shape[0]):
        per_position = sum(
            _kl(_softmax(t2[i, e] / temperature), _softmax(s2[i, e] / temperature)) for e in range(4)
        )
        values.append(temperature**2 * per_position)
    return _weighted_mean(values, list(w2))


def pkd_reference(s: np.ndarray, t: np.ndarray, eps: float) -> float:
    """Standardise each channel over (B, H, W) by (x - mean) / (population std + eps), then MSE / 2."""
    total = 0.0
    for c in range(s.shape[1]):
        a, b = s[:, c].ravel(), t[:, c].ravel()
        a = (a - a.mean()) / (a.std() + eps)
        b = (b - b.mean()) / (b.std() + eps)
        total += float(((a - b) ** 2).sum())
    return total / s.size / 2


def imitation_reference(levels: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
    """sum over masked (b, h, w) of sum_c (s - t)^2, divided by 2 * the number of masked positions."""
    total, n_positions = 0.0, 0
    for s, t, mask in levels:
        b, c, h, w = s.shape
        for i in range(b):
            for y in range(h):
                for x in range(w):
                    if mask[i, y, x]:
                        n_positions += 1
                        total += sum((s[i, k, y, x] - t[i, k, y, x]) ** 2 for k in range(c))
    return total / (2 * n_positions)


def imitation_mask_reference(boxes: np.ndarray, h: int, w: int, stride: float, thresh: float) -> np.ndarray:
    """Point (y, x) marked if inside some box and its centerness >= thresh * that box's best inside point."""
    mask = np.zeros((h, w), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        centerness = {}
        for y in range(h):
            for x in range(w):
                cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
                left, right, top, bottom = cx - x1, x2 - cx, cy - y1, y2 - cy
                if min(left, right, top, bottom) > 0:
                    ratio = (min(left, right) / max(left, right)) * (min(top, bottom) / max(top, bottom))
                    centerness[y, x] = math.sqrt(ratio)
        if centerness:
            best = max(centerness.values())
            for (y, x), value in centerness.items():
                if value >= thresh * best:
                    mask[y, x] = True
    return mask


def gc_reference(x: np.ndarray, block: GlobalContextBlock) -> np.ndarray:
    """GCNet block on one image (C, H, W): x + W2 relu(LN(W1 context + b1)) + b2, context = softmax-pooled x."""
    wk = block.attend.weight.detach().numpy().reshape(-1)
    bk = float(block.attend.bias.detach().numpy()[0])
    conv1, norm, _, conv2 = block.transform
    w1, b1 = conv1.weight.detach().numpy()[:, :, 0, 0], conv1.bias.detach().numpy()
    gain, shift = norm.weight.detach().numpy().reshape(-1), norm.bias.detach().numpy().reshape(-1)
    w2, b2 = conv2.weight.detach().numpy()[:, :, 0, 0], conv2.bias.detach().numpy()
    c, h, w = x.shape
    logits = np.array([[float(wk @ x[:, y, z]) + bk for z in range(w)] for y in range(h)])
    weights = _softmax(logits.ravel()).reshape(h, w)
    context = sum(weights[y, z] * x[:, y, z] for y in range(h) for z in range(w))
    hidden = w1 @ context + b1
    hidden = (hidden - hidden.mean()) / math.sqrt(hidden.var() + norm.eps) * gain + shift
    return x + (w2 @ np.maximum(hidden, 0.0) + b2)[:, None, None]


def fgd_masks_reference(boxes: np.ndarray, h: int, w: int, stride: float) -> tuple[np.ndarray, np.ndarray]:
    fg = np.zeros((h, w))
    for x1, y1, x2, y2 in boxes:
        c_lo, c_hi = math.floor(x1 / stride), math.ceil(x2 / stride)
        r_lo, r_hi = math.floor(y1 / stride), math.ceil(y2 / stride)
        scale = 1.0 / ((r_hi - r_lo + 1) * (c_hi - c_lo + 1))
        for y in range(h):
            for x in range(w):
                if r_lo <= y <= r_hi and c_lo <= x <= c_hi:
                    fg[y, x] = max(fg[y, x], scale)
    background = fg == 0
    return fg, background / max(int(background.sum()), 1)


def fgd_reference(
    s: np.ndarray,
    t: np.ndarray,
    boxes: list[np.ndarray],
    stride: float,
    temperature: float,
    coefficients: tuple[float, float, float, float],
    contexts: tuple[GlobalContextBlock, GlobalContextBlock] | None,
) -> float:
    """FGD of one level from the paper's formulas, one image, cell and channel at a time."""
    alpha, beta, gamma, lambda_ = coefficients
    b, c, h, w = s.shape

    def attention(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spatial = np.array([[np.abs(x[:, y, z]).mean() for z in range(w)] for y in range(h)])
        channel = np.array([np.abs(x[k]).mean() for k in range(c)])
        return h * w * _softmax(spatial.ravel() / temperature).reshape(h, w), c * _softmax(
            channel / temperature
        )

    total = 0.0
    for i in range(b):
        a_s_t, a_c_t = attention(t[i])
        a_s_s, a_c_s = attention(s[i])
        fg, bg = fgd_masks_reference(boxes[i], h, w, stride)
        fg_loss = bg_loss = 0.0
        for k in range(c):
            for y in range(h):
                for z in range(w):
                    err = a_s_t[y, z] * a_c_t[k] * (t[i, k, y, z] - s[i, k, y, z]) ** 2
                    fg_loss += fg[y, z] * err
                    bg_loss += bg[y, z] * err
        at_loss = np.abs(a_c_t - a_c_s).sum() + np.abs(a_s_t - a_s_s).sum()
        total += alpha * fg_loss + beta * bg_loss + gamma * at_loss
        if contexts is not None:
            student_block, teacher_block = contexts
            total += (
                lambda_ * ((gc_reference(t[i], teacher_block) - gc_reference(s[i], student_block)) ** 2).sum()
            )
    return total / b


def _random_block(channels: int, seed: int) -> GlobalContextBlock:
    """A float64 GlobalContextBlock with every weight random (the zero-initialised last conv too)."""
    torch.manual_seed(seed)
    block = GlobalContextBlock(channels).double()
    with torch.no_grad():
        for param in block.parameters():
            param.copy_(torch.randn_like(param) * 0.5)
    return block


# --- dense_response_kd ------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_dense_response_kd_matches_reference(temperature: float) -> None:
    s, t = _randn(0, 2, 3, 4, 5, scale=2.0), _randn(1, 2, 3, 4, 5, scale=2.0)
    expected = dense_reference([(s.numpy(), t.numpy(), None)], temperature)
    assert dense_response_kd(s, t, temperature=temperature).item() == pytest.approx(expected, rel=1e-10)


def test_dense_response_kd_levels_with_mask_and_weights_match_reference() -> None:
    levels = [(_randn(2, 2, 4, 4, 3), _randn(3, 2, 4, 4, 3)), (_randn(4, 2, 2, 2, 3), _randn(5, 2, 2, 2, 3))]
    s, t = [lv[0] for lv in levels], [lv[1] for lv in levels]
    bool_mask = [_rand(6, 2, 4, 4) > 0.5, _rand(7, 2, 2, 2) > 0.5]
    expected = dense_reference(
        [(a.numpy(), b.numpy(), m.numpy()) for a, b, m in zip(s, t, bool_mask, strict=True)], 2.0
    )
    assert dense_response_kd(s, t, temperature=2.0, mask=bool_mask).item() == pytest.approx(
        expected, rel=1e-10
    )
    weights = [_rand(8, 2, 4, 4), _rand(9, 2, 2, 2)]
    expected = dense_reference(
        [(a.numpy(), b.numpy(), w.numpy()) for a, b, w in zip(s, t, weights, strict=True)], 2.0
    )
    assert dense_response_kd(s, t, temperature=2.0, mask=weights).item() == pytest.approx(expected, rel=1e-10)


def test_dense_response_kd_identical_is_zero() -> None:
    s = _randn(10, 3, 4, 6, scale=4.0)
    assert dense_response_kd(s, s.clone(), temperature=2.0).item() == pytest.approx(0.0, abs=1e-14)


def test_dense_response_kd_temperature_scaling() -> None:
    s, t = _randn(11, 4, 5, 3), _randn(12, 4, 5, 3)
    # T^2 * (the T = 1 loss of the logits divided by T)
    for temperature in (0.5, 4.0):
        torch.testing.assert_close(
            dense_response_kd(s, t, temperature=temperature),
            temperature**2 * dense_response_kd(s / temperature, t / temperature),
            rtol=1e-12,
            atol=0,
        )
    # high-T limit: binary KL ~ (p - q)^2 / (2 p (1 - p)) with p ~ 1/2 + t / 4T, so T^2 * it -> (s - t)^2 / 8
    limit = ((s - t) ** 2 / 8).sum(dim=-1).mean()
    torch.testing.assert_close(dense_response_kd(s, t, temperature=1e4), limit, rtol=1e-3, atol=0)


def test_dense_response_kd_mask_selects_positions() -> None:
    s, t = _randn(13, 2, 3, 4, 5), _randn(14, 2, 3, 4, 5)
    mask = _rand(15, 2, 3, 4) > 0.4
    other = torch.where(mask.unsqueeze(-1), s, _randn(16, 2, 3, 4, 5, scale=50.0)).requires_grad_()
    loss = dense_response_kd(other, t, mask=mask)
    torch.testing.assert_close(loss, dense_response_kd(s, t, mask=mask), rtol=1e-12, atol=0)
    loss.backward()
    assert other.grad is not None
    assert torch.equal(other.grad[~mask], torch.zeros_like(other.grad[~mask]))
    # the mean over the selected rows of the per-position values
    per_position = dense_response_kd(s, t, reduction="none")
    torch.testing.assert_close(loss.detach(), per_position[mask].mean(), rtol=1e-12, atol=0)


def test_dense_response_kd_reductions() -> None:
    s, t = [_randn(17, 2, 3, 4), _randn(18, 2, 2, 4)], [_randn(19, 2, 3, 4), _randn(20, 2, 2, 4)]
    mask = [_rand(21, 2, 3) > 0.5, _rand(22, 2, 2) > 0.5]
    per_position = dense_response_kd(s, t, mask=mask, reduction="none")
    assert isinstance(per_position, list) and [v.shape for v in per_position] == [(2, 3), (2, 2)]
    for values, m in zip(per_position, mask, strict=True):
        assert torch.equal(values[~m], torch.zeros_like(values[~m]))
    total = per_position[0].sum() + per_position[1].sum()
    torch.testing.assert_close(dense_response_kd(s, t, mask=mask, reduction="sum"), total)
    n_selected = int(mask[0].sum() + mask[1].sum())
    torch.testing.assert_close(dense_response_kd(s, t, mask=mask), total / n_selected)


def test_dense_response_kd_all_masked_is_zero_not_nan() -> None:
    s = _randn(23, 2, 3, 4).requires_grad_()
    loss = dense_response_kd(s, _randn(24, 2, 3, 4), mask=torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad is not None and torch.equal(s.grad, torch.zeros_like(s))
    assert dense_response_kd(s, s, mask=torch.zeros(2, 3, dtype=torch.float64)).item() == 0.0


def test_dense_response_kd_gradcheck() -> None:
    t, weights = _randn(25, 2, 3, 4), _rand(26, 2, 3)
    s = _randn(27, 2, 3, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: dense_response_kd(x, t, temperature=2.0, mask=weights), (s,))


def test_max_class_probability() -> None:
    logits = [_randn(28, 2, 3, 5), _randn(29, 2, 1, 5)]
    scores = max_class_probability(logits)
    for level, score in zip(logits, scores, strict=True):
        expected = np.array([[max(_sigmoid(z) for z in row) for row in image] for image in level.numpy()])
        np.testing.assert_allclose(score.numpy(), expected, rtol=1e-12)


def test_dense_response_kd_float32_and_bfloat16_inputs() -> None:
    s, t = _randn(30, 3, 4), _randn(31, 3, 4)
    out = dense_response_kd(s.bfloat16(), t.bfloat16())
    assert out.dtype == torch.float32 and out.ndim == 0
    torch.testing.assert_close(out.double(), dense_response_kd(s.bfloat16().double(), t.bfloat16().double()))


def test_dense_response_kd_bad_inputs() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "dense_response_kd: student logits (2, 3, 4) and teacher logits (2, 3, 5) differ in shape"
        ),
    ):
        dense_response_kd(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))
    with pytest.raises(
        ValueError, match=re.escape("(2, 2, 4) and teacher logits (2, 1, 4) differ in shape (level 1)")
    ):
        dense_response_kd(
            [torch.zeros(2, 3, 4), torch.zeros(2, 2, 4)], [torch.zeros(2, 3, 4), torch.zeros(2, 1, 4)]
        )
    with pytest.raises(
        ValueError, match=re.escape("dense_response_kd: 2 student levels vs 1 teacher levels")
    ):
        dense_response_kd([torch.zeros(2, 4), torch.zeros(1, 4)], [torch.zeros(2, 4)])
    with pytest.raises(
        ValueError, match="both be tensors or both be lists of per-level tensors, got Tensor and list"
    ):
        dense_response_kd(torch.zeros(2, 4), [torch.zeros(2, 4)])
    with pytest.raises(ValueError, match=re.escape("mask (2, 4) does not match the positions (2, 3)")):
        dense_response_kd(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool or floating"):
        dense_response_kd(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), mask=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be > 0, got 0.0"):
        dense_response_kd(torch.zeros(2, 4), torch.zeros(2, 4), temperature=0.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        dense_response_kd(torch.zeros(2, 4), torch.zeros(2, 4), reduction="batchmean")


# --- localization_distillation ----------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 10.0])
def test_localization_distillation_matches_reference(temperature: float) -> None:
    s, t = _randn(40, 2, 3, 4, 8, scale=3.0), _randn(41, 2, 3, 4, 8, scale=3.0)
    weights = _rand(42, 2, 3)
    expected = ld_reference(s.numpy(), t.numpy(), temperature, weights.numpy())
    got = localization_distillation(s, t, temperature=temperature, mask=weights)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    expected = ld_reference(s.numpy(), t.numpy(), temperature, None)
    assert localization_distillation(s, t, temperature=temperature).item() == pytest.approx(
        expected, rel=1e-10
    )


def test_localization_distillation_levels_pool_positions() -> None:
    s = [_randn(43, 2, 3, 4, 5), _randn(44, 2, 1, 4, 5)]
    t = [_randn(45, 2, 3, 4, 5), _randn(46, 2, 1, 4, 5)]
    pooled = localization_distillation(
        torch.cat([x.reshape(-1, 4, 5) for x in s]), torch.cat([x.reshape(-1, 4, 5) for x in t])
    )
    torch.testing.assert_close(localization_distillation(s, t), pooled, rtol=1e-12, atol=0)


def test_localization_distillation_identical_is_zero_and_mask_selects() -> None:
    s, t = _randn(47, 6, 4, 5, scale=5.0), _randn(48, 6, 4, 5)
    assert localization_distillation(s, s.clone()).item() == pytest.approx(0.0, abs=1e-14)
    mask = torch.tensor([True, False, True, False, False, True])
    torch.testing.assert_close(
        localization_distillation(s, t, mask=mask),
        localization_distillation(s[mask], t[mask]),
        rtol=1e-12,
        atol=0,
    )


def test_localization_distillation_temperature_scaling() -> None:
    s, t = _randn(49, 5, 4, 7), _randn(50, 5, 4, 7)
    torch.testing.assert_close(
        localization_distillation(s, t, temperature=10.0),
        100.0 * localization_distillation(s / 10.0, t / 10.0, temperature=1.0),
        rtol=1e-12,
        atol=0,
    )
    # high-T limit of T^2 KL between softmaxes over n+1 bins: sum_i (d_i - mean d)^2 / (2 (n+1)), d = s - t
    d = s - t
    limit = ((d - d.mean(dim=-1, keepdim=True)) ** 2).sum(dim=(-2, -1)).mean() / (2 * 7)
    torch.testing.assert_close(localization_distillation(s, t, temperature=1e4), limit, rtol=1e-3, atol=0)


def test_localization_distillation_gradcheck() -> None:
    t, mask = _randn(51, 3, 4, 5), torch.tensor([True, False, True])
    s = _randn(52, 3, 4, 5).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: localization_distillation(x, t, temperature=2.0, mask=mask), (s,)
    )


def test_localization_distillation_bad_inputs() -> None:
    with pytest.raises(
        ValueError, match=re.escape("edge logits must be (..., 4, n+1) with n+1 >= 2 bins, got (2, 3, 8)")
    ):
        localization_distillation(torch.zeros(2, 3, 8), torch.zeros(2, 3, 8))
    with pytest.raises(
        ValueError, match=re.escape("student edge logits (2, 4, 8) and teacher edge logits (2, 4, 9)")
    ):
        localization_distillation(torch.zeros(2, 4, 8), torch.zeros(2, 4, 9))
    with pytest.raises(ValueError, match=re.escape("mask (2, 4) does not match the positions (2,)")):
        localization_distillation(
            torch.zeros(2, 4, 8), torch.zeros(2, 4, 8), mask=torch.ones(2, 4, dtype=torch.bool)
        )


# --- pkd_loss ---------------------------------------------------------------------------------------


def test_pkd_is_one_minus_pearson_per_channel() -> None:
    s, t = _randn(60, 2, 3, 4, 5), _randn(61, 2, 3, 4, 5)
    s = s + 0.7 * t  # correlated, so r is not ~0
    r = [np.corrcoef(s[:, c].numpy().ravel(), t[:, c].numpy().ravel())[0, 1] for c in range(3)]
    expected = float(np.mean([1 - rc for rc in r]))
    assert pkd_loss(s, t, eps=0.0).item() == pytest.approx(expected, rel=1e-12)


def test_pkd_matches_reference_with_eps_and_sums_levels() -> None:
    s = [_randn(62, 2, 3, 4, 4, scale=3.0), _randn(63, 2, 3, 2, 2)]
    t = [_randn(64, 2, 3, 4, 4), _randn(65, 2, 3, 2, 2, scale=0.1)]
    expected = sum(pkd_reference(a.numpy(), b.numpy(), 1e-6) for a, b in zip(s, t, strict=True))
    assert pkd_loss(s, t).item() == pytest.approx(expected, rel=1e-12)


def test_pkd_invariant_to_per_channel_affine_student() -> None:
    s, t = _randn(66, 2, 4, 3, 3), _randn(67, 2, 4, 3, 3)
    scale = torch.tensor([0.01, 1.0, 7.0, 300.0], dtype=torch.float64).view(1, 4, 1, 1)
    shift = torch.tensor([-5.0, 0.0, 2.0, 1e3], dtype=torch.float64).view(1, 4, 1, 1)
    torch.testing.assert_close(
        pkd_loss(scale * s + shift, t, eps=0.0), pkd_loss(s, t, eps=0.0), rtol=1e-10, atol=0
    )
    torch.testing.assert_close(pkd_loss(scale * s + shift, t), pkd_loss(s, t), rtol=1e-4, atol=0)
    assert pkd_loss(scale * t + shift, t, eps=0.0).item() == pytest.approx(0.0, abs=1e-12)


def test_pkd_gradcheck_and_shape_error() -> None:
    t = _randn(68, 2, 3, 2, 2)
    s = _randn(69, 2, 3, 2, 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: pkd_loss(x, t), (s,))
    with pytest.raises(
        ValueError,
        match=re.escape("pkd_loss: student features (2, 3, 4, 4) and teacher features (2, 5, 4, 4)"),
    ):
        pkd_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        pkd_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), eps=-1.0)


# --- fine_grained_imitation and imitation_mask ------------------------------------------------------


def test_fine_grained_imitation_matches_reference() -> None:
    s = [_randn(70, 2, 3, 4, 5), _randn(71, 2, 3, 2, 3)]
    t = [_randn(72, 2, 3, 4, 5), _randn(73, 2, 3, 2, 3)]
    mask = [_rand(74, 2, 4, 5) > 0.6, _rand(75, 2, 2, 3) > 0.3]
    expected = imitation_reference(
        [(a.numpy(), b.numpy(), m.numpy()) for a, b, m in zip(s, t, mask, strict=True)]
    )
    assert fine_grained_imitation(s, t, mask).item() == pytest.approx(expected, rel=1e-12)
    one = imitation_reference([(s[0].numpy(), t[0].numpy(), mask[0].numpy())])
    assert fine_grained_imitation(s[0], t[0], mask[0]).item() == pytest.approx(one, rel=1e-12)


def test_fine_grained_imitation_mask_selects_and_identical_is_zero() -> None:
    s, t = _randn(76, 2, 3, 4, 4), _randn(77, 2, 3, 4, 4)
    mask = _rand(78, 2, 4, 4) > 0.5
    noisy = torch.where(mask.unsqueeze(1), s, _randn(79, 2, 3, 4, 4, scale=100.0))
    torch.testing.assert_close(fine_grained_imitation(noisy, t, mask), fine_grained_imitation(s, t, mask))
    assert fine_grained_imitation(t.clone(), t, mask).item() == 0.0
    assert fine_grained_imitation(s, t, torch.zeros(2, 4, 4, dtype=torch.bool)).item() == 0.0


def test_fine_grained_imitation_gradcheck_and_errors() -> None:
    t, mask = _randn(80, 2, 3, 3, 3), _rand(81, 2, 3, 3) > 0.5
    s = _randn(82, 2, 3, 3, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fine_grained_imitation(x, t, mask), (s,))
    with pytest.raises(ValueError, match=re.escape("mask (2, 3, 3) does not match the positions (2, 4, 4)")):
        fine_grained_imitation(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), mask)
    with pytest.raises(ValueError, match="mask is required"):
        fine_grained_imitation(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), None)  # type: ignore[arg-type]


def test_imitation_mask_hand_placed_boxes() -> None:
    # stride 8 on a 4 x 5 map: point centres x in {4, 12, 20, 28, 36}, y in {4, 12, 20, 28}
    square = torch.tensor(
        [[8.0, 0.0, 24.0, 16.0]]
    )  # contains x in {12, 20}, y in {4, 12}, all centerness 1/3
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[0:2, 1:3] = True
    for thresh in (0.0, 0.5, 1.0):
        assert torch.equal(imitation_mask(square, (4, 5), 8, thresh_factor=thresh), expected)
    # a wide box over row 0: centerness sqrt(min/max) along x = 1/3, sqrt(3/7), 1, sqrt(3/7), 1/3
    wide = torch.tensor([[0.0, 0.0, 40.0, 8.0]])
    row = [imitation_mask(wide, (4, 5), 8, thresh_factor=f)[0].tolist() for f in (0.0, 0.5, 0.7)]
    assert row == [[True] * 5, [False, True, True, True, False], [False, False, True, False, False]]
    assert not imitation_mask(wide, (4, 5), 8)[1:].any()
    # smaller than a cell, between centres: marks nothing; no boxes: nothing
    assert not imitation_mask(torch.tensor([[5.0, 5.0, 11.0, 11.0]]), (4, 5), 8).any()
    assert not imitation_mask(torch.zeros(0, 4), (4, 5), 8).any()


def test_imitation_mask_matches_brute_force_and_batches() -> None:
    g = torch.Generator().manual_seed(83)
    images = []
    for k in (3, 0, 5):
        corner = torch.rand(k, 2, generator=g, dtype=torch.float64) * 50
        size = torch.rand(k, 2, generator=g, dtype=torch.float64) * 30 + 1
        images.append(torch.cat([corner, corner + size], dim=1))
    masks = imitation_mask(images, (7, 9), 8.0, thresh_factor=0.4)
    assert masks.shape == (3, 7, 9)
    for boxes, mask in zip(images, masks, strict=True):
        np.testing.assert_array_equal(mask.numpy(), imitation_mask_reference(boxes.numpy(), 7, 9, 8.0, 0.4))


def test_imitation_mask_bad_inputs() -> None:
    with pytest.raises(
        ValueError, match=re.escape("boxes must be (K, 4) as (x1, y1, x2, y2) in pixels, got (2, 3)")
    ):
        imitation_mask(torch.zeros(2, 3), (4, 4), 8)
    with pytest.raises(ValueError, match=re.escape("thresh_factor must be in [0, 1], got 1.5")):
        imitation_mask(torch.zeros(0, 4), (4, 4), 8, thresh_factor=1.5)


# --- fgd_loss ---------------------------------------------------------------------------------------

_BOXES = [
    torch.tensor([[3.0, 2.0, 13.0, 9.0], [8.0, 4.0, 12.0, 8.0]], dtype=torch.float64),
    torch.tensor([[20.0, 10.0, 30.0, 22.0]], dtype=torch.float64),
]


@pytest.mark.parametrize(
    "coefficients",
    [
        (1.0, 0.0, 0.0, 0.0),
        (0.0, 1.0, 0.0, 0.0),
        (0.0, 0.0, 1.0, 0.0),
        (0.0, 0.0, 0.0, 1.0),
        (1e-3, 5e-4, 5e-4, 5e-6),
    ],
    ids=["fg", "bg", "attention", "global", "defaults"],
)
def test_fgd_matches_reference_per_term(coefficients: tuple[float, float, float, float]) -> None:
    s, t = _randn(90, 2, 4, 6, 8), _randn(91, 2, 4, 6, 8, scale=2.0)
    contexts = (_random_block(4, 92), _random_block(4, 93))
    alpha, beta, gamma, lambda_ = coefficients
    got = fgd_loss(
        s,
        t,
        _BOXES,
        4,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        lambda_=lambda_,
        student_context=contexts[0],
        teacher_context=contexts[1],
    )
    expected = fgd_reference(
        s.numpy(), t.numpy(), [b.numpy() for b in _BOXES], 4, 0.5, coefficients, contexts
    )
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_fgd_sums_levels_with_their_strides() -> None:
    s, t = [_randn(94, 2, 3, 6, 8), _randn(95, 2, 3, 3, 4)], [_randn(96, 2, 3, 6, 8), _randn(97, 2, 3, 3, 4)]
    blocks = [(_random_block(3, 98), _random_block(3, 99)), (_random_block(3, 100), _random_block(3, 101))]
    got = fgd_loss(
        s,
        t,
        _BOXES,
        [4, 8],
        temperature=0.8,
        student_context=[b[0] for b in blocks],
        teacher_context=[b[1] for b in blocks],
    )
    boxes = [b.numpy() for b in _BOXES]
    coefficients = (1e-3, 5e-4, 5e-4, 5e-6)
    expected = sum(
        fgd_reference(a.numpy(), b.numpy(), boxes, stride, 0.8, coefficients, pair)
        for a, b, stride, pair in zip(s, t, [4, 8], blocks, strict=True)
    )
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_fgd_foreground_and_background_masks_by_probing() -> None:
    # teacher 0: both attentions are exactly 1, so a unit error at one cell costs that cell's mask value
    teacher = torch.zeros(1, 1, 6, 8, dtype=torch.float64)
    # box 1 spans cols floor(3/4)=0..ceil(13/4)=4 and rows floor(2/4)=0..ceil(9/4)=3: 20 cells, 1/20 each;
    # box 2 (cols 2..3, rows 1..2, 4 cells) is smaller and wins with 1/4; the other 28 cells are background
    expected_fg = torch.zeros(6, 8, dtype=torch.float64)
    expected_fg[0:4, 0:5] = 1 / 20
    expected_fg[1:3, 2:4] = 1 / 4
    expected_bg = torch.where(expected_fg == 0, 1 / 28, 0.0)
    for y in range(6):
        for x in range(8):
            probe = teacher.clone()
            probe[0, 0, y, x] = 1.0
            fg = fgd_loss(probe, teacher, _BOXES[:1], 4, alpha=1.0, beta=0.0, gamma=0.0, lambda_=0.0)
            bg = fgd_loss(probe, teacher, _BOXES[:1], 4, alpha=0.0, beta=1.0, gamma=0.0, lambda_=0.0)
            assert (fg.item(), bg.item()) == pytest.approx(
                (expected_fg[y, x].item(), expected_bg[y, x].item())
            )


def test_fgd_identical_is_zero_and_context_starts_as_identity() -> None:
    t = _randn(102, 2, 4, 5, 5)
    block = _random_block(4, 103)
    assert fgd_loss(t.clone(), t, _BOXES, 4, student_context=block, teacher_context=block).item() == 0.0
    fresh = GlobalContextBlock(4).double()
    torch.testing.assert_close(fresh(t), t, rtol=0, atol=0)


def test_fgd_gradcheck() -> None:
    t = _randn(104, 2, 4, 3, 4)
    student_block, teacher_block = _random_block(4, 105), _random_block(4, 106)
    s = _randn(107, 2, 4, 3, 4).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: fgd_loss(
            x,
            t,
            _BOXES,
            4,
            alpha=1.0,
            beta=1.0,
            gamma=1.0,
            lambda_=1.0,
            student_context=student_block,
            teacher_context=teacher_block,
        ),
        (s,),
    )


def test_fgd_bad_inputs() -> None:
    s = torch.zeros(2, 4, 3, 3)
    with pytest.raises(
        ValueError, match=re.escape("fgd_loss: lambda_=5e-06 needs student_context and teacher_context")
    ):
        fgd_loss(s, s, _BOXES, 4)
    with pytest.raises(
        ValueError, match=re.escape("fgd_loss: 1 box tensors for a batch of 2 (features (2, 4, 3, 3))")
    ):
        fgd_loss(s, s, _BOXES[:1], 4, lambda_=0.0)
    with pytest.raises(ValueError, match=re.escape("fgd_loss: 2 stride values for 1 levels")):
        fgd_loss([s], [s], _BOXES, [4, 8], lambda_=0.0)
    with pytest.raises(
        ValueError, match=re.escape("student features (2, 4, 3, 3) and teacher features (2, 4, 3, 4)")
    ):
        fgd_loss(s, torch.zeros(2, 4, 3, 4), _BOXES, 4, lambda_=0.0)
    with pytest.raises(ValueError, match=re.escape("fgd_loss: features must be (B, C, H, W), got (2, 4, 9)")):
        fgd_loss(torch.zeros(2, 4, 9), torch.zeros(2, 4, 9), _BOXES, 4, lambda_=0.0)
