"""Numerics shared by every loss family, written once."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or wider if an input is wider: float16/bfloat16 are upcast, float64 is kept."""
    dtype = torch.float32
    for x in tensors:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def log_softmax_rows(logits: Tensor, mask: Tensor | None, temperature: float, dtype: torch.dtype) -> Tensor:
    """log softmax(logits / T) in `dtype`: (..., V) -> (..., V); masked rows are zeroed first.

    mask: (...) bool, True = the row counts, or None. Zeroing (not just ignoring) masked rows keeps NaN/inf
    garbage there out of the forward *and* backward pass: the gradient reaching the garbage through
    torch.where is exactly 0.
    """
    z = logits.to(dtype)
    if mask is not None:
        z = torch.where(mask.unsqueeze(-1), z, torch.zeros((), dtype=dtype, device=z.device))
    if temperature != 1.0:  # x / 1 == x: skip a (..., V) copy
        z = z / temperature
    return F.log_softmax(z, dim=-1)


def safe_logsumexp(x: Tensor, dim: int) -> Tensor:
    """logsumexp over `dim` (removed) that is -inf, with zero gradient rather than NaN, for a slice that is
    entirely -inf."""
    empty = (x == -math.inf).all(dim=dim, keepdim=True)
    x = torch.where(empty, torch.zeros((), dtype=x.dtype, device=x.device), x)
    out = torch.logsumexp(x, dim=dim, keepdim=True)
    out = torch.where(empty, torch.full((), -math.inf, dtype=x.dtype, device=x.device), out)
    return out.squeeze(dim)


def flat_pair(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Batch-first student and teacher tensors as (B, D_s), (B, D_t) in the compute dtype.

    (B, ...) -> (B, D): everything after the batch dimension is flattened; the batch sizes must match (the
    widths may differ). Used by the relation losses, which compare the in-batch geometry of the two sides.
    """
    if student.ndim == 0 or teacher.ndim == 0 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"batch sizes differ: student {tuple(student.shape)}, teacher {tuple(teacher.shape)}"
        )
    dtype = compute_dtype(student, teacher)
    return student.to(dtype).flatten(1), teacher.to(dtype).flatten(1)
