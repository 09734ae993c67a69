"""A run's directory: find the unfinished run of a config or make a new one, its manifest, its records.

`runs/<name>-<timestamp>/` holds config.yaml, manifest.json, one folder per job and, written last,
metrics.json: a run without metrics.json is unfinished, and the same config (same hash) continues it.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from kdistill.io import atomic_write_text

MANIFEST, METRICS, CONFIG = "manifest.json", "metrics.json", "config.yaml"


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    resumed: bool


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch sees no CUDA device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def find_unfinished_run(runs_dir: Path, cfg: Any) -> Path | None:
    """Newest run of this name and config hash that has no metrics.json yet."""
    candidates = []
    for d in runs_dir.glob(f"{cfg.name}-*"):
        manifest = d / MANIFEST
        if not manifest.is_file() or (d / METRICS).exists():
            continue
        try:
            if json.loads(manifest.read_text()).get("config_hash") == cfg.config_hash():
                candidates.append(d)
        except json.JSONDecodeError:
            continue
    return max(candidates, key=lambda d: d.name) if candidates else None


def new_run_dir(runs_dir: Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = runs_dir / f"{name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = runs_dir / f"{name}-{stamp}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


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
    """(run directory, resumed): the newest unfinished run of this config, or a new one (`fresh`: always new)."""
    existing = None if fresh else find_unfinished_run(runs_dir, cfg)
    return (existing, True) if existing is not None else (new_run_dir(runs_dir, cfg.name), False)


def write_config(run_dir: Path, cfg: Any) -> None:
    """The resolved config (every default filled in) beside the run's results."""
    atomic_write_text(run_dir / CONFIG, cfg.to_yaml())


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """metrics.json, written last: its presence marks the run finished."""
    atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2))
