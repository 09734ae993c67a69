"""Box geometry shared by training (target assignment, NMS) and evaluation (matching): plain torch, so a
detector trains without the evaluation's dependencies."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["box_iou"]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), x1 y1 x2 y2 -> (N, M).

    Two boxes whose union has no area (both degenerate) have IoU 0, not NaN.
    """
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)  # (N,)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)  # (M,)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    intersection = (bottom_right - top_left).clamp_min(0).prod(dim=-1)  # (N, M)
    union = area_a[:, None] + area_b[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp_min(torch.finfo(union.dtype).tiny), 0.0)
