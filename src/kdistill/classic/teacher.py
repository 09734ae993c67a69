"""Where the teacher comes from: a user's safetensors checkpoint, or trained once and cached by config hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from kdistill.classic.config import TeacherConfig
from kdistill.classic.data import ClassificationData
from kdistill.classic.methods.base import run_job
from kdistill.classic.methods.scratch import LabelsOnly
from kdistill.classic.zoo import build_model
from kdistill.io import atomic_write_text
from kdistill.runs.locations import default_cache_root
from kdistill.runs.logger import RunLogger
from kdistill.runs.markers import read_done
from kdistill.schema import stable_hash


def teacher_key(cfg: TeacherConfig, data: ClassificationData) -> str:
    """Same architecture, training settings, seed and training data -> same teacher."""
    h = hashlib.sha256(data.x_train.contiguous().numpy().tobytes())
    h.update(data.y_train.contiguous().numpy().tobytes())
    train_data = h.hexdigest()[:16]
    return stable_hash(
        {
            "arch": cfg.arch,
            "train": cfg.train.model_dump(mode="json"),
            "seed": cfg.seed,
            "data": train_data,
            "kdistill_teacher_format": 2,  # 2: done.json marker and save_training_state checkpoints
        }
    )


def load_teacher(
    cfg: TeacherConfig,
    data: ClassificationData,
    device: torch.device,
    *,
    cache_root: Path | None = None,
    logger: RunLogger | None = None,
) -> tuple[nn.Module, dict]:
    """The frozen teacher in eval mode, plus where it came from (`logger` shows its training, if any)."""
    if cfg.checkpoint is not None:
        model = build_model(cfg.arch, data.input_shape, data.num_classes).to(device)
        if not cfg.checkpoint.is_file():
            raise FileNotFoundError(f"teacher.checkpoint: no file {cfg.checkpoint}")
        state = load_file(str(cfg.checkpoint), device=str(device))
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(
                f"teacher.checkpoint {cfg.checkpoint} does not fit arch {cfg.arch!r}: {err}"
            ) from None
        origin = {"source": "checkpoint", "path": str(cfg.checkpoint)}
    else:
        key = teacher_key(cfg, data)
        job_dir = (cache_root or default_cache_root()) / "teachers" / key
        cached = read_done(job_dir) is not None
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.arch, data.input_shape, data.num_classes).to(device)
        wrapper = LabelsOnly(model)
        # the teacher's owner trains on every training label; the student sees only the labeled subset
        run_job(
            job_dir,
            wrapper,
            wrapper,
            x=data.x_train.to(device),
            target=data.y_train.to(device),
            seed=cfg.seed,
            cfg=cfg.train,
            log=logger.job("teacher", "teacher", total=cfg.train.steps)
            if logger is not None and not cached
            else None,
        )
        origin = {"source": "cache" if cached else "trained", "path": str(job_dir), "key": key}
        atomic_write_text(job_dir / "teacher.json", json.dumps({"arch": cfg.arch, "key": key}))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), origin
