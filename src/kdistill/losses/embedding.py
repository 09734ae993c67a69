"""Sentence-embedding losses: a student's text embeddings against a teacher's, one row per text.

    embedding_cosine:       mean_i  1 - cos(s_i, t_i)                               (direction only)
    embedding_mse:          mean_i  mean_d (s_id - t_id)^2                          (= mean over B*D)
    similarity_matrix_loss: mean_{i != j} (cos(s_i, s_j) - cos(t_i, t_j))^2         (in-batch structure)

student_emb (B, D_s) and teacher_emb (B, D_t), row i = text i on both sides. The first two compare rows
one to one and need D_s == D_t: project the student first (a learned nn.Linear, owned by the method, when
the widths differ). The relation losses (`similarity_matrix_loss`, and `rkd_distance` / `rkd_angle` from
`kdistill.losses.relation`, reused here) compare the in-batch geometry and take any widths. Computed in
float32 (float64 stays float64); the teacher side is not detached here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.hidden import hidden_cosine, hidden_mse
from kdistill.losses.numerics import flat_pair
from kdistill.losses.relation import rkd_angle, rkd_distance
from kdistill.losses.spec import LOSSES, LossSpec

__all__ = [
    "EMBEDDING_LOSSES",
    "ROW_WISE",
    "embedding_cosine",
    "embedding_mse",
    "similarity_matrix_loss",
]


def _check_rows(student_emb: Tensor, teacher_emb: Tensor) -> None:
    if student_emb.ndim != 2 or teacher_emb.ndim != 2 or student_emb.shape[0] != teacher_emb.shape[0]:
        raise ValueError(
            "expected (B, D) embeddings with the same B, got student "
            f"{tuple(student_emb.shape)} and teacher {tuple(teacher_emb.shape)}"
        )
    if student_emb.shape[1] != teacher_emb.shape[1]:
        raise ValueError(
            f"student width {student_emb.shape[1]} != teacher width {teacher_emb.shape[1]}: "
            "project the student embedding to the teacher's width first"
        )


def embedding_cosine(student_emb: Tensor, teacher_emb: Tensor, *, reduction: str = "mean") -> Tensor:
    """1 - cos(s_i, t_i) per text (0 = same direction, 2 = opposite).

    Reduction: "mean" over the B texts (default), "sum", or "none" (a (B,) tensor). Blind to the norm of
    either embedding, so it suits teachers whose embeddings are normalised anyway.
    """
    _check_rows(student_emb, teacher_emb)
    return hidden_cosine(student_emb, teacher_emb, reduction=reduction)


def embedding_mse(student_emb: Tensor, teacher_emb: Tensor, *, reduction: str = "mean") -> Tensor:
    """mean_d (s_id - t_id)^2 per text: the squared error divided by the width D.

    Reduction: "mean" over the B texts (default; equals the mean over all B*D elements, as
    `F.mse_loss`), "sum" over texts (of the per-text means), or "none" (a (B,) tensor).
    """
    _check_rows(student_emb, teacher_emb)
    return hidden_mse(student_emb, teacher_emb, reduction=reduction)


def _cosine_matrix(e: Tensor) -> Tensor:
    # (B, D) -> (B, B): cos(e_i, e_j); a zero row has cosine 0 with everything
    unit = F.normalize(e, p=2, dim=1, eps=1e-12)
    return unit @ unit.T


def similarity_matrix_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """MSE between the in-batch cosine-similarity matrices of student and teacher.

    C_S[i, j] = cos(s_i, s_j),  C_T[i, j] = cos(t_i, t_j)
    loss = (1 / (B (B - 1))) * sum_{i != j} (C_S[i, j] - C_T[i, j])^2

    student_emb (B, D_s), teacher_emb (B, D_t); widths may differ. As a registered relation loss it also
    takes features (B, ...), flattened to (B, D) like the other relation losses.
    Reduction: mean over the B(B-1) ordered off-diagonal pairs (the diagonal is 1 on both sides and
    carries no signal); a batch of one gives 0. Invariant to per-text scales of either embedding.
    Returns a 0-dim tensor.
    """
    s, t = flat_pair(student_emb, teacher_emb)
    diff = _cosine_matrix(s) - _cosine_matrix(t)  # (B, B)
    b = diff.shape[0]
    off_diagonal = ~torch.eye(b, dtype=torch.bool, device=diff.device)
    return diff.pow(2).masked_fill(~off_diagonal, 0.0).sum() / max(b * (b - 1), 1)


EMBEDDING_LOSSES = {
    "cosine": embedding_cosine,
    "mse": embedding_mse,
    "similarity_matrix": similarity_matrix_loss,
    "rkd_distance": rkd_distance,
    "rkd_angle": rkd_angle,
}
"""Every sentence-embedding loss by its config name: fn(student_emb (B, D_s), teacher_emb (B, D_t))."""

ROW_WISE = frozenset({"cosine", "mse"})
"""The losses that compare text i with text i and so need a projection when the widths differ."""

LOSSES.add(
    "similarity_matrix",
    LossSpec(fn=similarity_matrix_loss, role="relation"),
    "MSE between in-batch cosine-similarity matrices of student and teacher, mean over B(B-1) pairs",
)
