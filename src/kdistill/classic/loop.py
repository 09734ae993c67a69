"""The training loop: lr -> step -> clip -> log -> eval/checkpoint, resumable to the exact same weights.

The loop knows nothing about distillation. A method gives it a module holding everything trainable and a
function from a batch to named, already-weighted loss terms; the loop sums them, logs each one, and stops
with a clear error when any of them stops being finite.

Exact resume: the data order of epoch e is a permutation drawn from a generator seeded with (seed, e), so
the data position is just the step number; the resume point (runs/checkpoint.py `save_training_state`)
holds the module's whole state dict (buffers such as a loss module's memory bank included), optimizer,
scheduler, torch's RNG and the history. A run killed at any point and restarted ends with bit-identical
weights on the same machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.classic.config import TrainConfig
from kdistill.runs.checkpoint import restore_training_state, save_training_state
from kdistill.runs.schedule import lr_scheduler
from kdistill.runs.steps import TrainingDiverged, batch_indices


@dataclass(frozen=True)
class Batch:
    index: Tensor  # (B,) positions in the training set: the key into cached teacher outputs
    x: Tensor  # (B, ...) inputs
    target: Tensor  # (B,) class labels, -1 where the label is not available


LossFn = Callable[[Batch], dict[str, Tensor]]


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The shared schedule: cosine from lr to 0 over `steps`, or constant, after `warmup_steps` of linear
    warm-up where the config has them (the classifier task's has none)."""
    warmup = getattr(cfg, "warmup_steps", 0)
    return lr_scheduler(optimizer, total_steps=cfg.steps, warmup_steps=warmup, schedule=cfg.scheduler)


def train(
    module: nn.Module,
    loss_fn: LossFn,
    *,
    x: Tensor,
    target: Tensor,
    cfg: TrainConfig,
    seed: int,
    checkpoint_dir: Path | None = None,
    evaluate: Callable[[], float] | None = None,
    on_step: Callable[[int], None] | None = None,
    on_log: Callable[[Mapping[str, Any]], None] | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Train every parameter of `module` with `loss_fn`; returns the history (one entry per evaluation).

    x/target live on the device the module is on. `on_step(done)` follows every step, `on_log(entry)` gets
    each history entry as it is made (a run's logger). `stop_after` ends the loop early after that many
    steps (used to simulate interruption in tests; a normal run leaves it None).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: the module has no trainable parameters")
    optimizer = make_optimizer(params, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    start, history, running, running_count = 0, [], {}, 0  # running: per-term sums since the last log
    if (
        found := restore_training_state(checkpoint_dir, optimizer=optimizer, scheduler=scheduler)
    ) is not None:
        start, state = found
        module.load_state_dict(state["model"])
        history, running, running_count = state["history"], state["running"], state["running_count"]
    per_epoch = math.ceil(len(x) / cfg.batch_size)
    module.train()
    for step in range(start, cfg.steps):
        idx = batch_indices(step, len(x), cfg.batch_size, seed)
        batch = Batch(index=idx, x=x[idx.to(x.device)], target=target[idx.to(target.device)])
        terms = loss_fn(batch)
        loss = finite_sum(terms, step, cfg.lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        for k, v in terms.items():
            running[k] = running.get(k, 0.0) + v.item()
        running_count += 1
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            entry = {
                "step": done,
                "epoch": done // per_epoch,
                "loss": sum(running.values()) / running_count,
                "terms": {k: v / running_count for k, v in running.items()},
                "lr": scheduler.get_last_lr()[0],
            }
            if evaluate is not None:
                entry["val_accuracy"] = evaluate()
                module.train()
            history.append(entry)
            running, running_count = {}, 0
            if on_log is not None:
                on_log(entry)
        if checkpoint_dir is not None and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save_training_state(
                checkpoint_dir,
                done,
                model=module.state_dict(),
                optimizer=optimizer,
                scheduler=scheduler,
                history=history,
                running=running,
                running_count=running_count,
            )
        if on_step is not None:
            on_step(done)
        if stop_after is not None and done >= stop_after:
            break
    module.eval()
    return history


def finite_sum(terms: dict[str, Tensor], step: int, lr: float) -> Tensor:
    """The summed loss of one step, or TrainingDiverged naming every term's value when it is not finite."""
    loss = torch.stack(list(terms.values())).sum()
    if not torch.isfinite(loss):
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
        raise TrainingDiverged(
            f"loss is not finite at step {step + 1}: {values}. Lower the weight of the exploding term "
            f"or the learning rate (lr={lr})."
        )
    return loss
