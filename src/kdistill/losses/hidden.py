"""Per-token hidden-state matching for transformers: the student's (projected) states against the teacher's.

    hidden_mse:    per token  mean_d (h_s,d - h_t,d)^2                 (the width-normalised squared error)
    hidden_cosine: per token  1 - cos(h_s, h_t)                         (scale-free: only the direction)

Shapes: student_hidden and teacher_hidden (B, S, D) or (N, D), the same D (project the student first when
the widths differ); mask bool with the leading shape, True = the token counts. Reduction as the token
divergences (`kdistill.losses.masking`): "mean" = sum over unmasked tokens / their count (or / num_tokens),
"sum", "none". Computed in float32 (float64 stays float64). The teacher side is not detached here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.masking import check_mask, check_reduction, reduce_tokens
from kdistill.losses.numerics import compute_dtype


def _check(
    student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None, reduction: str, num_tokens
) -> None:
    check_reduction(reduction, num_tokens)
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"student_hidden {tuple(student_hidden.shape)} and teacher_hidden {tuple(teacher_hidden.shape)} "
            "differ: project the student to the teacher's width first"
        )
    check_mask(mask, student_hidden.shape[:-1], "student_hidden", student_hidden.shape)


def hidden_mse(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    *,
    mask: Tensor | None = None,
    reduction: str = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """Mean over the hidden width of the squared difference, per token; reduced over unmasked tokens."""
    _check(student_hidden, teacher_hidden, mask, reduction, num_tokens)
    dtype = compute_dtype(student_hidden)
    per_token = (student_hidden.to(dtype) - teacher_hidden.to(dtype)).pow(2).mean(dim=-1)
    return reduce_tokens(per_token, mask, reduction, num_tokens)


def hidden_cosine(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    *,
    mask: Tensor | None = None,
    reduction: str = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """1 - cosine similarity per token (0 when the directions agree, 2 when opposite); reduced as above."""
    _check(student_hidden, teacher_hidden, mask, reduction, num_tokens)
    dtype = compute_dtype(student_hidden)
    per_token = 1.0 - F.cosine_similarity(
        student_hidden.to(dtype), teacher_hidden.to(dtype), dim=-1, eps=1e-8
    )
    return reduce_tokens(per_token, mask, reduction, num_tokens)


HIDDEN_LOSSES = {"mse": hidden_mse, "cosine": hidden_cosine}
