"""`kdistill run`: one config -> teacher, baseline and distilled students -> metrics.json and report.html.

The run directory `runs/<name>-<timestamp>/` holds the resolved config, the manifest, one folder per
training job (checkpoints, final safetensors weights) and the results. Restarting the same command finds
the unfinished run with the same config hash and continues it: finished jobs are loaded, the interrupted
one resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kdistill.config import RunConfig
from kdistill.data.vision import load_classification_data
from kdistill.evaluation import (
    accuracy,
    agreement,
    count_parameters,
    latency_ms_per_sample,
    mean_std,
    size_on_disk_bytes,
    write_report,
)
from kdistill.io import atomic_write_text
from kdistill.methods import METHODS, RunContext, TrainedModel
from kdistill.methods.scratch import train_scratch
from kdistill.methods.teacher import load_teacher

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


def find_unfinished_run(runs_dir: Path, cfg: RunConfig) -> Path | None:
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


class TrainClock:
    """Wall-clock seconds a training job has taken, summed over the sessions of a resumed run.

    `tick()` (called from the job's log callback) writes the running total to `path` atomically, so a
    killed job's time is kept up to its last log; steps redone after the resume count again, as they took
    time again. `write=False` (processes other than the main one) only measures.
    """

    def __init__(self, path: Path, *, write: bool = True) -> None:
        self.path, self.write = path, write
        self.before = float(json.loads(path.read_text())["seconds"]) if path.is_file() else 0.0
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def tick(self) -> None:
        if self.write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps({"seconds": round(self.seconds, 3)}))


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


def _progress_factory(progress: Progress | None) -> Callable[[str, int], Callable[[int], None]]:
    def factory(label: str, total: int) -> Callable[[int], None]:
        if progress is None:
            return lambda done: None
        task = progress.add_task(label, total=total)

        def update(done: int) -> None:
            progress.update(task, completed=done)

        return update

    return factory


def run(
    cfg: RunConfig,
    *,
    runs_dir: Path = Path("runs"),
    cache_root: Path | None = None,
    fresh: bool = False,
    console: Console | None = None,
    stop_after: int | None = None,
) -> RunResult:
    """Run (or continue) the whole experiment described by `cfg`."""
    existing = None if fresh else find_unfinished_run(runs_dir, cfg)
    run_dir = existing or new_run_dir(runs_dir, cfg.name)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    device = pick_device(cfg.device)
    d = cfg.data
    data = load_classification_data(
        d.dataset,
        test_fraction=d.test_fraction,
        labeled_fraction=d.labeled_fraction,
        split_seed=d.split_seed,
        extra_unlabeled=d.extra_unlabeled,
        num_samples=d.num_samples,
    )
    manifest = {
        "config_hash": cfg.config_hash(),
        "data_hash": data.fingerprint(),
        "seeds": cfg.seeds,
        "started": started,
        "command": " ".join(sys.argv),
        "device": str(device),
        "versions": versions(),
        "data": {
            "train": len(data.x_train),
            "labeled": int(data.labeled.sum()),
            "extra_unlabeled": len(data.x_extra),
            "test": len(data.x_test),
        },
    }
    if existing:
        manifest["started"] = json.loads((run_dir / MANIFEST).read_text()).get("started", started)
        manifest["resumed_at"] = started
    atomic_write_text(run_dir / CONFIG, cfg.to_yaml())

    progress = (
        Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        if console is not None
        else None
    )
    t0 = time.perf_counter()
    with progress if progress is not None else contextlib.nullcontext():
        teacher, origin = load_teacher(
            cfg.teacher, data, device, cache_root=cache_root, progress=_progress_factory(progress)
        )
        manifest["teacher"] = origin
        atomic_write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2))
        ctx = RunContext(cfg, data, teacher, device, run_dir, _progress_factory(progress), stop_after)
        trained: list[TrainedModel] = []
        for seed in cfg.seeds:
            if cfg.evaluation.compare_scratch:
                trained.append(train_scratch(ctx, seed))
            trained.extend(METHODS.get(cfg.method.name)(ctx, seed))
    metrics = evaluate_models(cfg, ctx, trained)
    metrics["run"] = run_record(
        cfg, run_dir, manifest["started"], t0, seeds=cfg.seeds, device=str(device), method=cfg.method.name
    )
    write_report(run_dir, metrics, config_yaml=cfg.to_yaml(), manifest=manifest)
    atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2))  # last: marks the run finished
    return RunResult(run_dir, metrics, existing is not None)


def evaluate_models(cfg: RunConfig, ctx: RunContext, trained: list[TrainedModel]) -> dict[str, Any]:
    """Accuracy and agreement per seed, then size and latency per architecture, grouped by model name."""
    x, y = ctx.data.x_test.to(ctx.device), ctx.data.y_test.to(ctx.device)
    example = x[: cfg.evaluation.latency_batch_size]
    with torch.inference_mode():
        teacher_logits = ctx.teacher(x)
    teacher_acc = accuracy(teacher_logits, y)

    def describe(model: torch.nn.Module) -> dict[str, Any]:
        return {
            "params": count_parameters(model),
            "size_bytes": size_on_disk_bytes(model),
            "latency_ms": latency_ms_per_sample(model, example),
        }

    models: list[dict[str, Any]] = [
        {
            "name": "teacher",
            "role": "teacher",
            "arch": cfg.teacher.arch,
            "accuracy": teacher_acc,
            "accuracy_std": 0.0,
            "accuracy_per_seed": [teacher_acc],
            "extra_params": 0,
            "agreement_with_teacher": 1.0,
            "agreement_std": 0.0,
            **describe(ctx.teacher),
        }
    ]
    history: list[dict[str, Any]] = []
    groups: dict[str, list[TrainedModel]] = {}
    for t in trained:
        groups.setdefault(t.name, []).append(t)
        history.extend({"model": t.name, "seed": t.seed, **h} for h in t.history)
    for name, runs in groups.items():
        accs, agrees = [], []
        for t in runs:
            t.model.eval()
            with torch.inference_mode():
                logits = t.model(x)
            accs.append(accuracy(logits, y))
            agrees.append(agreement(logits, teacher_logits))
        acc, acc_std = mean_std(accs)
        agr, agr_std = mean_std(agrees)
        models.append(
            {
                "name": name,
                "role": runs[0].role,
                "arch": cfg.student.arch,
                "accuracy": acc,
                "accuracy_std": acc_std,
                "accuracy_per_seed": accs,
                "extra_params": runs[0].extra_params,
                "agreement_with_teacher": agr,
                "agreement_per_seed": agrees,
                "agreement_std": agr_std,
                **describe(runs[0].model),
            }
        )
    return {"models": models, "history": history, "summary": summarise(models)}


def summarise(models: list[dict[str, Any]]) -> dict[str, Any]:
    teacher = models[0]
    scratch = next((m for m in models if m["role"] == "scratch"), None)
    distilled = [m for m in models if m["role"] == "distilled"]
    if not distilled:
        return {"headline": f"teacher accuracy {teacher['accuracy']:.1%}"}
    best = max(distilled, key=lambda m: m["accuracy"])
    kept = best["accuracy"] / teacher["accuracy"] if teacher["accuracy"] else float("nan")
    ratio = teacher["params"] / best["params"]
    speed = teacher["latency_ms"] / best["latency_ms"] if best["latency_ms"] else float("nan")
    headline = (
        f"{best['name']} keeps {kept:.1%} of the teacher's accuracy "
        f"({best['accuracy']:.1%} vs {teacher['accuracy']:.1%}) with 1/{ratio:.0f} of its parameters, "
        f"{speed:.1f}x faster per sample"
    )
    summary: dict[str, Any] = {
        "headline": headline,
        "best_distilled": best["name"],
        "accuracy_kept": kept,
        "params_ratio": ratio,
        "speedup": speed,
    }
    if scratch is not None:
        gain = best["accuracy"] - scratch["accuracy"]
        summary["distilled_minus_scratch"] = gain
        summary["headline"] = (
            headline + f"; {gain * 100:+.1f} points over the same student trained from scratch"
        )
    return summary
