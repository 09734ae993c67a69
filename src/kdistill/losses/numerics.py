"""Numerics shared by every loss family, written once."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or wider if an input is wider: float16/bfloat16 are upcast, float64 is kept."""
    dtype = torch.float32
    for x in tensors:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype
