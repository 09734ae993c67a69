"""Learned adapters that map a student feature to the teacher's feature shape (FitNet regressors)."""

from __future__ import annotations

from torch import Tensor, nn


class Adapter(nn.Module):
    """1x1 conv (feature maps) or linear (vectors) from student channels to teacher channels.

    Spatial sizes that differ are matched by adaptive average pooling of the student map, so the adapter
    is cheap and has no spatial parameters.
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
        super().__init__()
        if len(student_shape) != len(teacher_shape):
            raise ValueError(
                f"cannot adapt a feature of shape {student_shape} to {teacher_shape}: different number of dims"
            )
        self.teacher_shape = tuple(teacher_shape)
        dims = len(student_shape) - 1  # shapes exclude the batch dim: (C,), (C, L) or (C, H, W)
        cs, ct = student_shape[0], teacher_shape[0]
        if dims == 0:
            self.proj: nn.Module = nn.Linear(cs, ct)
            self.pool: nn.Module = nn.Identity()
        elif dims == 1:
            self.proj = nn.Conv1d(cs, ct, 1)
            same = student_shape[1:] == teacher_shape[1:]
            self.pool = nn.Identity() if same else nn.AdaptiveAvgPool1d(teacher_shape[1])
        elif dims == 2:
            self.proj = nn.Conv2d(cs, ct, 1)
            same = student_shape[1:] == teacher_shape[1:]
            self.pool = nn.Identity() if same else nn.AdaptiveAvgPool2d(tuple(teacher_shape[1:]))
        else:
            raise ValueError(f"no adapter for features of shape {student_shape}")

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.pool(x))
