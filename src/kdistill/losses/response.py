"""Response-based losses: terms on the class logits (label cross-entropy, Hinton KD, Decoupled KD).

Logits are (..., C): every leading position is one "row" (a sample, or a token), and "mean over rows" is
the batchmean of the papers for the usual (B, C) case. Softmaxes are taken in float32 (float64 stays
float64) and in log space throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.numerics import compute_dtype
from kdistill.losses.spec import LOSSES, LossSpec

UNLABELED = -1  # target value that marks a sample without a label


def _rows(logits: Tensor, dtype: torch.dtype) -> Tensor:
    # (..., C) -> (N, C), N = number of leading positions
    return logits.to(dtype).reshape(-1, logits.shape[-1])


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_same_shape(student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ in shape"
        )


def _kl_per_row(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) = sum_c p_c (log p_c - log q_c) per row, from log-probabilities: (N, C) -> (N,)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def cross_entropy(student_logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy with the labels, ignoring unlabeled samples.

    loss = (1 / |L|) * sum_{i in L} -log softmax(z_i)[y_i],   L = {i : y_i != -1}

    student_logits: (..., C); target: (...) integer class indices, -1 = unlabeled.
    Reduction: mean over labeled rows (sum / count.clamp_min(1)), so a batch with no label gives exactly 0
    with zero gradients instead of NaN. Returns a 0-dim tensor.
    """
    dtype = compute_dtype(student_logits)
    logits = _rows(student_logits, dtype)  # (N, C)
    target = target.reshape(-1)  # (N,)
    if target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target {tuple(target.shape)} does not match student logits {tuple(student_logits.shape)}"
        )
    nll_sum = F.cross_entropy(logits, target, ignore_index=UNLABELED, reduction="sum")
    n_labeled = (target != UNLABELED).sum().clamp_min(1)
    return nll_sum / n_labeled


def hinton_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531).

    loss = T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T))
         = T^2 * mean_i sum_c p^T_ic (log p^T_ic - log p^S_ic)

    student_logits, teacher_logits: (..., C), same shape.
    Reduction: KL summed over classes, mean over rows ("batchmean" for (B, C)), times T^2 so the gradient
    scale does not shrink as T grows. Default T = 4. Returns a 0-dim tensor.
    """
    _check_temperature(temperature)
    _check_same_shape(student_logits, teacher_logits)
    dtype = compute_dtype(student_logits, teacher_logits)
    log_p_s = F.log_softmax(_rows(student_logits, dtype) / temperature, dim=-1)  # (N, C)
    log_p_t = F.log_softmax(_rows(teacher_logits, dtype) / temperature, dim=-1)  # (N, C)
    return temperature**2 * _kl_per_row(log_p_t, log_p_s).mean()


def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD, Zhao et al., CVPR 2022 (arXiv:2203.08679): loss = alpha * TCKD + beta * NCKD.

    With p = softmax(z / T) for student (S) and teacher (T) and y the target class:
      b = (p_y, 1 - p_y)                                   binary target / non-target distribution
      TCKD = T^2 * mean_i KL(b^T_i || b^S_i)
      p_hat_c = p_c / (1 - p_y) for c != y                 distribution over the non-target classes
      NCKD = T^2 * mean_i KL(p_hat^T_i || p_hat^S_i)
    (Hinton KD = TCKD + (1 - p^T_y) * NCKD per sample; DKD frees the NCKD weight.)

    Same semantics as the official mdistiller implementation, but in log space: log b_nt is a logsumexp over
    the non-target logits, and p_hat is a log_softmax with the target logit set to -inf (not -1000).

    student_logits, teacher_logits: (..., C), C >= 2; target: (...) class indices, all labeled (-1 is an
    error: DKD is undefined without the target class).
    Reduction: each KL summed over its classes, mean over rows ("batchmean"), times T^2.
    Paper defaults (CIFAR-100): alpha = 1, beta = 8, T = 4 (the paper uses other betas on ImageNet).
    Returns a 0-dim tensor.
    """
    _check_temperature(temperature)
    _check_same_shape(student_logits, teacher_logits)
    n_classes = student_logits.shape[-1]
    if n_classes < 2:
        raise ValueError(f"dkd needs at least 2 classes, got logits {tuple(student_logits.shape)}")
    dtype = compute_dtype(student_logits, teacher_logits)
    z_s = _rows(student_logits, dtype) / temperature  # (N, C)
    z_t = _rows(teacher_logits, dtype) / temperature  # (N, C)
    target = target.reshape(-1)  # (N,)
    if target.shape[0] != z_s.shape[0]:
        raise ValueError(
            f"target {tuple(target.shape)} does not match student logits {tuple(student_logits.shape)}"
        )
    if bool(((target < 0) | (target >= n_classes)).any()):
        raise ValueError(f"dkd needs a class index in [0, {n_classes}) for every sample (-1 = unlabeled)")
    is_target = F.one_hot(target, n_classes).bool()  # (N, C)

    tckd = _kl_per_row(_log_binary(z_t, target, is_target), _log_binary(z_s, target, is_target)).mean()
    nckd = _kl_per_row(_log_non_target(z_t, is_target), _log_non_target(z_s, is_target)).mean()
    return temperature**2 * (alpha * tckd + beta * nckd)


def _log_binary(z: Tensor, target: Tensor, is_target: Tensor) -> Tensor:
    """(log p_y, log(1 - p_y)) of softmax(z): (N, C) -> (N, 2), without forming 1 - p_y."""
    log_total = torch.logsumexp(z, dim=-1)  # (N,)
    log_target = z.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (N,)
    log_other = z.masked_fill(is_target, float("-inf")).logsumexp(dim=-1)  # (N,)
    return torch.stack([log_target, log_other], dim=-1) - log_total.unsqueeze(-1)


def _log_non_target(z: Tensor, is_target: Tensor) -> Tensor:
    """log p_hat over the non-target classes: (N, C) -> (N, C), target entry 0 (KL term then 1 * 0 = 0).

    The target entry of the log_softmax is -inf; replacing it by 0 avoids 0 * (-inf) = NaN in the KL and
    in its gradient, and contributes exactly 0 since log p_hat^T - log p_hat^S = 0 - 0 there.
    """
    log_p_hat = F.log_softmax(z.masked_fill(is_target, float("-inf")), dim=-1)
    return log_p_hat.masked_fill(is_target, 0.0)


LOSSES.add(
    "cross_entropy",
    LossSpec(fn=cross_entropy, role="label"),
    "cross-entropy with the labels; mean over labeled samples (target -1 = unlabeled, ignored)",
)
LOSSES.add(
    "hinton_kd",
    LossSpec(fn=hinton_kd, role="response"),
    "Hinton et al. 2015 KD: T^2 * KL(teacher || student) of softened softmaxes, batchmean (temperature=4)",
)
LOSSES.add(
    "dkd",
    LossSpec(fn=dkd, role="response", needs_target=True),
    "Decoupled KD (Zhao et al., CVPR 2022): alpha*TCKD + beta*NCKD, batchmean (alpha=1, beta=8, temperature=4)",
)
