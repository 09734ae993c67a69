"""`kdistill run` for `task: lm`: the teacher answers prompts, a pruned student learns the answers, report.

    prompts ──> generation (teacher answers, cached by content hash, resumable) ──> train / held-out split
    teacher ──> block influence on its own answers ──> keep the most influential layers = student (before)
    student ──> SFT on the answers, or white-box KD (response tokens only, resumable) ──> student (after)
    teacher, student before, student after ──> held-out: perplexity on the teacher's answers, top-1
        next-token agreement with the teacher, ROUGE-L / exact match of generated answers, size, speed

`run_lm` is that list of steps, one function each. The run directory is the one of the classifier runs
(config.yaml, manifest.json, metrics.json, report.html); the distilled student is in `student/`, loadable
with `AutoModelForCausalLM.from_pretrained`.

Under `accelerate launch`/`torchrun` every process runs `run_lm`: the main process chooses the run
directory, generates, evaluates and writes; the others train beside it and read its caches.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from rich.console import Console
from torch import nn

from kdistill.evaluation import write_report
from kdistill.io import atomic_write_text
from kdistill.lm.config import LMRunConfig, LMTeacherConfig
from kdistill.runs.clock import TrainClock
from kdistill.runs.locations import default_cache_root, resolve_model_ref, resolve_prompts
from kdistill.runs.logger import RunLogger
from kdistill.runs.markers import cached_json, mark_done, read_done
from kdistill.runs.run_dir import (
    METRICS,
    RunResult,
    open_run_dir,
    run_record,
    start_manifest,
    write_config,
    write_manifest,
    write_metrics,
)
from kdistill.runs.threads import torch_threads
from kdistill.schema import stable_hash

SFT_ONLY = "student (SFT on answers only)"


@dataclass
class LMRun:
    """What the steps of one run share: its config, directory, manifest, processes and logger."""

    cfg: LMRunConfig
    run_dir: Path
    resumed: bool
    manifest: dict[str, Any]
    procs: PartialState
    logger: RunLogger
    cache_root: Path

    @property
    def main(self) -> bool:
        return self.procs.is_main_process

    def note(self, **fields: Any) -> None:
        """Add `fields` to manifest.json (the main process writes it)."""
        self.manifest.update(fields)
        if self.main:
            write_manifest(self.run_dir, self.manifest)


@dataclass
class Teacher:
    model: nn.Module
    tokenizer: Any
    path: str  # the resolved model reference (a local directory or a hub id)


@dataclass
class Arm:
    """One trained student: `kind` is its objective's signal (none = SFT on the answers)."""

    kind: str
    model: nn.Module
    history: list[dict[str, Any]]
    train_seconds: float | None  # every session's share of a resumed job; None if unknown


def run_lm(
    cfg: LMRunConfig,
    *,
    runs_dir: Path = Path("runs"),
    cache_root: Path | None = None,
    fresh: bool = False,
    console: Console | None = None,
    stop_after: int | None = None,
) -> RunResult:
    """Run (or continue) the experiment of `cfg`; `stop_after` ends training after that many steps."""
    from transformers.utils import logging as hf_logging

    from kdistill.lm.sft_data import tokenize_rows

    hf_logging.disable_progress_bar()  # kdistill's own progress bars say what is happening
    with torch_threads(cfg.torch_threads()):
        run = open_run(cfg, runs_dir, cache_root or default_cache_root(), fresh=fresh, console=console)
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        if cfg.student.init == "pretrained":
            check_student_tokenizer(cfg)  # before the teacher spends minutes answering
        with run.logger.shown():
            train_rows, eval_rows = teacher_answers(run)
            teacher = load_teacher(cfg.teacher)
            student = build_student(run, teacher, train_rows)
            student_size = model_size(student)
            evals = {}
            if run.main:
                evals["before"] = evaluate_model(
                    run, "student_before", "student before", student, teacher, eval_rows
                )
            tokenized = tokenize_rows(teacher.tokenizer, train_rows, max_length=cfg.train.max_length)
            signal_dir = (
                capture_signal(run, teacher, tokenized.examples) if cfg.distill.signal == "cached" else None
            )
            arms = train_arms(run, student, teacher, tokenized.examples, eval_rows, signal_dir, stop_after)
            if not run.main:  # the main process evaluates and reports; the others wait and read its metrics
                run.procs.wait_for_everyone()
                return RunResult(run.run_dir, json.loads((run.run_dir / METRICS).read_text()), run.resumed)
            evals |= evaluate_arms(run, arms, teacher, eval_rows)
        train = {"answers": len(train_rows), "response_tokens": tokenized.num_response_tokens}
        metrics = lm_metrics(run, teacher, student_size, arms, evals, eval_rows, train=train, t0=t0)
        write_report(run.run_dir, metrics, config_yaml=cfg.to_yaml(), manifest=run.manifest)
        write_metrics(run.run_dir, metrics)
        run.procs.wait_for_everyone()
        return RunResult(run.run_dir, metrics, run.resumed)


# -- 1. the run ---------------------------------------------------------------------------------------------


def open_run(
    cfg: LMRunConfig, runs_dir: Path, cache_root: Path, *, fresh: bool, console: Console | None
) -> LMRun:
    """The unfinished run of this config or a new one, chosen by the main process and shared with the
    others; its config.yaml and manifest.json written; the logger (console and trackers on the main only)."""
    procs = PartialState(cpu=not torch.cuda.is_available())
    chosen: list[Any] = [None, None]
    if procs.is_main_process:
        run_dir, resumed = open_run_dir(cfg, runs_dir, fresh=fresh)
        chosen = [str(run_dir), resumed]
    if procs.num_processes > 1:
        broadcast_object_list(chosen)
    run_dir, resumed = Path(chosen[0]), bool(chosen[1])
    manifest = start_manifest(cfg, run_dir, resumed=resumed, seeds=[cfg.seed])
    if procs.is_main_process:
        write_config(run_dir, cfg)
        write_manifest(run_dir, manifest)
    logger = RunLogger.for_run(run_dir, cfg, console=console, main=procs.is_main_process)
    return LMRun(cfg, run_dir, resumed, manifest, procs, logger, cache_root)


def check_student_tokenizer(cfg: LMRunConfig) -> None:
    """A pretrained student must share the teacher's tokenizer: the answers are tokenized once, with the
    teacher's, for every loss (cross-tokenizer distillation is future work)."""
    from kdistill.lm.models import load_tokenizer
    from kdistill.lm.tokenizers import assert_same_tokenizer

    t = cfg.teacher
    teacher_tok = load_tokenizer(
        resolve_model_ref(t.model), gguf_file=t.gguf_file, trust_remote_code=t.trust_remote_code
    )
    assert_same_tokenizer(
        teacher_tok, load_tokenizer(cfg.student.model, trust_remote_code=t.trust_remote_code)
    )


# -- 2. the teacher's answers, split by prompt --------------------------------------------------------------


def teacher_answers(run: LMRun) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, held-out rows): the teacher's answers to the prompts, generated once."""
    from kdistill.generate.store import load_generations

    cfg = run.cfg
    with run.procs.main_process_first():  # the others find the main process's answers cached
        store = generate_teacher_answers(cfg, resolve_prompts(cfg.prompts.file), run.cache_root, run.logger)
    rows = [dict(r) for r in load_generations(store)]
    train_rows, eval_rows = split_rows(rows, cfg.prompts.held_out, cfg.prompts.split_seed)
    run.note(
        data={
            "generations": str(store),
            "answers": len(rows),
            "train": len(train_rows),
            "held_out": len(eval_rows),
        }
    )
    return train_rows, eval_rows


def generate_teacher_answers(
    cfg: LMRunConfig, prompts_file: Path, cache_root: Path, logger: RunLogger
) -> Path:
    """Teacher answers for every prompt, in a generation store keyed by what determines them."""
    from kdistill.generate.prompts import load_prompts
    from kdistill.generate.run import generate

    prompts = load_prompts(prompts_file)
    if cfg.prompts.limit is not None:
        prompts = prompts[: cfg.prompts.limit]
    key = stable_hash(
        {
            "teacher": cfg.teacher.model_dump(mode="json"),
            "generation": cfg.generation.model_dump(mode="json"),
            "prompts": [(p.id, p.prompt, p.messages) for p in prompts],
        }
    )
    out = cache_root / "generations" / key
    log = logger.job("generate", "teacher answers", total=len(prompts))
    if read_done(out) is not None:  # a store from before the marker had a name is re-verified, never re-asked
        log.done()
        return out / "store"
    out.mkdir(parents=True, exist_ok=True)
    subset = out / "prompts.jsonl"
    if not subset.exists():
        records = [
            {"id": p.id, "prompt": p.prompt} if p.prompt is not None else {"id": p.id, "messages": p.messages}
            for p in prompts
        ]
        atomic_write_text(subset, "".join(json.dumps(r) + "\n" for r in records))
    summary = generate(
        generation_config(cfg, subset, out / "store"), progress=lambda stats: log.log({"step": stats.done})
    )
    mark_done(out, {"summary": str(summary)})
    return out / "store"


def generation_config(cfg: LMRunConfig, prompts: Path, out: Path) -> Any:
    """The `kdistill generate` config of the run's teacher answers: the local teacher, float32."""
    from kdistill.generate.run import GenerationConfig

    return GenerationConfig.model_validate(
        {
            "prompts": str(prompts),
            "out": str(out),
            "teacher": {
                "kind": "hf_local",
                "model": resolve_model_ref(cfg.teacher.model),
                "gguf_file": cfg.teacher.gguf_file,
                "batch_size": cfg.generation.batch_size,
                "trust_remote_code": cfg.teacher.trust_remote_code,
                "dtype": "float32",
            },
            "sampling": {
                "max_tokens": cfg.generation.max_new_tokens,
                "temperature": cfg.generation.temperature,
                "seed": cfg.seed if cfg.generation.temperature > 0 else None,
            },
            "allow_length": cfg.generation.allow_length,
            "concurrency": cfg.generation.batch_size * 2,
        }
    )


def split_rows(rows: list[dict[str, Any]], held_out: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Split by prompt (never one prompt's samples on both sides), seeded."""
    prompt_ids = sorted({r["prompt_id"] for r in rows})
    if held_out >= len(prompt_ids):
        raise ValueError(
            f"prompts.held_out={held_out} leaves no training prompts ({len(prompt_ids)} answered)"
        )
    random.Random(seed).shuffle(prompt_ids)
    evaluation = set(prompt_ids[:held_out])
    return [r for r in rows if r["prompt_id"] not in evaluation], [
        r for r in rows if r["prompt_id"] in evaluation
    ]


# -- 3. teacher and student ---------------------------------------------------------------------------------


def load_teacher(t: LMTeacherConfig) -> Teacher:
    from kdistill.lm.models import load_causal_lm, load_tokenizer

    path = resolve_model_ref(t.model)
    tokenizer = load_tokenizer(path, gguf_file=t.gguf_file, trust_remote_code=t.trust_remote_code)
    model = load_causal_lm(
        path, gguf_file=t.gguf_file, trust_remote_code=t.trust_remote_code, dtype=torch.float32
    )
    return Teacher(model, tokenizer, path)


def build_student(run: LMRun, teacher: Teacher, train_rows: list[dict[str, Any]]) -> nn.Module:
    """The student before training: the teacher's most influential layers (prune), a pretrained model, or
    a fresh one from a config; it must cover the teacher's vocabulary."""
    from kdistill.lm.models import load_causal_lm, model_from_config
    from kdistill.lm.prune import block_influence, choose_layers, prune_layers, pruning_report

    s = run.cfg.student
    if s.init == "prune":
        keep, influence = s.keep_layers, None
        if isinstance(keep, int):
            calibration = [r["completion"] for r in train_rows[: s.calibration_texts]]
            influence = block_influence(teacher.model, teacher.tokenizer, calibration)
            keep = choose_layers(influence, keep)
        student = prune_layers(teacher.model, keep)
        run.note(pruning=pruning_report(teacher.model, student, keep, influence))
    elif s.init == "pretrained":
        student = load_causal_lm(s.model, trust_remote_code=run.cfg.teacher.trust_remote_code)
    else:
        student = model_from_config(s.config)
    vocab = student.get_output_embeddings().weight.shape[0]
    if vocab < len(teacher.tokenizer):
        raise ValueError(
            f"student.{s.init}: the student's vocabulary has {vocab} tokens but the teacher's tokenizer "
            f"{len(teacher.tokenizer)}; teacher and student must share a tokenizer (cross-tokenizer "
            "distillation is not supported yet)"
        )
    return student


def model_size(model: nn.Module) -> dict[str, int]:
    from kdistill.lm.models import size_on_disk_bytes

    return {"params": sum(p.numel() for p in model.parameters()), "size_bytes": size_on_disk_bytes(model)}


# -- 4. the teacher signal (distill.signal: cached) ---------------------------------------------------------


def capture_signal(run: LMRun, teacher: Teacher, examples: list[dict[str, Any]]) -> Path:
    """The teacher's top-k log-probs over the training examples, captured once into the content-addressed
    cache (the main process computes, the others then find it there)."""
    from kdistill.lm.capture import capture_topk, teacher_identity
    from kdistill.lm.tokenizers import tokenizer_fingerprint

    cfg = run.cfg
    key_inputs = {
        "teacher": teacher_identity(
            cfg.teacher.model, gguf_file=cfg.teacher.gguf_file, model_dir=teacher.path, dtype="float32"
        ),
        "tokenizer": tokenizer_fingerprint(teacher.tokenizer),
    }
    log = run.logger.job("capture", f"teacher top-{cfg.distill.top_k}", total=len(examples))
    with run.procs.main_process_first():
        result = capture_topk(
            teacher.model,
            examples,
            k=cfg.distill.top_k,
            key_inputs=key_inputs,
            batch_size=cfg.evaluation.batch_size,
            pad_token_id=teacher.tokenizer.pad_token_id,
            progress=lambda done, total: log.log({"step": done}),
            cache_root=run.cache_root,
        )
    run.note(teacher_signal=str(result.store_dir))
    return result.store_dir


# -- 5. training: one job per arm ---------------------------------------------------------------------------


def train_arms(
    run: LMRun,
    student: nn.Module,
    teacher: Teacher,
    examples: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    signal_dir: Path | None,
    stop_after: int | None,
) -> dict[str, Arm]:
    """The configured objective's student (in `student/`) and, with compare_with_sft, an SFT-only one from
    the same start and for the same steps (in `student_sft/`)."""
    d, t = run.cfg.distill, run.cfg.train
    kinds = [d.signal] + (["none"] if d.compare_with_sft else [])
    global_batch = t.micro_batch_size * t.grad_accum * run.procs.num_processes
    steps = max(1, math.ceil(t.epochs * len(examples) / global_batch))
    evaluate = held_out_perplexity(run, teacher, eval_rows) if t.eval_every is not None else None
    # the first arm trains the initial student itself; the comparison arm starts from a copy of it
    pristine = copy.deepcopy(student) if len(kinds) > 1 else None
    arms = {}
    for kind in kinds:
        first = kind == kinds[0]
        out_dir = run.run_dir / ("student" if first else "student_sft")
        start = student if first else pristine
        arms[kind] = train_arm(
            run, kind, start, teacher, examples, steps, out_dir, signal_dir, evaluate, stop_after
        )
    return arms


def train_arm(
    run: LMRun,
    kind: str,
    student: nn.Module,
    teacher: Teacher,
    examples: list[dict[str, Any]],
    steps: int,
    out_dir: Path,
    signal_dir: Path | None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None,
    stop_after: int | None,
) -> Arm:
    """One resumable training job (`jobs/sft` or `jobs/kd-<signal>`): loaded when done.json says it
    finished, else trained from its latest checkpoint and marked done."""
    from kdistill.lm.models import load_causal_lm
    from kdistill.lm.train import train_objective

    cfg = run.cfg
    job_dir = run.run_dir / "jobs" / ("sft" if kind == "none" else f"kd-{kind}")
    label = "student SFT" if kind == "none" else f"student KD ({kind} teacher, {cfg.distill.divergence})"
    log = run.logger.job(job_dir.name, label, total=steps)
    finished = read_done(job_dir)
    if finished is not None and (out_dir / "config.json").is_file():
        log.done()
        return Arm(kind, load_causal_lm(out_dir), finished["history"], finished.get("train_seconds"))
    clock = TrainClock(job_dir / "train_clock.json", write=run.main)

    def on_log(entry: dict[str, Any]) -> None:
        clock.tick()
        log.log(entry)

    objective = make_objective(kind, cfg, student, teacher, signal_dir)
    torch.manual_seed(cfg.seed)  # LoRA adapters and dropout start the same on a rerun
    result = train_objective(
        objective,
        examples,
        cfg.train,
        steps=steps,
        seed=cfg.seed,
        lora=cfg.student.lora,
        pad_token_id=teacher.tokenizer.pad_token_id,
        tokenizer=teacher.tokenizer,
        output_dir=out_dir,
        checkpoint_dir=job_dir / "checkpoints",
        evaluate=evaluate,
        on_log=on_log,
        stop_after=stop_after,
    )
    if not result.finished:
        raise RuntimeError("training stopped early (stop_after)")
    seconds = round(clock.seconds, 3)
    if run.main:
        mark_done(job_dir, {"history": result.history, "steps": steps, "train_seconds": seconds})
    return Arm(kind, result.model, result.history, seconds)


def make_objective(
    kind: str, cfg: LMRunConfig, student: nn.Module, teacher: Teacher, signal_dir: Path | None
) -> nn.Module:
    """The training objective of one arm: SFT on the answers, or the white-box terms of `distill`."""
    from kdistill.lm.objectives import CachedTeacher, OnlineTeacher, SFTObjective, TokenDistillObjective
    from kdistill.lm.signal_store import TeacherSignal

    if kind == "none":
        return SFTObjective(student)
    if kind == "cached":
        assert signal_dir is not None
        source: CachedTeacher | OnlineTeacher = CachedTeacher(TeacherSignal(signal_dir))
    else:
        source = OnlineTeacher(teacher.model, dtype=getattr(torch, cfg.distill.teacher_dtype))
    return TokenDistillObjective(
        student,
        cfg.distill,
        teacher=source,
        pad_token_id=teacher.tokenizer.pad_token_id,
        eos_token_id=teacher.tokenizer.eos_token_id,
        seed=cfg.seed,
    )


def held_out_perplexity(
    run: LMRun, teacher: Teacher, eval_rows: list[dict[str, Any]]
) -> Callable[[nn.Module], dict[str, float]]:
    """The loop's `evaluate` for train.eval_every: perplexity on the held-out teacher answers."""
    from kdistill.lm.evaluate import response_perplexity
    from kdistill.lm.sft_data import tokenize_rows

    held_out = tokenize_rows(teacher.tokenizer, eval_rows, max_length=run.cfg.train.max_length).examples
    pad, batch_size = teacher.tokenizer.pad_token_id, run.cfg.evaluation.batch_size

    def evaluate(student: nn.Module) -> dict[str, float]:
        ppl = response_perplexity(student, held_out, pad_token_id=pad, batch_size=batch_size)
        return {"perplexity": ppl["perplexity"]}

    return evaluate


# -- 6. evaluation (main process) ---------------------------------------------------------------------------


def evaluate_model(
    run: LMRun, name: str, label: str, model: nn.Module, teacher: Teacher, eval_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Every held-out metric of one model, computed once per run into `eval_<name>.json`."""
    from kdistill.lm.evaluate import evaluate_student

    def compute() -> dict[str, Any]:
        spin = run.logger.job(f"eval-{name}", f"eval: {label}")
        result = evaluate_student(
            model,
            teacher.tokenizer,
            eval_rows,
            teacher=teacher.model,
            max_length=run.cfg.train.max_length,
            max_new_tokens=run.cfg.evaluation.max_new_tokens or run.cfg.generation.max_new_tokens,
            batch_size=run.cfg.evaluation.batch_size,
        )
        spin.done()
        return result

    return cached_json(run.run_dir / f"eval_{name}.json", compute)


def evaluate_arms(
    run: LMRun, arms: dict[str, Arm], teacher: Teacher, eval_rows: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The trained students (after; sft, the comparison arm) and the teacher on the held-out answers."""
    d = run.cfg.distill
    evals = {
        "after": evaluate_model(
            run, "student_after", "student after", arms[d.signal].model, teacher, eval_rows
        )
    }
    if d.compare_with_sft:
        sft = arms["none"].model
        evals["sft"] = evaluate_model(run, "student_sft", "student SFT only", sft, teacher, eval_rows)
    evals["teacher"] = evaluate_model(run, "teacher", "teacher", teacher.model, teacher, eval_rows)
    return evals


# -- 7. metrics.json ----------------------------------------------------------------------------------------


def lm_metrics(
    run: LMRun,
    teacher: Teacher,
    student_size: dict[str, int],
    arms: dict[str, Arm],
    evals: dict[str, dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    *,
    train: dict[str, int],
    t0: float,
) -> dict[str, Any]:
    """metrics.json: one row per model (teacher, before, [sft], distilled), the training histories, what
    was optimised, the headline and example answers."""
    cfg, d = run.cfg, run.cfg.distill
    distilled = arms[d.signal]
    name = "student (distilled)" if d.signal == "none" else f"student (KD: {d.signal} {d.divergence})"
    models = [
        _model_row("teacher", "teacher", model_size(teacher.model), evals["teacher"]),
        _model_row("student (pruned, before)", "before", student_size, evals["before"]),
    ]
    history = [{"model": name, "seed": cfg.seed, **h} for h in distilled.history]
    if "sft" in evals:
        sft = arms["none"]
        models.append(_model_row(SFT_ONLY, "sft", student_size, evals["sft"], seconds=sft.train_seconds))
        history += [{"model": SFT_ONLY, "seed": cfg.seed, **h} for h in sft.history]
    extra = _extra_params(cfg, distilled.model, teacher.model)
    models.append(_model_row(name, "distilled", student_size, evals["after"], extra, distilled.train_seconds))
    return {
        "task": "lm",
        "models": models,
        "history": history,
        "objective": _objective_summary(cfg),
        "summary": _lm_summary(models, train["answers"], train["response_tokens"]),
        "examples": _examples(eval_rows, evals["teacher"], evals["before"], evals["after"]),
        "run": run_record(
            cfg, run.run_dir, run.manifest["started"], t0, seeds=[cfg.seed], device=run.procs.device.type
        ),
    }


def _model_row(
    name: str,
    role: str,
    size: dict[str, int],
    ev: dict[str, Any],
    extra: int = 0,
    seconds: float | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "role": role,
        **size,
        "extra_params": extra,
        "perplexity_on_teacher_answers": ev["perplexity"],
        "agreement_with_teacher": ev.get("teacher_agreement"),
        "rouge_l": ev.get("rouge_l_f1"),
        "exact_match": ev.get("exact_match"),
        "latency_ms": 1000 * ev["seconds_per_answer"],
        "tokens_per_s": ev["new_tokens_per_second"],
        "accuracy": ev.get("teacher_agreement"),
        "accuracy_std": 0.0,
        "train_seconds": seconds,
    }


def _examples(rows: list[dict], teacher: dict, before: dict, after: dict, n: int = 5) -> list[dict[str, str]]:
    out = []
    for i, r in enumerate(rows[:n]):
        out.append(
            {
                "prompt": r.get("prompt") or json.dumps(r.get("messages")),
                "teacher": r["completion"],
                "student_before": before.get("answers", [""] * n)[i],
                "student_after": after.get("answers", [""] * n)[i],
            }
        )
    return out


def _lm_summary(models: list[dict[str, Any]], train_rows: int, train_tokens: int) -> dict[str, Any]:
    teacher, before, after = models[0], models[1], models[-1]
    ratio = teacher["params"] / after["params"]
    speed = teacher["latency_ms"] / after["latency_ms"] if after["latency_ms"] else float("nan")
    headline = (
        f"distilled student: perplexity on held-out teacher answers {after['perplexity_on_teacher_answers']:.1f} "
        f"(before {before['perplexity_on_teacher_answers']:.1f}, teacher {teacher['perplexity_on_teacher_answers']:.1f}), "
        f"top-1 agreement with the teacher {after['agreement_with_teacher']:.1%} "
        f"(before {before['agreement_with_teacher']:.1%}), {ratio:.2f}x fewer parameters, {speed:.2f}x faster answers"
    )
    sft = next((m for m in models if m["role"] == "sft"), None)
    if sft is not None:
        headline += (
            f"; the SFT-only student on the same answers and steps: perplexity "
            f"{sft['perplexity_on_teacher_answers']:.1f}, agreement {sft['agreement_with_teacher']:.1%}"
        )
    return {
        "headline": headline,
        "train_answers": train_rows,
        "train_response_tokens": train_tokens,
        "params_ratio": ratio,
        "speedup": speed,
    }


def _objective_summary(cfg: LMRunConfig) -> dict[str, Any]:
    d = cfg.distill
    if d.signal == "none":
        return {"kind": "sft", "description": "SFT on the teacher's answers (response tokens)"}
    out = d.model_dump(mode="json")
    source = f"cached top-{d.top_k}" if d.signal == "cached" else "online teacher"
    out["description"] = (
        f"{d.divergence} on the teacher's next-token distributions ({source}, T={d.temperature})"
        + (f" + {d.ce_weight} x SFT" if d.ce_weight else "")
        + (f" + hidden states ({d.hidden.loss})" if d.hidden else "")
        + (f", {d.on_policy_fraction:.0%} of steps on-policy" if d.on_policy_fraction else "")
    )
    return out


def _extra_params(cfg: LMRunConfig, student: nn.Module, teacher: nn.Module) -> int:
    """Parameters trained beside the student and dropped after training (hidden-state projections)."""
    hidden = cfg.distill.hidden if cfg.distill.signal == "online" else None
    s_width, t_width = student.config.hidden_size, teacher.config.hidden_size
    if hidden is None or s_width == t_width:
        return 0
    return len(hidden.layer_map) * s_width * t_width
