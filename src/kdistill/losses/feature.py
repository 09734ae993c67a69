"""Feature-based losses: terms between intermediate activations (FitNet hints, attention transfer).

Computed in float32 (float64 stays float64).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.numerics import compute_dtype
from kdistill.losses.spec import LOSSES, LossSpec


def fitnet_hint(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """FitNets hint loss, Romero et al., ICLR 2015 (arXiv:1412.6550).

    loss = mean over all elements of (r(s) - t)^2

    student_feature: the student feature already mapped to the teacher's shape by the engine's adapter
    (the regressor r); teacher_feature: same shape, any layout ((B, C, H, W), (B, T, D), ...).
    Reduction: mean over every element (batch, channels and positions). Returns a 0-dim tensor.
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"fitnet_hint needs equal shapes: adapted student feature {tuple(student_feature.shape)} vs "
            f"teacher feature {tuple(teacher_feature.shape)}"
        )
    dtype = compute_dtype(student_feature, teacher_feature)
    return F.mse_loss(student_feature.to(dtype), teacher_feature.to(dtype))


def attention_transfer(student_feature: Tensor, teacher_feature: Tensor, p: int = 2) -> Tensor:
    """Activation-based attention transfer, Zagoruyko & Komodakis, ICLR 2017 (arXiv:1612.03928).

    Q(A) = mean_c |A_c|^p, flattened per sample to (B, P), P = number of spatial positions
    q(A) = Q(A) / ||Q(A)||_2
    loss = (1 / (B * P)) * sum_b ||q(A_s)_b - q(A_t)_b||_2^2

    This is the official implementation, `(at(x) - at(y)).pow(2).mean()`, i.e. the squared distance of the
    unit-norm maps averaged over batch *and* spatial positions (the paper's beta/2 factor is a loss weight
    and lives in the config). |A| instead of A matches the paper and equals the official code for even p.

    student_feature: (B, C_s, H, W) or (B, C_s, L); teacher_feature: (B, C_t, H', W') or (B, C_t, L').
    Channels may differ. If the spatial sizes differ, each spatial dimension of the larger map is
    adaptive-average-pooled *before* the attention map down to the smaller size (as mdistiller does), so P
    is the number of positions after pooling. Default p = 2. Returns a 0-dim tensor.
    """
    if student_feature.ndim not in (3, 4) or student_feature.ndim != teacher_feature.ndim:
        raise ValueError(
            "attention_transfer needs two (B, C, H, W) or two (B, C, L) features, got student "
            f"{tuple(student_feature.shape)} and teacher {tuple(teacher_feature.shape)}"
        )
    if student_feature.shape[0] != teacher_feature.shape[0]:
        raise ValueError(
            f"batch sizes differ: student {tuple(student_feature.shape)}, teacher {tuple(teacher_feature.shape)}"
        )
    if p <= 0:
        raise ValueError(f"p must be > 0, got {p}")
    dtype = compute_dtype(student_feature, teacher_feature)
    s, t = _pool_to_common_size(student_feature.to(dtype), teacher_feature.to(dtype))
    return (_attention_map(s, p) - _attention_map(t, p)).pow(2).mean()


def _attention_map(feature: Tensor, p: int) -> Tensor:
    # (B, C, *spatial) -> (B, P): channel mean of |A|^p, unit L2 norm per sample
    return F.normalize(feature.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def _pool_to_common_size(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool each map to the per-dimension minimum spatial size (a no-op when equal)."""
    size = tuple(min(a, b) for a, b in zip(s.shape[2:], t.shape[2:], strict=True))
    pool = F.adaptive_avg_pool2d if s.ndim == 4 else F.adaptive_avg_pool1d
    if s.shape[2:] != size:
        s = pool(s, size)
    if t.shape[2:] != size:
        t = pool(t, size)
    return s, t


LOSSES.add(
    "fitnet_hint",
    LossSpec(fn=fitnet_hint, role="feature", needs_adapter=True),
    "FitNets hint (Romero et al. 2015): MSE between adapted student and teacher features, mean over elements",
)
LOSSES.add(
    "attention_transfer",
    LossSpec(fn=attention_transfer, role="feature"),
    "attention transfer (Zagoruyko & Komodakis 2017): MSE of L2-normalised spatial attention maps (p=2)",
)
