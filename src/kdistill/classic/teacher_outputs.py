"""The frozen teacher's logits and tapped features for a batch: cached once, or computed live."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdistill.classic.loop import Batch
from kdistill.classic.taps import FeatureTap


class TeacherOutputs:
    """Teacher outputs for training batches.

    cache=True runs the teacher once over the whole training set (in chunks, no grad) and then serves each
    batch by its indices, so epochs never re-run the teacher. cache=False runs it on every batch, which is
    what input augmentation would need. Both give the same tensors.
    """

    def __init__(
        self, teacher: nn.Module, x: Tensor, layers: list[str], *, cache: bool, chunk: int = 512
    ) -> None:
        self.teacher = teacher.eval()
        self.layers = list(dict.fromkeys(layers))
        self.cached: tuple[Tensor, dict[str, Tensor]] | None = None
        if cache:
            outs = [self._forward(x[i : i + chunk]) for i in range(0, len(x), chunk)]
            logits = torch.cat([o[0] for o in outs])
            feats = {p: torch.cat([o[1][p] for o in outs]) for p in self.layers}
            self.cached = (logits, feats)

    def _forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.no_grad(), FeatureTap(self.teacher, self.layers) as tap:
            logits = self.teacher(x)
        return logits, dict(tap.features)

    def __call__(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        if self.cached is None:
            return self._forward(batch.x)
        logits, feats = self.cached
        idx = batch.index.to(logits.device)
        return logits[idx], {p: f[idx] for p, f in feats.items()}
