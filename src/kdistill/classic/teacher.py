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
from kdistill.weight_files import PreflightError, safetensors_shapes


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


# The teacher cache trains LabelsOnly(model), so its model.safetensors names every tensor "model.<name>";
# that file given back as teacher.checkpoint loads too.
WRAPPER_PREFIX = "model."


def unwrapped_names(names: list[str]) -> dict[str, str]:
    """Checkpoint name -> model name: without the wrapper prefix when every name has it, else unchanged."""
    if names and all(n.startswith(WRAPPER_PREFIX) for n in names):
        return {n: n.removeprefix(WRAPPER_PREFIX) for n in names}
    return {n: n for n in names}


def check_teacher_checkpoint(path: Path, model: nn.Module, arch: str) -> None:
    """PreflightError (one line) unless the safetensors file at `path` holds exactly `model`'s tensors with
    their shapes; only the header is read, so `model` may live on the meta device."""
    field = "teacher.checkpoint"
    shapes = safetensors_shapes(path, field)
    names = unwrapped_names(list(shapes))
    found = {names[n]: shape for n, shape in shapes.items()}
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    problems = []
    if missing := [n for n in expected if n not in found]:
        problems.append("missing " + _few(missing))
    if unexpected := [n for n in found if n not in expected]:
        problems.append("unexpected " + _few(unexpected))
    for name in (n for n in expected if n in found and found[n] != expected[n]):
        problems.append(f"{name} is {list(found[name])} in the file, {list(expected[name])} in {arch}")
    if problems:
        raise PreflightError(f"{field}: {path} does not fit arch {arch!r}: {'; '.join(problems[:4])}")


def _few(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


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
        check_teacher_checkpoint(cfg.checkpoint, model, cfg.arch)
        state = load_file(str(cfg.checkpoint), device=str(device))
        names = unwrapped_names(list(state))
        model.load_state_dict({names[n]: t for n, t in state.items()})
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
        record_teacher(job_dir, {"arch": cfg.arch, "key": key})
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), origin


def record_teacher(job_dir: Path, record: dict) -> None:
    """Write `teacher.json` only when missing or different: a finished teacher in a shared, read-only cache
    is then loaded without a single write."""
    path = job_dir / "teacher.json"
    try:
        if json.loads(path.read_text()) == record:
            return
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    atomic_write_text(path, json.dumps(record))
