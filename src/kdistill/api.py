"""Distil any torch module into any other from Python, without a YAML file or a run directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdistill.classic.config import LossTerm, TrainConfig
from kdistill.classic.loop import train
from kdistill.classic.methods.offline import OfflineDistiller


def distill(
    teacher: nn.Module,
    student: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    loss: Sequence[LossTerm | dict[str, Any]] = ({"name": "cross_entropy"}, {"name": "hinton_kd"}),
    train_config: TrainConfig | dict[str, Any] | None = None,
    seed: int = 0,
    cache_teacher: bool = True,
    checkpoint_dir: Path | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train `student` from the frozen `teacher` on inputs `x` (labels `target`, -1 = unlabeled).

    `loss` takes the same terms as a config's `loss:` list, e.g.
    `{"name": "fitnet_hint", "weight": 0.5, "student_layer": "layer2", "teacher_layer": "layer3"}`;
    layers are module paths of your own models. Returns the trained student (in eval mode) and the
    history (one entry per evaluation interval, each term's mean value). Adapters that feature terms learn
    and the modules of module terms (CRD's heads and memory banks, which index the rows of `x`) are
    training-time parts and are not returned. With `checkpoint_dir`, an interrupted call resumes.
    """
    terms = [t if isinstance(t, LossTerm) else LossTerm.model_validate(t) for t in loss]
    cfg = (
        train_config
        if isinstance(train_config, TrainConfig)
        else TrainConfig.model_validate(train_config or {})
    )
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    distiller = OfflineDistiller(student, teacher, terms, x, cache=cache_teacher)
    history = train(
        distiller, distiller, x=x, target=target, cfg=cfg, seed=seed, checkpoint_dir=checkpoint_dir
    )
    return student.eval(), history
