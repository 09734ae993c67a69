"""What every method gets from the recipe (data, teacher, where to put jobs, the logger) and gives back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from kdistill.classic.config import RunConfig, TrainConfig
from kdistill.classic.data import ClassificationData
from kdistill.classic.loop import LossFn, train
from kdistill.classic.taps import FeatureTap
from kdistill.classic.zoo import build_model
from kdistill.evaluation.metrics import accuracy
from kdistill.io import atomic_save_safetensors, lock_directory
from kdistill.registry import Registry
from kdistill.runs.checkpoint import discard_checkpoints
from kdistill.runs.logger import JobLog, RunLogger
from kdistill.runs.markers import mark_done, read_done


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
    logger: RunLogger | None  # progress bars and trackers; None = silent
    stop_after: int | None = None  # tests: interrupt every job after this many steps
    finished: dict[str, TrainedModel] = field(default_factory=dict)  # by job id: a model trained once per run

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
        cfg = train_cfg or self.cfg.train
        return run_job(
            self.run_dir / "jobs" / job_id,
            module,
            loss_fn,
            x=x,
            target=target,
            seed=seed,
            cfg=cfg,
            evaluate=evaluate,
            log=self.logger.job(job_id, job_id, total=cfg.steps) if self.logger is not None else None,
            stop_after=self.stop_after,
        )


WEIGHTS, CHECKPOINTS, JOB_LOCK = "model.safetensors", "checkpoints", ".lock"


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
    log: JobLog | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Idempotent training job: `model.safetensors` then the `done.json` marker (holding the history) end
    it; checkpoints resume it and are deleted once it is done. `log` receives every history entry
    (progress bar, trackers)."""
    done = read_done(job_dir)
    if done is None:
        job_dir.mkdir(parents=True, exist_ok=True)
        # one trainer per job: a cached teacher is shared by every run (of any config) that needs it, and
        # two processes training it at once would overwrite each other's checkpoints
        with lock_directory(job_dir / JOB_LOCK, wait=True):
            done = read_done(job_dir)  # another process may have finished it while this one waited
            if done is None:
                return train_job(
                    job_dir,
                    module,
                    loss_fn,
                    x=x,
                    target=target,
                    seed=seed,
                    cfg=cfg,
                    evaluate=evaluate,
                    log=log,
                    stop_after=stop_after,
                )
    weights = job_dir / WEIGHTS
    module.load_state_dict(load_file(str(weights), device=str(next(module.parameters()).device)))
    module.eval()
    discard_checkpoints(job_dir / CHECKPOINTS)  # left by a kill right after done.json, or an older version
    if log is not None:
        log.done()  # finished in an earlier session: show it as done
    return done["history"]


def train_job(
    job_dir: Path,
    module: nn.Module,
    loss_fn: LossFn,
    *,
    x: Tensor,
    target: Tensor,
    seed: int,
    cfg: TrainConfig,
    evaluate: Callable[[], float] | None,
    log: JobLog | None,
    stop_after: int | None,
) -> list[dict[str, Any]]:
    """Train (or resume) the job, then its weights, its done.json and, no longer needed, no checkpoints."""
    torch.manual_seed(seed)
    history = train(
        module,
        loss_fn,
        x=x,
        target=target,
        cfg=cfg,
        seed=seed,
        checkpoint_dir=job_dir / CHECKPOINTS,
        evaluate=evaluate,
        on_log=log.log if log is not None else None,
        on_step=log.advance if log is not None else None,
        stop_after=stop_after,
    )
    if not history or history[-1]["step"] < cfg.steps:
        raise JobInterrupted(f"job {job_dir.name} stopped early")
    atomic_save_safetensors(
        job_dir / WEIGHTS, {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    )
    mark_done(job_dir, {"history": history, "steps": cfg.steps})
    discard_checkpoints(job_dir / CHECKPOINTS)
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
