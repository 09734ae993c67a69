"""The baseline every distilled student is compared with: the same architecture, trained on the labels alone."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.methods.base import RunContext, TrainedModel
from kdistill.training.loop import Batch


class LabelsOnly(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(self.model(batch.x), batch.target)}


def train_scratch(ctx: RunContext, seed: int) -> TrainedModel:
    """Student architecture trained with cross-entropy on the labeled training samples only."""
    labeled = ctx.data.labeled
    x = ctx.data.x_train[labeled].to(ctx.device)
    y = ctx.data.y_train[labeled].to(ctx.device)
    student = ctx.new_student(seed)
    wrapper = LabelsOnly(student)
    history = ctx.run_job(
        f"scratch-s{seed}", wrapper, wrapper, x=x, target=y, seed=seed, evaluate=ctx.evaluator(student)
    )
    return TrainedModel("student (scratch)", "scratch", student, seed, history)
