"""What every method gets from the runner (data, teacher, where to put jobs) and gives back."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from kdistill.config import RunConfig, TrainConfig
from kdistill.data.vision import ClassificationData
from kdistill.evaluation.metrics import accuracy
from kdistill.io import atomic_write_text
from kdistill.models import build_model
from kdistill.registry import Registry
from kdistill.training.loop import LossFn, train
from kdistill.training.taps import FeatureTap

ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass
class TrainedModel:
    name: str  # shown in tables, e.g. "student (distilled)"
    role: str  # teacher | scratch | distilled
    model: nn.Module
    seed: int
    history: list[dict[str, Any]] = field(default_factory=list)
    extra_params: int = 0


@dataclass
class RunContext:
    cfg: RunConfig
    data: ClassificationData
    teacher: nn.Module  # frozen, eval mode, on device
    device: torch.device
    run_dir: Path
    progress: ProgressFactory
    stop_after: int | None = None  # tests: interrupt every job after this many steps

    def new_student(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(self.cfg.student.arch, self.data.input_shape, self.data.num_classes).to(
            self.device
        )

    def transfer_set(self) -> tuple[Tensor, Tensor]:
        """Training inputs plus extra unlabeled inputs; targets -1 where the student has no label."""
        x = torch.cat([self.data.x_train, self.data.x_extra])
        y = torch.cat([self.data.student_targets(), torch.full((len(self.data.x_extra),), -1)])
        return x.to(self.device), y.to(self.device)

    def evaluator(self, model: nn.Module) -> Callable[[], float]:
        x, y = self.data.x_test.to(self.device), self.data.y_test.to(self.device)

        def evaluate() -> float:
            model.eval()
            with torch.inference_mode():
                return accuracy(model(x), y)

        return evaluate

    def run_job(
        self,
        job_id: str,
        module: nn.Module,
        loss_fn: LossFn,
        *,
        x: Tensor,
        target: Tensor,
        seed: int,
        evaluate: Callable[[], float] | None,
        train_cfg: TrainConfig | None = None,
    ) -> list[dict[str, Any]]:
        """Train `module` as job `job_id` of the run, or load it if that job already finished."""
        return run_job(
            self.run_dir / "jobs" / job_id,
            module,
            loss_fn,
            x=x,
            target=target,
            seed=seed,
            cfg=train_cfg or self.cfg.train,
            evaluate=evaluate,
            on_step=self.progress(job_id, (train_cfg or self.cfg.train).steps),
            stop_after=self.stop_after,
        )


class JobInterrupted(RuntimeError):
    """A job stopped before its last step (only when a test asks for it with stop_after)."""


def run_job(
    job_dir: Path,
    module: nn.Module,
    loss_fn: LossFn,
    *,
    x: Tensor,
    target: Tensor,
    seed: int,
    cfg: TrainConfig,
    evaluate: Callable[[], float] | None = None,
    on_step: Callable[[int], None] | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Idempotent training job: `model.safetensors` + `result.json` mark it done, checkpoints resume it."""
    weights, result = job_dir / "model.safetensors", job_dir / "result.json"
    if result.is_file():
        module.load_state_dict(load_file(str(weights), device=str(next(module.parameters()).device)))
        module.eval()
        if on_step is not None:
            on_step(cfg.steps)  # finished in an earlier session: show it as done
        return json.loads(result.read_text())["history"]
    job_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    history = train(
        module,
        loss_fn,
        x=x,
        target=target,
        cfg=cfg,
        seed=seed,
        checkpoint_dir=job_dir / "checkpoints",
        evaluate=evaluate,
        on_step=on_step,
        stop_after=stop_after,
    )
    if not history or history[-1]["step"] < cfg.steps:
        raise JobInterrupted(f"job {job_dir.name} stopped early")
    tmp = weights.with_name(".tmp-model.safetensors")
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    atomic_write_text(result, json.dumps({"history": history}))
    return history


def feature_shapes(model: nn.Module, paths: list[str], example: Tensor) -> dict[str, tuple[int, ...]]:
    """Per-sample output shapes of the tapped modules, from one forward pass on an example batch."""
    if not paths:
        return {}
    was_training = model.training
    model.eval()
    with torch.no_grad(), FeatureTap(model, paths) as tap:
        model(example)
    model.train(was_training)
    return {p: tuple(f.shape[1:]) for p, f in tap.features.items()}


Method = Callable[[RunContext, int], list[TrainedModel]]
METHODS: Registry[Method] = Registry("method")
