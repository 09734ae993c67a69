"""Self-distillation, born-again networks (Furlanello et al. 2018): generation k+1 learns from generation k.

Generation 0 is the student architecture trained on the labels alone (the scratch baseline); each later
generation, same architecture, is distilled from the previous one with the configured loss terms.
"""

from __future__ import annotations

from torch import nn

from kdistill.classic.methods.base import METHODS, RunContext, TrainedModel
from kdistill.classic.methods.offline import distill_offline
from kdistill.classic.methods.scratch import train_scratch


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@METHODS.register(
    "born_again", "self-distillation: generation k+1 (same architecture) learns from generation k"
)
def born_again(ctx: RunContext, seed: int) -> list[TrainedModel]:
    previous = train_scratch(ctx, seed).model
    out = []
    for gen in range(1, ctx.cfg.method.generations + 1):
        teacher = _frozen(previous)
        result = distill_offline(
            ctx,
            seed,
            teacher,
            f"born-again-g{gen}-s{seed}",
            f"student (born-again gen {gen})",
            student=ctx.new_student(seed * 100 + gen),
        )
        out.append(result)
        previous = result.model
    return out
