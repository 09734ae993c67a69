"""A run's directory: find the unfinished run of a config or make a new one, its manifest, its records.

`runs/<name>-<timestamp>/` holds config.yaml, manifest.json, one folder per job and, written last,
metrics.json: a run without metrics.json is unfinished, and the same config (same hash) continues it. A
folder is born with its manifest (config hash), so a run killed at any moment is continued by a rerun.

One process at a time runs a config in a runs folder (`claim_run_dir`): it holds an flock on
`runs/.locks/<name>-<hash>.lock` for the whole run and writes who it is into that file, so a second
process is refused with the holder's pid, host, start time and run folder, or waits for it (`wait`).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kdistill.io import atomic_write_text, lock_directory

if TYPE_CHECKING:
    import torch

MANIFEST, METRICS, CONFIG = "manifest.json", "metrics.json", "config.yaml"
LOCKS = ".locks"  # inside the runs folder: one lock file per (run name, config hash)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    resumed: bool
    finished_elsewhere: bool = False  # `wait`: the process waited for finished this run; nothing was redone


class RunBusyError(RuntimeError):
    """Another process is running the same config in the same runs folder (its message is one line)."""


@dataclass(frozen=True)
class RunClaim:
    """The run folder a process holds the lock of: continued (`resumed`), new, or (`finished`) finished by
    the process it waited for."""

    run_dir: Path
    resumed: bool
    finished: bool = False

    def finished_result(self) -> RunResult:
        """The result of the run another process finished while this one waited."""
        metrics = json.loads((self.run_dir / METRICS).read_text())
        return RunResult(self.run_dir, metrics, resumed=False, finished_elsewhere=True)


def pick_device(name: str) -> torch.device:
    import torch  # here: claiming a run folder (and its tests' helper processes) needs no torch

    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch sees no CUDA device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def find_unfinished_run(runs_dir: Path, cfg: Any) -> Path | None:
    """Newest run of this name that this config continues: its manifest has the config's hash and it has no
    metrics.json yet; or a folder with no manifest that holds no other config (from a version that wrote
    the manifest only later: nothing in it needs keeping)."""
    candidates = []
    for d in runs_dir.glob(f"{cfg.name}-*"):
        if not d.is_dir() or (d / METRICS).exists():
            continue
        manifest = d / MANIFEST
        if not manifest.is_file():
            if is_orphan_of(d, cfg):
                candidates.append(d)
            continue
        try:
            if json.loads(manifest.read_text()).get("config_hash") == cfg.config_hash():
                candidates.append(d)
        except json.JSONDecodeError:
            continue
    return max(candidates, key=lambda d: d.name) if candidates else None


def is_orphan_of(run_dir: Path, cfg: Any) -> bool:
    """Whether a folder without manifest.json may be reused by `cfg`: it has no jobs and its config.yaml,
    if any, is this config (same hash)."""
    if (run_dir / "jobs").exists():
        return False
    config = run_dir / CONFIG
    if not config.is_file():
        return True
    import yaml

    try:
        return type(cfg).model_validate(yaml.safe_load(config.read_text())).config_hash() == cfg.config_hash()
    except Exception:  # unreadable, or another task's schema: not this config's folder
        return False


def new_run_dir(runs_dir: Path, cfg: Any) -> Path:
    """A new `<name>-<timestamp>` folder, born with a manifest naming the config: a run killed at once is
    still continued by a rerun. It is filled under a temporary name and renamed into place, so no other
    process ever sees it empty."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    tmp = runs_dir / f".tmp-{cfg.name}-{stamp}-{os.getpid()}"
    tmp.mkdir()
    write_manifest(tmp, birth_manifest(cfg))
    suffix = 1
    while True:
        run_dir = runs_dir / (f"{cfg.name}-{stamp}" if suffix == 1 else f"{cfg.name}-{stamp}-{suffix}")
        if not run_dir.exists():
            try:
                tmp.rename(run_dir)  # fails if another process took the name meanwhile
                return run_dir
            except OSError:
                if not run_dir.exists():
                    raise
        suffix += 1


def birth_manifest(cfg: Any) -> dict[str, Any]:
    """What manifest.json holds until the recipe writes the full one: enough for a rerun to continue."""
    return {
        "config_hash": cfg.config_hash(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("kdistill", "torch", "numpy", "scikit-learn", "safetensors", "pydantic"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def start_manifest(cfg: Any, run_dir: Path, *, resumed: bool, seeds: list[int]) -> dict[str, Any]:
    """The first fields of manifest.json; a resumed run keeps its first start time and notes this one."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest: dict[str, Any] = {
        "config_hash": cfg.config_hash(),
        "seeds": seeds,
        "started": started,
        "command": " ".join(sys.argv),
        "versions": versions(),
    }
    if resumed:
        manifest["started"] = json.loads((run_dir / MANIFEST).read_text()).get("started", started)
        manifest["resumed_at"] = started
    return manifest


def run_record(
    cfg: Any, run_dir: Path, started: str, t0: float, *, seeds: list[int], device: str, **extra: Any
) -> dict[str, Any]:
    """The `run` block of metrics.json: which run this was, when, and how long this session took."""
    return {
        "name": cfg.name,
        "run_dir": str(run_dir),
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_hash": cfg.config_hash(),
        "seeds": seeds,
        "device": device,
        **extra,
        "wall_seconds_this_session": round(time.perf_counter() - t0, 1),
    }


def open_run_dir(cfg: Any, runs_dir: Path, *, fresh: bool) -> tuple[Path, bool]:
    """(run directory, resumed): the newest unfinished run of this config, or a new one (`fresh`: always new).
    Call it holding the config's lock (`claim_run_dir`)."""
    existing = None if fresh else find_unfinished_run(runs_dir, cfg)
    if existing is None:
        return new_run_dir(runs_dir, cfg), False
    if not (existing / MANIFEST).is_file():  # an orphan: claim it, nothing in it to continue
        write_manifest(existing, birth_manifest(cfg))
        return existing, False
    return existing, True


def run_lock_file(runs_dir: Path, cfg: Any) -> Path:
    return runs_dir / LOCKS / f"{cfg.name}-{cfg.config_hash()}.lock"


@contextmanager
def claim_run_dir(cfg: Any, runs_dir: Path, *, fresh: bool, wait: bool = False) -> Iterator[RunClaim]:
    """Hold this config's lock in `runs_dir` for the block and open its run folder (`open_run_dir`).

    Another process holding it raises `RunBusyError` naming that process, or with `wait` is waited for:
    when it finished the run, the claim is that finished run (`finished`), else (it failed, was killed)
    its unfinished run is continued. Under torchrun only the main process claims, the others follow it.
    """
    lock_file = run_lock_file(runs_dir, cfg)
    lock_file.parent.mkdir(parents=True, exist_ok=True)

    def busy() -> RunBusyError:
        return RunBusyError("" if wait else busy_message(lock_file, cfg, runs_dir))

    waited = False
    try:
        handle = lock_directory(lock_file, busy)
    except RunBusyError:
        if not wait:
            raise
        handle, waited = lock_directory(lock_file, busy, wait=True), True
    with handle:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        # the note the process waited for left names its run folder: finished there, nothing to redo
        previous = read_holder(lock_file).get("run_dir") if waited and not fresh else None
        write_holder(handle, holder)  # at once: a process refused meanwhile names this one
        if previous is not None and (runs_dir / Path(previous).name / METRICS).is_file():
            claim = RunClaim(runs_dir / Path(previous).name, resumed=False, finished=True)
        else:
            claim = RunClaim(*open_run_dir(cfg, runs_dir, fresh=fresh))
        write_holder(handle, holder | {"run_dir": str(claim.run_dir.absolute())})
        yield claim


def write_holder(handle: IO[bytes], holder: dict[str, Any]) -> None:
    """Who holds the lock, in the lock file itself (the lock is on the file, so it is rewritten in place)."""
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(holder).encode())
    handle.flush()


def read_holder(lock_file: Path) -> dict[str, Any]:
    """The holder's note; {} when it has not written it yet (or it is unreadable)."""
    try:
        holder = json.loads(lock_file.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def busy_message(lock_file: Path, cfg: Any, runs_dir: Path, patience_s: float = 5.0) -> str:
    """One line: who runs this config here, and what to do about it. A holder that has just taken the lock
    names its run folder within moments: its note is re-read for up to `patience_s` until it does."""
    deadline = time.monotonic() + patience_s
    while "run_dir" not in (h := read_holder(lock_file)) and time.monotonic() < deadline:
        time.sleep(0.02)
    who = (
        f"pid {h.get('pid', '?')} on {h.get('host', '?')}, started {h.get('started', '?')}, "
        f"run folder {h.get('run_dir', '(not chosen yet)')}"
        if h
        else f"a process holding {lock_file}"
    )
    return (
        f"{runs_dir}: config {cfg.name} (hash {cfg.config_hash()}) is already running there: {who}; "
        "wait for it to finish (--wait), stop that process, or use another --runs-dir"
    )


def write_config(run_dir: Path, cfg: Any) -> None:
    """The resolved config (every default filled in) beside the run's results."""
    atomic_write_text(run_dir / CONFIG, cfg.to_yaml())


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """metrics.json, written last: its presence marks the run finished."""
    atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2))
