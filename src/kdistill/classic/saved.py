"""A classic run's trained student, read back from its job folder (`runs/<run>/jobs/<job>/`), for export.

A job saves everything it trained in `model.safetensors`: the student under a prefix (`model.` for the
labels-only baseline, `student.` beside the loss terms' adapters for offline KD and born-again, `peers.<i>.`
for mutual learning's peers). The architecture and the input shape come from the run's `config.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from kdistill.classic.config import RunConfig
from kdistill.classic.zoo import build_model
from kdistill.preflight import INPUT_SHAPES, NUM_CLASSES
from kdistill.weight_files import safetensors_shapes

__all__ = ["SavedStudent", "example_inputs", "load_job_student"]

WEIGHTS, CONFIG = "model.safetensors", "config.yaml"


@dataclass
class SavedStudent:
    model: nn.Module  # in eval mode, float32, on the CPU
    arch: str
    input_shape: tuple[int, ...]  # one sample, (C, ...)
    job: str
    prefix: str  # where the student's tensors were in the job's weights


def load_job_student(job_dir: str | Path, *, peer: int = 0) -> SavedStudent:
    """The student a finished classic job trained (`peer`: which of mutual learning's peers). ValueError
    (one line, naming the path) for a folder that is not a finished classic job."""
    from kdistill.config import load_config

    job_dir = Path(job_dir)
    weights = job_dir / WEIGHTS
    if not job_dir.is_dir():
        raise ValueError(f"{job_dir}: no such folder; expected a job folder of a run, runs/<run>/jobs/<job>")
    if not weights.is_file():
        raise ValueError(
            f"{job_dir}: no {WEIGHTS}; expected a finished job folder of a run (runs/<run>/jobs/<job>)"
        )
    config_file = job_dir.parent.parent / CONFIG
    if job_dir.parent.name != "jobs" or not config_file.is_file():
        raise ValueError(
            f"{job_dir}: not inside a run folder (expected {config_file} beside its jobs/ folder)"
        )
    cfg = load_config(config_file)
    if not isinstance(cfg, RunConfig):
        raise ValueError(
            f"{job_dir}: the run is a `task: {cfg.task}` run; export takes classic students here"
        )
    arch, input_shape = cfg.student.arch, INPUT_SHAPES[cfg.data.dataset]
    model = build_model(arch, input_shape, NUM_CLASSES)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    shapes = safetensors_shapes(weights, str(weights))
    for prefix in ("model.", "student.", f"peers.{peer}.", ""):
        found = {n.removeprefix(prefix): s for n, s in shapes.items() if n.startswith(prefix)}
        if found == expected:
            break
    else:
        raise ValueError(
            f"{weights}: no {arch} student in it (tried the prefixes model., student., peers.{peer}.)"
            + (f"; mutual learning saved {_peers(shapes)} peers" if _peers(shapes) else "")
        )
    state = load_file(str(weights))
    model.load_state_dict({n.removeprefix(prefix): t for n, t in state.items() if n.startswith(prefix)})
    return SavedStudent(model.eval().float(), arch, tuple(input_shape), job_dir.name, prefix)


def _peers(shapes: dict[str, tuple[int, ...]]) -> int:
    return len({n.split(".")[1] for n in shapes if n.startswith("peers.")})


def example_inputs(student: SavedStudent, batch: int, seed: int = 0) -> torch.Tensor:
    """Standard-normal inputs of the student's shape (the parity check needs shapes, not data)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *student.input_shape, generator=g)
