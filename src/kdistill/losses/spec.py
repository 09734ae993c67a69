"""What the engine needs to know about a loss to feed it: which tensors it takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from kdistill.registry import Registry

Role = Literal["label", "response", "feature", "relation", "module"]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss term.

    role decides the call:
      label:    fn(student_logits, target)                              (target -1 = unlabeled, ignored)
      response: fn(student_logits, teacher_logits, **params)            (+ target=... if needs_target)
      feature:  fn(student_feature, teacher_feature, **params)          (tapped by module name)
      relation: fn(student_feature, teacher_feature, **params)          (tapped, or the logits by default)
      module:   fn(student_shape, teacher_shape, num_samples, **params) -> nn.Module, built once per
                training from the tapped features' per-sample shapes and the training-set size, then called
                as module(student_feature, teacher_feature, index) (index: (B,) sample positions). Its
                parameters train with the student and its buffers (e.g. a memory bank) are checkpointed.
    needs_adapter: the student feature goes through a learned adapter to the teacher's shape first.
    """

    fn: Callable[..., Any]
    role: Role
    needs_target: bool = False
    needs_adapter: bool = False


LOSSES: Registry[LossSpec] = Registry("loss")
