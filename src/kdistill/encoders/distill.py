"""Distil a sentence-embedding teacher into a student: the method (`EmbeddingDistiller`) and a small loop.

The teacher never runs here: its embeddings come from a `TeacherEmbeddings` cache, joined to each batch
by text id. Each step: student(texts) -> named, weighted loss terms -> sum -> backward -> clip -> AdamW.

Loss terms (a student's `losses: {name: weight}`, names from `EMBEDDING_LOSSES`): "cosine" and "mse"
compare text i of the student with text i of the teacher and, when the widths differ, see the student
through a learned linear projection (bias-free, owned by the distiller, reported as extra parameters and
*not* saved: the saved student embeds in its own space); "similarity_matrix", "rkd_distance" and
"rkd_angle" compare in-batch structure and see the student's own embedding.

The loop takes the student's `train:` section (`EncoderTrainConfig`) as it is, plus what the recipe
computes (steps, seed, log interval), so no knob exists twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.encoders.cache import TeacherEmbeddings
from kdistill.encoders.config import EncoderTrainConfig, check_embedding_losses
from kdistill.losses.embedding import EMBEDDING_LOSSES, ROW_WISE
from kdistill.runs.checkpoint import restore_training_state, save_training_state
from kdistill.runs.schedule import lr_scheduler
from kdistill.runs.steps import TrainingDiverged, batch_indices

__all__ = ["EmbeddingDistiller", "TrainingStopped", "planned_steps", "train_embedding_student"]


class TrainingStopped(RuntimeError):
    """`stop_after` ended training early; the last checkpoint holds where it stopped."""


def planned_steps(train: EncoderTrainConfig, num_texts: int) -> int:
    """Optimizer steps of a training: `train.steps`, else `train.epochs` passes over `num_texts` texts."""
    if train.steps is not None:
        return train.steps
    return max(1, math.ceil(train.epochs * num_texts / train.batch_size))


class EmbeddingDistiller(nn.Module):
    """The student plus what training adds to it (a projection when widths differ); scores a batch."""

    def __init__(self, student: nn.Module, teacher_dim: int, losses: Mapping[str, float]) -> None:
        super().__init__()
        check_embedding_losses(losses)
        self.student = student
        self.weights = {name: float(w) for name, w in losses.items() if w > 0}
        student_dim = int(student.embedding_dim)
        needs_projection = student_dim != teacher_dim and bool(ROW_WISE & set(self.weights))
        self.projection = nn.Linear(student_dim, teacher_dim, bias=False) if needs_projection else None

    def extra_parameters(self) -> int:
        return 0 if self.projection is None else sum(p.numel() for p in self.projection.parameters())

    def forward(self, batch: Mapping[str, Tensor], teacher_emb: Tensor) -> dict[str, Tensor]:
        """Named, weighted terms ("emb/cosine", ...) for one tokenized batch and its (B, D_t) teacher rows."""
        s = self.student(batch)  # (B, D_s)
        t = teacher_emb.to(s.device)
        projected = self.projection(s) if self.projection is not None else s  # (B, D_t)
        return {
            f"emb/{name}": w * EMBEDDING_LOSSES[name](projected if name in ROW_WISE else s, t)
            for name, w in self.weights.items()
        }


def adamw(params: list[nn.Parameter], train: EncoderTrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases and norm scales are not shrunk)."""
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=train.lr)


def train_embedding_student(
    distiller: EmbeddingDistiller,
    texts: Sequence[tuple[str, str]],
    teacher_embeddings: TeacherEmbeddings,
    train: EncoderTrainConfig,
    *,
    steps: int | None = None,
    seed: int = 0,
    log_every: int = 50,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Train `distiller.student` in place on (id, text) pairs; returns the history (one entry per log).

    `steps` defaults to `planned_steps(train, len(texts))`; the lr warms up linearly for
    `train.warmup_steps` (at most steps - 1, so the peak is reached) and then decays to 0 on a cosine.
    Batch of step s = `batch_indices(s, len(texts), train.batch_size, seed)` (a fresh permutation per
    epoch); its teacher rows are `teacher_embeddings.get(ids)`. A history entry every `log_every` steps
    and at the end holds the mean terms since the last one; `evaluate(student)` runs with each entry.

    With `checkpoint_dir`, the distiller, optimizer, schedule, RNG, partial log sums and history are saved
    every `train.checkpoint_every` steps (and at the end), and a call that finds a checkpoint there continues
    from it: the batches depend on the step alone, so a resumed run equals an uninterrupted one.
    `stop_after=n` checkpoints and raises `TrainingStopped` once n steps are done (how tests simulate a kill).
    """
    if not texts:
        raise ValueError("no training texts")
    steps = planned_steps(train, len(texts)) if steps is None else steps
    if steps < 1 or log_every < 1:
        raise ValueError(f"need steps >= 1 and log_every >= 1, got steps={steps}, log_every={log_every}")
    missing = [i for i, _ in texts if i not in teacher_embeddings]
    if missing:
        raise KeyError(f"{len(missing)} texts have no cached teacher embedding (first: {missing[0]!r})")
    params = [p for p in distiller.parameters() if p.requires_grad]
    optimizer = adamw(params, train)
    warmup = min(train.warmup_steps, steps - 1)
    scheduler = lr_scheduler(optimizer, total_steps=steps, warmup_steps=warmup, schedule="cosine")
    history: list[dict[str, Any]] = []
    running: dict[str, float] = {}
    first = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resumed = restore_training_state(ckpt, optimizer=optimizer, scheduler=scheduler)
    if resumed is not None:
        first, state = resumed
        distiller.load_state_dict(state["model"])
        running, history = dict(state["running"]), list(state["history"])

    def checkpoint(done: int) -> None:
        if ckpt is not None:
            save_training_state(
                ckpt,
                done,
                model=distiller.state_dict(),
                optimizer=optimizer,
                scheduler=scheduler,
                running=running,
                history=history,
            )

    distiller.train()
    for step in range(first, steps):
        rows = batch_indices(step, len(texts), train.batch_size, seed).tolist()
        ids, batch_texts = [texts[r][0] for r in rows], [texts[r][1] for r in rows]
        terms = distiller(distiller.student.tokenize(batch_texts), teacher_embeddings.get(ids))
        total = sum(terms.values())
        if not torch.isfinite(total):
            values = {name: float(v) for name, v in terms.items()}
            raise TrainingDiverged(
                f"loss is not finite at step {step + 1} ({values}); lower the lr ({train.lr})"
            )
        total.backward()
        clip = train.grad_clip
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if clip else None
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        for name, value in terms.items():
            running[name] = running.get(name, 0.0) + value.item()
        done = step + 1
        if done % log_every == 0 or done == steps:
            n = (done - 1) % log_every + 1  # steps since the last entry
            entry: dict[str, Any] = {"step": done, "terms": {k: v / n for k, v in running.items()}}
            entry |= {"loss": sum(entry["terms"].values()), "lr": lr, "grad_norm": grad_norm}
            if evaluate is not None:
                distiller.eval()
                entry["eval"] = dict(evaluate(distiller.student))
                distiller.train()
            history.append(entry)
            running = {}
            if on_log is not None:
                on_log(entry)
        if done % train.checkpoint_every == 0 or done == steps:
            checkpoint(done)
        if stop_after is not None and done >= stop_after and done < steps:
            checkpoint(done)
            distiller.eval()
            raise TrainingStopped(f"stopped after step {done} of {steps} (stop_after)")
    distiller.eval()
    return history
