"""Relation-based losses: match the structure *between* samples of a batch (RKD, similarity preserving).

Inputs are embeddings or features with the batch first; anything beyond 2-D is flattened to (B, D).
Student and teacher dimensions may differ; batch sizes must match. Computed in float32 (float64 stays).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.numerics import flat_pair
from kdistill.losses.spec import LOSSES, LossSpec

_EPS = 1e-12  # floor of a squared distance before sqrt (as in the official RKD code) and of a mean distance


def _pairwise_distances(e: Tensor) -> Tensor:
    """Euclidean distances within the batch: (B, D) -> (B, B), diagonal exactly 0.

    The squared distance is floored at _EPS before sqrt, so coinciding samples get a finite (zero)
    gradient instead of the inf of sqrt'(0).
    """
    sq_norms = e.pow(2).sum(dim=1)  # (B,)
    d2 = (sq_norms.unsqueeze(1) + sq_norms.unsqueeze(0) - 2 * e @ e.T).clamp_min(_EPS)  # (B, B)
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d2.sqrt().masked_fill(eye, 0.0)


def _normalised_distances(e: Tensor) -> Tensor:
    # (B, D) -> (B, B): distances divided by their mean over the B(B-1) off-diagonal pairs
    d = _pairwise_distances(e)
    n_pairs = max(d.shape[0] * (d.shape[0] - 1), 1)
    return d / (d.sum() / n_pairs).clamp_min(_EPS)


def rkd_distance(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD distance loss, Park et al., CVPR 2019 (arXiv:1904.05068).

    psi(e_i, e_j) = ||e_i - e_j||_2 / mu,   mu = mean of ||e_i - e_j||_2 over pairs i != j
    loss = (1 / B^2) * sum_{i, j} huber(psi_S(i, j) - psi_T(i, j)),   huber = smooth_l1 with delta 1

    student_emb: (B, D_s, ...), teacher_emb: (B, D_t, ...); flattened to (B, D).
    Reduction: mean over all B^2 entries of the distance matrix, as the official code does (the diagonal
    is 0 on both sides and adds 0, so this is (B-1)/B times the mean over off-diagonal pairs).
    Stopping the teacher's gradient is the caller's business. Invariant to a global scale of either
    embedding. A batch of one gives 0. Returns a 0-dim tensor.
    """
    s, t = flat_pair(student_emb, teacher_emb)
    return F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t), beta=1.0)


def _triplet_cosines(e: Tensor) -> Tensor:
    """cos of the angle at vertex i of (e_j, e_i, e_k): (B, D) -> (B, B, B), entry [i, j, k].

    Degenerate triplets (j == i or k == i) have a zero difference vector; F.normalize maps it to 0, so
    those entries are 0 on both sides, as in the official code.
    """
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # (B, B, D): [i, j] = unit(e_j - e_i)
    return diff @ diff.transpose(1, 2)  # (B, B, B)


def rkd_angle(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD angle loss, Park et al., CVPR 2019 (arXiv:1904.05068).

    psi(e_i, e_j, e_k) = <(e_j - e_i) / ||e_j - e_i||, (e_k - e_i) / ||e_k - e_i||>
    loss = (1 / B^3) * sum_{i, j, k} huber(psi_S(i, j, k) - psi_T(i, j, k)),   huber = smooth_l1, delta 1

    student_emb: (B, D_s, ...), teacher_emb: (B, D_t, ...); flattened to (B, D).
    Reduction: mean over all B^3 triplets, degenerate ones included (they are 0 on both sides), as in the
    official code. Memory is O(B^2 D). Invariant to scaling and translating either embedding.
    Returns a 0-dim tensor.
    """
    s, t = flat_pair(student_emb, teacher_emb)
    return F.smooth_l1_loss(_triplet_cosines(s), _triplet_cosines(t), beta=1.0)


def _row_normalised_gram(f: Tensor) -> Tensor:
    # (B, D) -> (B, B): G = F F^T with each row scaled to unit L2 norm
    return F.normalize(f @ f.T, p=2, dim=1)


def similarity_preserving(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Similarity-preserving KD, Tung & Mori, ICCV 2019 (arXiv:1907.09682).

    G = F F^T with F the features flattened to (B, D), each row of G L2-normalised
    loss = ||G_S - G_T||_F^2 / B^2

    student_feature: (B, ...), teacher_feature: (B, ...); feature sizes may differ.
    Reduction: squared Frobenius norm divided by B^2 (the mean over the B^2 entries). Invariant to a
    global positive (indeed any non-zero) scale of either feature, not to per-sample scales.
    Returns a 0-dim tensor.
    """
    s, t = flat_pair(student_feature, teacher_feature)
    return (_row_normalised_gram(s) - _row_normalised_gram(t)).pow(2).sum() / s.shape[0] ** 2


LOSSES.add(
    "rkd_distance",
    LossSpec(fn=rkd_distance, role="relation"),
    "RKD distance (Park et al., CVPR 2019): Huber between mean-normalised pairwise distances, mean over B^2",
)
LOSSES.add(
    "rkd_angle",
    LossSpec(fn=rkd_angle, role="relation"),
    "RKD angle (Park et al., CVPR 2019): Huber between triplet angle cosines, mean over B^3",
)
LOSSES.add(
    "similarity_preserving",
    LossSpec(fn=similarity_preserving, role="relation"),
    "similarity-preserving KD (Tung & Mori, ICCV 2019): ||G_s - G_t||_F^2 / B^2 of row-normalised Gram matrices",
)
