"""Offline distillation: a frozen teacher, a student trained on the configured loss terms.

With labeled_fraction < 1 (or extra unlabeled data) this is the transfer-set setting: the teacher's soft
labels cover every sample, the ground truth only the labeled ones (Hinton et al. 2015, section 3).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdistill.classic.config import LossTerm
from kdistill.classic.loop import Batch
from kdistill.classic.methods.base import METHODS, RunContext, TrainedModel, feature_shapes
from kdistill.classic.methods.terms import LossTerms
from kdistill.classic.taps import FeatureTap
from kdistill.classic.teacher_outputs import TeacherOutputs


class OfflineDistiller(nn.Module):
    """Student + the terms' adapters and loss modules (everything trained, their state checkpointed); the
    teacher signal stays outside the parameters. `x` is the training set the batch indices point into."""

    def __init__(
        self, student: nn.Module, teacher: nn.Module, terms: Sequence[LossTerm], x: Tensor, *, cache: bool
    ) -> None:
        super().__init__()
        self.student = student
        probe = x[:2]
        s_layers = [t.student_layer for t in terms if t.student_layer]
        t_layers = [t.teacher_layer for t in terms if t.teacher_layer]
        self.terms = LossTerms(
            terms,
            feature_shapes(student, s_layers, probe),
            feature_shapes(teacher, t_layers, probe),
            num_samples=len(x),
        ).to(next(student.parameters()).device)
        self.signal = TeacherOutputs(teacher, x, t_layers, cache=cache)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        teacher_logits, teacher_feats = self.signal(batch)
        with FeatureTap(self.student, self.terms.student_layers()) as tap:
            student_logits = self.student(batch.x)
        return self.terms(
            student_logits, teacher_logits, batch.target, tap.features, teacher_feats, index=batch.index
        )

    def extra_parameters(self) -> int:
        return self.terms.extra_parameters()


def distill_offline(
    ctx: RunContext, seed: int, teacher: nn.Module, job_id: str, name: str, student: nn.Module | None = None
) -> TrainedModel:
    x, target = ctx.transfer_set()
    student = student if student is not None else ctx.new_student(seed)
    distiller = OfflineDistiller(student, teacher, ctx.cfg.loss, x, cache=ctx.cfg.teacher.cache_outputs)
    history = ctx.run_job(
        job_id, distiller, distiller, x=x, target=target, seed=seed, evaluate=ctx.evaluator(student)
    )
    return TrainedModel(name, "distilled", student, seed, history, distiller.extra_parameters())


@METHODS.register(
    "offline", "frozen teacher -> student on the configured loss terms (transfer set when labels are few)"
)
def offline(ctx: RunContext, seed: int) -> list[TrainedModel]:
    return [distill_offline(ctx, seed, ctx.teacher, f"distilled-s{seed}", "student (distilled)")]
