"""`kdistill run`: one config -> teacher, baseline and distilled students -> metrics.json and report.html.

The run directory `runs/<name>-<timestamp>/` holds the resolved config, the manifest, one folder per
training job (checkpoints, final safetensors weights) and the results. Restarting the same command finds
the unfinished run with the same config hash and continues it: finished jobs are loaded, the interrupted
one resumes from its last checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from kdistill.classic.config import DataConfig, RunConfig
from kdistill.classic.data import ClassificationData, load_classification_data
from kdistill.classic.methods import METHODS, RunContext, TrainedModel
from kdistill.classic.methods.scratch import train_scratch
from kdistill.classic.teacher import load_teacher
from kdistill.evaluation import (
    accuracy,
    agreement,
    count_parameters,
    mean_std,
    size_on_disk_bytes,
    write_report,
)
from kdistill.runs.logger import RunLogger
from kdistill.runs.run_dir import (
    RunResult,
    claim_run_dir,
    pick_device,
    run_record,
    start_manifest,
    write_config,
    write_manifest,
    write_metrics,
)
from kdistill.runs.threads import torch_threads
from kdistill.runs.timing import time_models

# The timing phase after training: kept rounds (after a warm-up round), forward passes per model and round
TIMING_ROUNDS = 5
TIMING_REPEATS = 10


def run(
    cfg: RunConfig,
    *,
    runs_dir: Path = Path("runs"),
    cache_root: Path | None = None,
    fresh: bool = False,
    console: Console | None = None,
    stop_after: int | None = None,
    wait: bool = False,
) -> RunResult:
    """Run (or continue) the whole experiment described by `cfg`, with `cfg.threads` torch threads.

    One process at a time runs a config in `runs_dir`: another one raises `RunBusyError`, or with `wait`
    is waited for (and its finished run returned)."""
    with torch_threads(cfg.torch_threads()), claim_run_dir(cfg, runs_dir, fresh=fresh, wait=wait) as claim:
        if claim.finished:
            return claim.finished_result()
        t0 = time.perf_counter()
        run_dir, resumed = claim.run_dir, claim.resumed
        device = pick_device(cfg.device)
        data = load_data(cfg.data)
        manifest = start_manifest(cfg, run_dir, resumed=resumed, seeds=cfg.seeds)
        manifest |= {"data_hash": data.fingerprint(), "device": str(device), "data": data_sizes(data)}
        write_config(run_dir, cfg)
        write_manifest(run_dir, manifest)
        logger = RunLogger.for_run(run_dir, cfg, console=console)
        with logger.shown():
            teacher, manifest["teacher"] = load_teacher(
                cfg.teacher, data, device, cache_root=cache_root, logger=logger
            )
            write_manifest(run_dir, manifest)
            ctx = RunContext(cfg, data, teacher, device, run_dir, logger, stop_after)
            trained = train_students(ctx)
        metrics = evaluate_models(cfg, ctx, trained)
        metrics["run"] = run_record(
            cfg, run_dir, manifest["started"], t0, seeds=cfg.seeds, device=str(device), method=cfg.method.name
        )
        write_report(run_dir, metrics, config_yaml=cfg.to_yaml(), manifest=manifest)
        write_metrics(run_dir, metrics)  # last: marks the run finished
    return RunResult(run_dir, metrics, resumed)


def load_data(d: DataConfig) -> ClassificationData:
    return load_classification_data(
        d.dataset,
        test_fraction=d.test_fraction,
        labeled_fraction=d.labeled_fraction,
        split_seed=d.split_seed,
        extra_unlabeled=d.extra_unlabeled,
        num_samples=d.num_samples,
    )


def data_sizes(data: ClassificationData) -> dict[str, int]:
    """The manifest's record of how many samples each part of the data has."""
    return {
        "train": len(data.x_train),
        "labeled": int(data.labeled.sum()),
        "extra_unlabeled": len(data.x_extra),
        "test": len(data.x_test),
    }


def train_students(ctx: RunContext) -> list[TrainedModel]:
    """For every seed: the scratch baseline (if compared) and the configured method's students. A model a
    method shares with the baseline (method none, born-again's generation 0) is listed once."""
    method = METHODS.get(ctx.cfg.method.name)
    trained: list[TrainedModel] = []
    for seed in ctx.cfg.seeds:
        if ctx.cfg.evaluation.compare_scratch:
            trained.append(train_scratch(ctx, seed))
        trained += [t for t in method(ctx, seed) if not any(t is u for u in trained)]
    return trained


def evaluate_models(cfg: RunConfig, ctx: RunContext, trained: list[TrainedModel]) -> dict[str, Any]:
    """Accuracy and agreement per seed, size per model name, then the teacher and one student per name timed
    together (`time_speeds`)."""
    x, y = ctx.data.x_test.to(ctx.device), ctx.data.y_test.to(ctx.device)
    with torch.inference_mode():
        teacher_logits = ctx.teacher(x)
    teacher_acc = accuracy(teacher_logits, y)

    def describe(model: torch.nn.Module) -> dict[str, Any]:
        return {"params": count_parameters(model), "size_bytes": size_on_disk_bytes(model)}

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
    speeds, timing = time_speeds(
        cfg, ctx, {"teacher": ctx.teacher} | {n: r[0].model for n, r in groups.items()}
    )
    for row in models:
        row |= speeds[row["name"]]
    return {"models": models, "history": history, "summary": summarise(models), "timing": timing}


def time_speeds(
    cfg: RunConfig, ctx: RunContext, models: dict[str, torch.nn.Module]
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Latency per sample (ms) of every model, median and spread, from one timing phase in which the models
    take turns on the same test batch (kdistill.runs.timing), and that phase's record for metrics.json."""
    example = ctx.data.x_test[: cfg.evaluation.latency_batch_size].to(ctx.device)
    batch = example.shape[0]

    def forward(model: torch.nn.Module):
        def call() -> None:
            model(example)
            if example.is_cuda:  # kernels run asynchronously: time the work, not its launch
                torch.cuda.synchronize(example.device)

        return call

    modes = {m: m.training for model in models.values() for m in model.modules()}
    for model in models.values():
        model.eval()
    try:
        with torch.inference_mode():
            phase = time_models(
                {name: forward(model) for name, model in models.items()},
                rounds=TIMING_ROUNDS,
                repeats=TIMING_REPEATS,
                threads=cfg.torch_threads(),
            )
    finally:
        for module, was_training in modes.items():
            module.training = was_training
    speeds = {
        name: {
            "latency_ms": 1000 * timing.median_s / batch,
            "latency_ms_min": 1000 * timing.min_s / batch,
            "latency_ms_max": 1000 * timing.max_s / batch,
        }
        for name, timing in phase.models.items()
    }
    return speeds, phase.record(batch_size=batch, device=str(ctx.device))


def summarise(models: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline: the best distilled student against the teacher (and the scratch student), or the
    scratch student alone when nothing was distilled (method none)."""
    teacher = models[0]
    scratch = next((m for m in models if m["role"] == "scratch"), None)
    distilled = [m for m in models if m["role"] == "distilled"]
    best = max(distilled, key=lambda m: m["accuracy"]) if distilled else scratch
    if best is None:
        return {"headline": f"teacher accuracy {teacher['accuracy']:.1%}"}
    kept = best["accuracy"] / teacher["accuracy"] if teacher["accuracy"] else float("nan")
    ratio = teacher["params"] / best["params"]
    speed = teacher["latency_ms"] / best["latency_ms"] if best["latency_ms"] else float("nan")
    headline = (
        f"{best['name']} keeps {kept:.1%} of the teacher's accuracy "
        f"({best['accuracy']:.1%} vs {teacher['accuracy']:.1%}) with 1/{ratio:.0f} of its parameters, "
        f"{speed:.1f}x faster per sample"
    )
    summary: dict[str, Any] = {"headline": headline}
    if distilled:
        summary["best_distilled"] = best["name"]
    summary |= {"accuracy_kept": kept, "params_ratio": ratio, "speedup": speed}
    if distilled and scratch is not None:
        gain = best["accuracy"] - scratch["accuracy"]
        summary["distilled_minus_scratch"] = gain
        summary["headline"] = (
            headline + f"; {gain * 100:+.1f} points over the same student trained from scratch"
        )
    return summary
