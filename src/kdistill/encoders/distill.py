"""Distil a sentence-embedding teacher into a student: the method (`EmbeddingDistiller`) and a small loop.

The teacher never runs here: its embeddings come from a `TeacherEmbeddings` cache, joined to each batch
by text id. Each step: student(texts) -> named, weighted loss terms -> sum -> backward -> clip -> AdamW.

Loss terms (weights in `EmbeddingDistillConfig.losses`, names from `EMBEDDING_LOSSES`): "cosine" and "mse"
compare text i of the student with text i of the teacher and, when the widths differ, see the student
through a learned linear projection (bias-free, owned by the distiller, reported as extra parameters and
*not* saved: the saved student embeds in its own space); "similarity_matrix", "rkd_distance" and
"rkd_angle" compare in-batch structure and see the student's own embedding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.encoders.cache import TeacherEmbeddings
from kdistill.losses.embedding import EMBEDDING_LOSSES, ROW_WISE
from kdistill.training.checkpoint import load_latest_checkpoint, save_checkpoint
from kdistill.training.loop import TrainingDiverged, batch_indices

__all__ = ["EmbeddingDistillConfig", "EmbeddingDistiller", "TrainingStopped", "train_embedding_student"]


class TrainingStopped(RuntimeError):
    """`stop_after` ended training early; the last checkpoint holds where it stopped."""


@dataclass(frozen=True)
class EmbeddingDistillConfig:
    """Every knob of `train_embedding_student`, with its default."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # texts per step (the relation losses see this batch)
    lr: float = 1e-4  # peak learning rate (static students like ~1e-2)
    warmup_steps: int = 0  # linear warmup to lr, then cosine decay to 0
    weight_decay: float = 0.0  # AdamW decay on matrices
    grad_clip: float | None = 1.0  # max global grad norm; None = no clipping
    seed: int = 0  # data order
    log_every: int = 50  # steps between history entries
    checkpoint_every: int = 100  # steps between checkpoints (when a checkpoint_dir is given)
    losses: Mapping[str, float] = field(default_factory=lambda: {"cosine": 1.0})  # name -> weight

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.log_every) < 1 or self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError("need steps, batch_size, log_every >= 1, lr > 0, warmup_steps >= 0")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        unknown = sorted(set(self.losses) - set(EMBEDDING_LOSSES))
        if unknown:
            raise ValueError(
                f"unknown embedding loss {unknown}; known: {', '.join(sorted(EMBEDDING_LOSSES))}"
            )
        if any(w < 0 for w in self.losses.values()) or not any(w > 0 for w in self.losses.values()):
            raise ValueError(f"loss weights must be >= 0 with at least one > 0, got {dict(self.losses)}")


class EmbeddingDistiller(nn.Module):
    """The student plus what training adds to it (a projection when widths differ); scores a batch."""

    def __init__(self, student: nn.Module, teacher_dim: int, losses: Mapping[str, float]) -> None:
        super().__init__()
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


def _lr_factor(step: int, cfg: EmbeddingDistillConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_embedding_student(
    distiller: EmbeddingDistiller,
    texts: Sequence[tuple[str, str]],
    teacher_embeddings: TeacherEmbeddings,
    cfg: EmbeddingDistillConfig,
    *,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Train `distiller.student` in place on (id, text) pairs; returns the history (one entry per log).

    Batch of step s = `batch_indices(s, len(texts), batch_size, seed)` (a fresh permutation per epoch);
    its teacher rows are `teacher_embeddings.get(ids)`. `evaluate(student)` runs at every log and at the end.

    With `checkpoint_dir`, the distiller, optimizer, schedule, partial log sums and history are saved every
    `checkpoint_every` steps (and at the end), and a call that finds a checkpoint there continues from it:
    the batches depend on the step alone, so a resumed run equals an uninterrupted one. `stop_after=n`
    checkpoints and raises `TrainingStopped` once n steps are done (how tests simulate a kill).
    """
    if not texts:
        raise ValueError("no training texts")
    missing = [i for i, _ in texts if i not in teacher_embeddings]
    if missing:
        raise KeyError(f"{len(missing)} texts have no cached teacher embedding (first: {missing[0]!r})")
    params = [p for p in distiller.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    history: list[dict[str, Any]] = []
    running: dict[str, float] = {}
    first = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resumed = load_latest_checkpoint(ckpt) if ckpt is not None else None
    if resumed is not None:
        first, state = resumed
        distiller.load_state_dict(state["distiller"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        running, history = dict(state["running"]), list(state["history"])

    def checkpoint(done: int) -> None:
        if ckpt is not None:
            state = {
                "distiller": distiller.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "running": running,
                "history": history,
            }
            save_checkpoint(ckpt, done, state)

    distiller.train()
    for step in range(first, cfg.steps):
        rows = batch_indices(step, len(texts), cfg.batch_size, cfg.seed).tolist()
        ids, batch_texts = [texts[r][0] for r in rows], [texts[r][1] for r in rows]
        terms = distiller(distiller.student.tokenize(batch_texts), teacher_embeddings.get(ids))
        total = sum(terms.values())
        if not torch.isfinite(total):
            values = {name: float(v) for name, v in terms.items()}
            raise TrainingDiverged(
                f"loss is not finite at step {step + 1} ({values}); lower the lr ({cfg.lr})"
            )
        total.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)) if cfg.grad_clip else None
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        for name, value in terms.items():
            running[name] = running.get(name, 0.0) + value.item()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            n = (done - 1) % cfg.log_every + 1  # steps since the last entry
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
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            checkpoint(done)
        if stop_after is not None and done >= stop_after and done < cfg.steps:
            checkpoint(done)
            distiller.eval()
            raise TrainingStopped(f"stopped after step {done} of {cfg.steps} (stop_after)")
    distiller.eval()
    return history
