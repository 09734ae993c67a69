"""Configured loss terms -> named, weighted tensors. Owns what the terms train: the adapters of feature
terms and the loss modules of "module" terms (e.g. CRD's heads and memory banks)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdistill.classic.adapters import Adapter
from kdistill.classic.config import LossTerm
from kdistill.losses import LOSSES

PREFIX = {"label": "", "response": "kd/", "feature": "feat/", "relation": "rel/", "module": "feat/"}


def term_names(terms: Sequence[LossTerm]) -> list[str]:
    """Log names such as `ce`, `kd/hinton_kd`, `feat/fitnet_hint@block2`; unique within a config."""
    names = []
    for t in terms:
        spec = LOSSES.get(t.name)
        name = "ce" if t.name == "cross_entropy" else PREFIX[spec.role] + t.name
        if t.student_layer:
            name += f"@{t.student_layer}"
        while name in names:
            name += "'"
        names.append(name)
    return names


class LossTerms(nn.Module):
    """Evaluates every configured term on the tensors of one batch.

    `student_shapes`/`teacher_shapes` (per-sample feature shapes by module path) decide the adapters; an
    adapter is built only for a term that needs one and only when the shapes differ. A "module" term's
    registered factory builds its module from those shapes and `num_samples`, the size of the training set
    that `index` points into.
    """

    def __init__(
        self,
        terms: Sequence[LossTerm],
        student_shapes: dict[str, tuple[int, ...]] | None = None,
        teacher_shapes: dict[str, tuple[int, ...]] | None = None,
        num_samples: int | None = None,
    ) -> None:
        super().__init__()
        self.terms = list(terms)
        self.names = term_names(self.terms)
        self.adapters = nn.ModuleDict()
        self.loss_modules = nn.ModuleDict()  # the modules of "module" terms
        for name, t in zip(self.names, self.terms, strict=True):
            spec = LOSSES.get(t.name)
            if spec.needs_adapter or spec.role == "module":
                s_shape = student_shapes[t.student_layer]
                t_shape = teacher_shapes[t.teacher_layer]
            if spec.needs_adapter and s_shape != t_shape:
                self.adapters[self._key(name)] = Adapter(s_shape, t_shape)
            if spec.role == "module":
                if num_samples is None:
                    raise ValueError(f"loss {t.name!r} keeps per-sample state: give LossTerms num_samples")
                self.loss_modules[self._key(name)] = spec.fn(s_shape, t_shape, num_samples, **t.params)

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "_").replace("/", "__").replace("@", "_at_").replace("'", "_")

    def student_layers(self) -> list[str]:
        return [t.student_layer for t in self.terms if t.student_layer]

    def teacher_layers(self) -> list[str]:
        return [t.teacher_layer for t in self.terms if t.teacher_layer]

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        target: Tensor,
        student_features: dict[str, Tensor] | None = None,
        teacher_features: dict[str, Tensor] | None = None,
        index: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Every term of one batch, weighted; `index` (B,) = the samples' positions (module terms)."""
        out: dict[str, Tensor] = {}
        for name, t in zip(self.names, self.terms, strict=True):
            spec = LOSSES.get(t.name)
            if spec.role == "label":
                value = spec.fn(student_logits, target, **t.params)
            elif spec.role == "response":
                kwargs = dict(t.params)
                if spec.needs_target:
                    # unlabeled samples (target -1) take the teacher's top-1 class as their target
                    kwargs["target"] = target.where(target >= 0, teacher_logits.argmax(-1))
                value = spec.fn(student_logits, teacher_logits, **kwargs)
            elif spec.role == "module":
                s, tt = student_features[t.student_layer], teacher_features[t.teacher_layer]
                value = self.loss_modules[self._key(name)](s, tt, index)
            else:
                s = student_features[t.student_layer] if t.student_layer else student_logits
                tt = teacher_features[t.teacher_layer] if t.teacher_layer else teacher_logits
                key = self._key(name)
                if key in self.adapters:
                    s = self.adapters[key](s)
                value = spec.fn(s, tt, **t.params)
            out[name] = t.weight * value
        return out

    def extra_parameters(self) -> int:
        """Parameters trained alongside the student and discarded afterwards (adapters, loss modules)."""
        return sum(p.numel() for p in self.adapters.parameters()) + sum(
            p.numel() for p in self.loss_modules.parameters()
        )
