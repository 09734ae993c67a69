"""The baseline every distilled student is compared with: the same architecture, trained on the labels alone."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.classic.loop import Batch
from kdistill.classic.methods.base import RunContext, TrainedModel


class LabelsOnly(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(self.model(batch.x), batch.target)}


def train_scratch(ctx: RunContext, seed: int) -> TrainedModel:
    """Student architecture trained with cross-entropy on the labeled training samples only.

    Once per run and seed: the recipe's baseline, born-again's generation 0 and method `none` share it.
    """
    job_id = f"scratch-s{seed}"
    if job_id in ctx.finished:
        return ctx.finished[job_id]
    labeled = ctx.data.labeled
    x = ctx.data.x_train[labeled].to(ctx.device)
    y = ctx.data.y_train[labeled].to(ctx.device)
    student = ctx.new_student(seed)
    wrapper = LabelsOnly(student)
    history = ctx.run_job(job_id, wrapper, wrapper, x=x, target=y, seed=seed, evaluate=ctx.evaluator(student))
    ctx.finished[job_id] = TrainedModel("student (scratch)", "scratch", student, seed, history)
    return ctx.finished[job_id]
