"""What the engine needs to know about a loss to feed it: which tensors it takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from kdistill.registry import Registry

Role = Literal["label", "response", "feature", "relation"]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss term.

    role decides the call:
      label:    fn(student_logits, target)                              (target -1 = unlabeled, ignored)
      response: fn(student_logits, teacher_logits, **params)            (+ target=... if needs_target)
      feature:  fn(student_feature, teacher_feature, **params)          (tapped by module name)
      relation: fn(student_feature, teacher_feature, **params)          (tapped, or the logits by default)
    needs_adapter: the student feature goes through a learned adapter to the teacher's shape first.
    """

    fn: Callable[..., Tensor]
    role: Role
    needs_target: bool = False
    needs_adapter: bool = False


LOSSES: Registry[LossSpec] = Registry("loss")
