"""Atomic, safe checkpoints of arbitrary training state: tensors in safetensors, structure in JSON.

A state is a nested structure of dicts, lists, tuples, tensors, numpy arrays and JSON scalars (model and
optimizer state dicts, RNG states, the data position). Tensors go to `tensors.safetensors`, everything else
to `state.json`, so loading never unpickles anything. A checkpoint is a directory `step-<N>` written under a
temporary name and renamed into place; `latest` names the newest complete one and is itself replaced
atomically, so a kill at any instant leaves a loadable checkpoint. Once a job is finished (its weights and
done.json written) its checkpoints are discarded (`discard_checkpoints`).

Sharded training (FSDP) saves with `torch.distributed.checkpoint` instead (`save_sharded_training_state`):
every process writes its own shards of the model and optimizer into the same `step-<N>` directory (a shared
filesystem), the main process adds the rest (scheduler, every process's RNG, the loop's progress) in the
format above under `progress/`, and renames the directory into place once all shards are written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from kdistill.io import atomic_save_safetensors, atomic_write_text

TENSORS = "tensors.safetensors"
STRUCTURE = "state.json"
PROGRESS = "progress"  # inside a sharded checkpoint: the main process's part, in the format above


def flatten_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state into a JSON-able skeleton and a flat name -> tensor map."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = node.detach().cpu().clone().contiguous()
            return {"__tensor__": key}
        if isinstance(node, np.ndarray):
            key = f"t{len(tensors)}"
            tensors[key] = torch.from_numpy(np.ascontiguousarray(node).copy())
            return {"__ndarray__": key}
        if isinstance(node, np.generic):
            return node.item()
        if isinstance(node, dict):
            return {"__dict__": [[walk(k), walk(v)] for k, v in node.items()]}
        if isinstance(node, tuple):
            return {"__tuple__": [walk(v) for v in node]}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if node is None or isinstance(node, bool | int | float | str):
            return node
        raise TypeError(f"cannot checkpoint a value of type {type(node).__name__}")

    return walk(state), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "__tensor__" in node:
                return tensors[node["__tensor__"]]
            if "__ndarray__" in node:
                return tensors[node["__ndarray__"]].numpy()
            if "__dict__" in node:
                return {walk(k): walk(v) for k, v in node["__dict__"]}
            if "__tuple__" in node:
                return tuple(walk(v) for v in node["__tuple__"])
            raise ValueError(f"corrupt checkpoint structure near {list(node)[:3]}")
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(skeleton)


def save_checkpoint(directory: Path, step: int, state: Any, *, keep: int = 2) -> Path:
    """Write `directory/step-<step>` atomically, point `latest` at it, keep the newest `keep`."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp-step-{step:09d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_state_files(tmp, step, state)
    return publish_checkpoint(directory, tmp, step, keep=keep)


def write_state_files(path: Path, step: int, state: Any) -> None:
    """`state` as tensors.safetensors + state.json in the existing directory `path`, synced to disk."""
    skeleton, tensors = flatten_state(state)
    atomic_save_safetensors(path / TENSORS, tensors)  # synced, and readable like the run's other files
    (path / STRUCTURE).write_text(json.dumps({"step": step, "state": skeleton}))
    with open(path / STRUCTURE, "rb") as fh:
        os.fsync(fh.fileno())


def publish_checkpoint(directory: Path, written: Path, step: int, *, keep: int = 2) -> Path:
    """Rename the complete checkpoint `written` to `directory/step-<step>`, point `latest` at it, keep the
    newest `keep`."""
    final = directory / f"step-{step:09d}"
    if final.exists():  # a re-save of the same step (e.g. after resuming exactly there)
        shutil.rmtree(final)
    os.replace(written, final)
    atomic_write_text(directory / "latest", final.name)
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def discard_checkpoints(directory: Path) -> None:
    """Delete a finished job's resume points: its final weights and done.json are all a rerun reads, and
    the checkpoints (model, optimizer state, two of them) would otherwise stay several times its size."""
    shutil.rmtree(directory, ignore_errors=True)


def load_latest_checkpoint(directory: Path) -> tuple[int, Any] | None:
    """The newest complete checkpoint as (step, state), or None if there is none."""
    pointer = directory / "latest"
    if not pointer.is_file():
        return None
    path = directory / pointer.read_text().strip()
    return load_checkpoint(path)


def load_checkpoint(path: Path) -> tuple[int, Any]:
    meta = json.loads((path / STRUCTURE).read_text())
    tensors = load_file(str(path / TENSORS))
    return int(meta["step"]), unflatten_state(meta["state"], tensors)


def save_training_state(
    directory: Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng: list[torch.Tensor] | None = None,
    **progress: Any,
) -> Path:
    """The one resume point of every task's loop: model state (all of it, or the trainable part), optimizer,
    scheduler, one torch RNG state per process (`rng`, default this process's) and CUDA's, plus the loop's
    own progress (`history`, running sums, ...) as keyword arguments."""
    state = {
        "model": model,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": rng if rng is not None else [torch.get_rng_state()],
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        **progress,
    }
    return save_checkpoint(directory, step, state)


def restore_training_state(
    directory: Path | None,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int = 0,
    world: int = 1,
) -> tuple[int, dict[str, Any]] | None:
    """Load the latest resume point written by `save_training_state`: restores optimizer, scheduler and the
    RNGs, and returns (step, state) for the caller to load `state["model"]` and its progress keys; None when
    there is nothing to resume. A resume with another process count reuses the first process's RNG state."""
    if directory is None or not (directory / "latest").is_file():
        return None
    path = directory / (directory / "latest").read_text().strip()
    if not (path / STRUCTURE).is_file() and (path / PROGRESS).is_dir():
        raise ValueError(
            f"{path} is a sharded checkpoint (written with train.parallel fsdp): resume with fsdp, or start "
            "in a new run directory"
        )
    step, state = load_checkpoint(path)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng_states = state["torch_rng"]
    torch.set_rng_state(rng_states[rank] if len(rng_states) == world else rng_states[0])
    if torch.cuda.is_available() and state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return step, state


def save_sharded_training_state(
    directory: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng: list[torch.Tensor],
    is_main: bool,
    keep: int = 2,
    **progress: Any,
) -> Path:
    """The resume point of sharded (FSDP) training; every process calls it (it is collective).

    Each process writes its shards of the model's and the optimizer's state with
    `torch.distributed.checkpoint` (DCP, keyed by parameter name, so a resume may use another process
    count); the main process writes the scheduler, `rng` (one torch RNG state per process, gathered by the
    caller) and `progress` under `progress/`, then renames the directory into place: a kill at any instant
    leaves the previous checkpoint or the new one, complete. `directory` must be shared by all processes.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = directory / f".tmp-step-{step:09d}"  # one name for every process: they write into it together
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(tmp))
    final = directory / f"step-{step:09d}"
    if is_main:  # dcp.save returned: every process's shards and the metadata are written
        (tmp / PROGRESS).mkdir()
        state = {
            "scheduler": scheduler.state_dict(),
            "torch_rng": rng,
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            **progress,
        }
        write_state_files(tmp / PROGRESS, step, state)
        publish_checkpoint(directory, tmp, step, keep=keep)
    dist.barrier()
    return final


def restore_sharded_training_state(
    directory: Path | None,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int,
    world: int,
) -> tuple[int, dict[str, Any]] | None:
    """Load the latest `save_sharded_training_state` checkpoint into the sharded `model` and `optimizer`
    (collective), restore the scheduler and this process's RNG, and return (step, progress); None when
    there is nothing to resume. Another process count reuses the first process's RNG state."""
    if directory is None or not (directory / "latest").is_file():
        return None
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = directory / (directory / "latest").read_text().strip()
    if not (path / ".metadata").is_file():
        raise ValueError(
            f"{path} is not a sharded checkpoint (written with train.parallel ddp?): resume with the "
            "train.parallel that wrote it, or start in a new run directory"
        )
    model_state, optimizer_state = get_state_dict(model, optimizer)
    loaded = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(loaded, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])
    step, state = load_checkpoint(path / PROGRESS)
    scheduler.load_state_dict(state["scheduler"])
    rng_states = state["torch_rng"]
    torch.set_rng_state(rng_states[rank] if len(rng_states) == world else rng_states[0])
    if torch.cuda.is_available() and state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return step, state
