"""No distillation: the student trained on the labels alone, for a run that only wants the baseline.

The same job as the scratch baseline every other method is compared with, so `evaluation.compare_scratch`
adds nothing here (the recipe lists a model once).
"""

from __future__ import annotations

from kdistill.classic.methods.base import METHODS, RunContext, TrainedModel
from kdistill.classic.methods.scratch import train_scratch


@METHODS.register("none", "no distillation: the student trained from scratch on the labels only")
def none(ctx: RunContext, seed: int) -> list[TrainedModel]:
    return [train_scratch(ctx, seed)]
