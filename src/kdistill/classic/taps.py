"""Capture intermediate outputs by module path with forward hooks: no model is rewritten."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from types import TracebackType

from torch import Tensor, nn


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP/FSDP-style wrappers (they keep it as `.module`)."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    modules = dict(unwrap(model).named_modules())
    if path not in modules:
        close = difflib.get_close_matches(path, [n for n in modules if n], n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"no module {path!r} in {type(unwrap(model)).__name__}{hint}")
    return modules[path]


class FeatureTap:
    """Context manager: while inside, `tap.features[path]` holds the latest output of each tapped module.

    >>> with FeatureTap(model, ["block2"]) as tap:
    ...     logits = model(x)
    ...     f = tap.features["block2"]
    Hooks are removed on exit, also when the body raises.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str]) -> None:
        self.modules = {p: resolve_module(model, p) for p in dict.fromkeys(paths)}
        self.features: dict[str, Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> FeatureTap:
        for path, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(path)))
        return self

    def _hook(self, path: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"module {path!r} returned {type(output).__name__}; only tensor outputs can be tapped"
                )
            self.features[path] = output

        return hook

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
