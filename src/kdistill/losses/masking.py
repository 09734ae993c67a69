"""The masked token reduction shared by every per-token loss (token divergences, hidden-state matching).

A per-token loss gives one value per position, shape (...) = the inputs' leading shape ((B, S) or (N,)).
`mask` is bool with that shape, True = this token counts, None = every position counts. Reductions:
  "mean" (default): sum over unmasked tokens / number of unmasked tokens (clamped at >= 1, so an all-masked
                    batch gives exactly 0 with zero gradients). If `num_tokens` is given (int or 0-dim
                    tensor) it is the divisor instead (also clamped at >= 1): pass the unmasked-token count
                    of the whole gradient-accumulation window, summed over processes, so that summing the
                    micro-batch losses gives the full-batch mean.
  "sum":            sum over unmasked tokens.
  "none":           the per-token values, exactly 0 at masked positions.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str, num_tokens: int | Tensor | None) -> None:
    """Raise ValueError unless `reduction` is one of REDUCTIONS and `num_tokens` (only with "mean") is a
    non-negative int or a 0-dim tensor."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if num_tokens is not None:
        if reduction != "mean":
            raise ValueError(f"num_tokens only applies to reduction='mean', got reduction={reduction!r}")
        if isinstance(num_tokens, Tensor):
            if num_tokens.ndim != 0:
                raise ValueError(
                    f"num_tokens must be an int or a 0-dim tensor, got shape {tuple(num_tokens.shape)}"
                )
        elif num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")


def check_mask(
    mask: Tensor | None, positions: torch.Size, inputs_name: str, inputs_shape: torch.Size
) -> None:
    """Raise ValueError unless `mask` is None or a bool tensor of shape `positions` (the leading shape of
    the input called `inputs_name`, of shape `inputs_shape`, named in the message)."""
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.shape != positions:
        raise ValueError(
            f"mask {tuple(mask.shape)} does not match {inputs_name} {tuple(inputs_shape)}: "
            f"expected mask of shape {tuple(positions)} (the leading shape of {inputs_name})"
        )


def reduce_tokens(
    per_token: Tensor, mask: Tensor | None, reduction: str, num_tokens: int | Tensor | None
) -> Tensor:
    """Reduce per-token values over the unmasked tokens, as the module docstring says.

    per_token: (...) value per position; mask: (...) bool or None. Masked positions are set to exactly
    0 (torch.where, so NaN there cannot leak), then "none" returns them, "sum" sums, and "mean" divides the
    sum by num_tokens if given, else by the number of unmasked positions; both divisors clamped at >= 1.
    """
    if mask is not None:
        per_token = torch.where(
            mask, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device)
        )
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    if num_tokens is None:
        count = mask.sum() if mask is not None else torch.tensor(per_token.numel(), device=total.device)
    elif isinstance(num_tokens, Tensor):
        count = num_tokens.to(device=total.device)
    else:
        count = torch.tensor(num_tokens, device=total.device)
    return total / count.to(total.dtype).clamp_min(1)
