"""What every task's loop shares about steps: the data order (so the data position is the step number, and
a resume needs nothing but the step) and the error when a loss stops being finite."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class TrainingDiverged(RuntimeError):
    """A loss term became NaN/inf; the message names the terms and their values."""


def batch_indices(step: int, num_samples: int, batch_size: int, seed: int) -> Tensor:
    """Indices of the batch taken at `step` (0-based): a fresh seeded permutation each epoch."""
    per_epoch = math.ceil(num_samples / batch_size)
    epoch, position = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_samples, generator=gen)
    return order[position * batch_size : (position + 1) * batch_size]
