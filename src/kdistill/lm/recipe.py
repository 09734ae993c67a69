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
from contextlib import ExitStack
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
from kdistill.lm.config import LMRunConfig, LMTeacherConfig, LMTrainConfig
from kdistill.runs.checkpoint import discard_checkpoints
from kdistill.runs.clock import TrainClock
from kdistill.runs.locations import (
    ModelRef,
    default_cache_root,
    resolve_model,
    resolve_model_ref,
    resolve_prompts,
)
from kdistill.runs.logger import RunLogger
from kdistill.runs.markers import cached_json, mark_done, read_done
from kdistill.runs.run_dir import (
    METRICS,
    RunClaim,
    RunResult,
    claim_run_dir,
    run_record,
    start_manifest,
    write_config,
    write_manifest,
    write_metrics,
)
from kdistill.runs.threads import torch_threads
from kdistill.runs.timing import time_models
from kdistill.schema import stable_hash

SFT_ONLY = "student (SFT on answers only)"
RECOVERED = "student (recovered on text)"
SIGNAL_STORES = ("cached", "endpoint")  # distill.signal values trained from a stored signal


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
    student_tokenizer: Any = None  # set once chosen (`choose_student_tokenizer`)

    @property
    def cross(self) -> bool:
        """Whether the student tokenizes differently from the teacher (set with the student's tokenizer)."""
        return bool(self.manifest.get("student_tokenizer", {}).get("cross"))

    @property
    def main(self) -> bool:
        return self.procs.is_main_process

    def note(self, **fields: Any) -> None:
        """Add `fields` to manifest.json (the main process writes it)."""
        self.manifest.update(fields)
        if self.main:
            write_manifest(self.run_dir, self.manifest)

    def warn(self, text: str) -> None:
        """A warning on the console and in manifest.json (`warnings`), once per text."""
        if text in self.manifest.get("warnings", []):
            return
        self.note(warnings=[*self.manifest.get("warnings", []), text])
        if self.main:
            self.logger.progress.warn(text)


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
    wait: bool = False,
) -> RunResult:
    """Run (or continue) the experiment of `cfg`; `stop_after` ends training after that many steps. One
    launch at a time runs a config in `runs_dir`: another one raises `RunBusyError` (in its main process),
    or with `wait` waits for it (and returns its finished run)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # kdistill's own progress bars say what is happening
    with torch_threads(cfg.torch_threads()), ExitStack() as held:
        procs = PartialState(cpu=not torch.cuda.is_available())
        claim = claim_run(cfg, runs_dir, procs, held, fresh=fresh, wait=wait)
        if claim.finished:
            return claim.finished_result()
        run = open_run(cfg, claim, procs, cache_root or default_cache_root(), console=console)
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        if cfg.student.init == "pretrained":
            check_student_tokenizer(cfg)  # before the teacher spends minutes answering
        with run.logger.shown():
            train_rows, eval_rows = teacher_answers(run)
            reasoning = reasoning_data(run, train_rows, eval_rows) if cfg.verify is not None else None
            if (
                reasoning is not None
            ):  # the run's student learns the kept answers; students answer each problem once
                train_rows, eval_rows = reasoning.arms[0].rows, reasoning.eval_prompts
            teacher = load_teacher(cfg.teacher)
            choose_student_tokenizer(run, teacher, train_rows)
            student = build_student(run, teacher, train_rows)
            student_size = model_size(student)
            evals = {}
            if run.main:
                evals["before"] = evaluate_model(
                    run, "student_before", "student before", student, teacher, eval_rows
                )
                if cfg.distill.draft:  # before training changes the student in place
                    from kdistill.lm.draft import run_acceptance

                    draft_before = run_acceptance(run, "before", student, teacher, eval_rows)
            draft_recovered = None
            if cfg.student.recover is not None:  # every arm starts from the recovered student
                student = recover_on_text(run, student, teacher, stop_after)
                if run.main:
                    evals["recovered"] = evaluate_model(
                        run, "student_recovered", "student recovered", student, teacher, eval_rows
                    )
                    if cfg.distill.draft:  # what the text phase alone did for acceptance
                        from kdistill.lm.draft import run_acceptance

                        draft_recovered = run_acceptance(run, "recovered", student, teacher, eval_rows)
            examples = training_examples(run, train_rows)
            signal_dir = (
                teacher_signal(run, teacher, train_rows) if cfg.distill.signal in SIGNAL_STORES else None
            )
            data_arms = (
                {f"data-{a.name}": training_examples(run, a.rows) for a in reasoning.arms[1:]}
                if reasoning
                else {}
            )
            arms = train_arms(run, student, teacher, examples, eval_rows, signal_dir, stop_after, data_arms)
            if not run.main:  # the main process evaluates and reports; the others wait and read its metrics
                run.procs.wait_for_everyone()
                return RunResult(run.run_dir, json.loads((run.run_dir / METRICS).read_text()), run.resumed)
            evals |= evaluate_arms(run, arms, teacher, eval_rows, reasoning)
            speeds, timing = time_generation(run, teacher, arms, eval_rows)
            deploy_record = None
            if cfg.evaluation.deploy is not None:  # GGUF size and llama.cpp speed beside PyTorch's
                speeds, deploy_record = deploy_speeds(run, teacher, arms, eval_rows, speeds)
            if cfg.distill.draft:
                from kdistill.lm.draft import run_draft_metrics

                draft = run_draft_metrics(
                    run,
                    teacher,
                    arms[cfg.distill.signal].model,
                    eval_rows,
                    draft_before,
                    recovered=draft_recovered,
                )
        train = {"answers": len(train_rows), "response_tokens": response_tokens(examples)}
        metrics = lm_metrics(
            run, teacher, student_size, arms, evals, eval_rows, speeds, timing, train=train, t0=t0
        )
        if deploy_record is not None:
            metrics["deploy"] = deploy_record
        if reasoning is not None:
            data_examples = {k: len(v) for k, v in data_arms.items()}
            add_reasoning_metrics(metrics, reasoning, evals, data_examples, speeds)
        if cfg.distill.draft:
            from kdistill.lm.draft import draft_summary_lines

            metrics["draft"] = draft
            metrics["summary"] |= draft_summary_lines(draft)
        write_report(run.run_dir, metrics, config_yaml=cfg.to_yaml(), manifest=run.manifest)
        write_metrics(run.run_dir, metrics)
        run.procs.wait_for_everyone()
        return RunResult(run.run_dir, metrics, run.resumed)


# -- 1. the run ---------------------------------------------------------------------------------------------


def claim_run(
    cfg: LMRunConfig, runs_dir: Path, procs: PartialState, held: ExitStack, *, fresh: bool, wait: bool
) -> RunClaim:
    """The run folder, claimed by the main process (it holds the config's lock until `held` closes) and
    shared with the others: they never lock, so the ranks of one launch do not refuse each other."""
    chosen: list[Any] = [None, None, None]
    if procs.is_main_process:
        claim = held.enter_context(claim_run_dir(cfg, runs_dir, fresh=fresh, wait=wait))
        chosen = [str(claim.run_dir), claim.resumed, claim.finished]
    if procs.num_processes > 1:
        broadcast_object_list(chosen)
    return RunClaim(Path(chosen[0]), resumed=bool(chosen[1]), finished=bool(chosen[2]))


def open_run(
    cfg: LMRunConfig, claim: RunClaim, procs: PartialState, cache_root: Path, *, console: Console | None
) -> LMRun:
    """The claimed run with its config.yaml and manifest.json written; the logger (console and trackers on
    the main process only)."""
    run_dir, resumed = claim.run_dir, claim.resumed
    manifest = start_manifest(cfg, run_dir, resumed=resumed, seeds=[cfg.seed])
    if procs.is_main_process:
        write_config(run_dir, cfg)
        write_manifest(run_dir, manifest)
    logger = RunLogger.for_run(run_dir, cfg, console=console, main=procs.is_main_process)
    return LMRun(cfg, run_dir, resumed, manifest, procs, logger, cache_root)


CROSS_HINT = (
    "set distill.cross_tokenizer (e.g. {loss: hybrid}) to distil across tokenizers from a cached signal "
    "named by bytes, or distill.signal: none to train on the answers as text"
)


def check_student_tokenizer(cfg: LMRunConfig) -> None:
    """Before the teacher spends minutes answering: a pretrained student with another tokenizer than the
    teacher's needs `distill.cross_tokenizer` for any white-box signal (SFT on the answers needs nothing)."""
    from kdistill.lm.models import load_tokenizer
    from kdistill.lm.tokenizers import assert_same_tokenizer

    if cfg.distill.signal == "none" or cfg.distill.cross_tokenizer is not None:
        return
    t = cfg.teacher
    ref = teacher_model_ref(t)
    teacher_tok = load_tokenizer(ref.path, gguf_file=ref.gguf_file, trust_remote_code=t.trust_remote_code)
    student_ref = (
        resolve_model_ref(cfg.student.tokenizer, field="student.tokenizer")
        if cfg.student.tokenizer
        else cfg.student.model
    )
    try:
        assert_same_tokenizer(teacher_tok, load_tokenizer(student_ref, trust_remote_code=t.trust_remote_code))
    except ValueError as err:
        raise ValueError(f"{err}; {CROSS_HINT}") from None


def training_examples(run: LMRun, train_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training rows in the student's tokens (with the answers' byte spans when aligning across tokenizers)."""
    from kdistill.lm.capture import answer_examples
    from kdistill.lm.sft_data import tokenize_rows

    max_length = run.cfg.train.max_length
    if run.cfg.distill.cross_tokenizer is not None:
        return answer_examples(run.student_tokenizer, train_rows, max_length=max_length)
    return tokenize_rows(run.student_tokenizer, train_rows, max_length=max_length).examples


def response_tokens(examples: list[dict[str, Any]]) -> int:
    """Tokens the SFT loss covers (labels[0] is never predicted)."""
    from kdistill.lm.sft_data import IGNORE_INDEX

    return sum(sum(t != IGNORE_INDEX for t in e["labels"][1:]) for e in examples)


# -- 2. the teacher's answers, split by prompt --------------------------------------------------------------


def teacher_answers(run: LMRun) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, held-out rows): the teacher's answers to the prompts, generated once."""
    from kdistill.generate.store import load_generations

    cfg = run.cfg
    if cfg.prompts.generations is not None:
        store = Path(cfg.prompts.generations)
    else:
        with run.procs.main_process_first():  # the others find the main process's answers cached
            store = generate_teacher_answers(
                cfg, resolve_prompts(cfg.prompts.file), run.cache_root, run.logger
            )
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
    from kdistill.generate.run import check_servers, generate

    prompts = load_prompts(prompts_file)
    if cfg.prompts.limit is not None:
        prompts = prompts[: cfg.prompts.limit]
    key = stable_hash(
        {
            # without an endpoint the key is the one of runs before `teacher.endpoint` existed: their caches hold
            "teacher": cfg.teacher.model_dump(
                mode="json", exclude={"endpoint"} if cfg.teacher.endpoint is None else None
            ),
            # one sample: the key of runs before `generation.samples` existed, whose caches hold its answers
            "generation": cfg.generation.model_dump(
                mode="json", exclude={"samples"} if cfg.generation.samples == 1 else None
            ),
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
    gen_cfg = generation_config(cfg, subset, out / "store")
    check_servers(
        gen_cfg
    )  # an endpoint teacher: reachable and serving the named model, or one line in seconds
    summary = generate(gen_cfg, progress=lambda stats: log.log({"step": stats.done}))
    mark_done(out, {"summary": str(summary)})
    return out / "store"


def generation_config(cfg: LMRunConfig, prompts: Path, out: Path) -> Any:
    """The `kdistill generate` config of the run's teacher answers: the local teacher in float32, or the
    teacher's endpoint (or endpoints) with top_logprobs."""
    from kdistill.generate.run import GenerationConfig

    e = cfg.teacher.endpoint
    sampling = {
        "max_tokens": cfg.generation.max_new_tokens,
        "temperature": cfg.generation.temperature,
        "seed": cfg.seed if cfg.generation.temperature > 0 else None,
        "samples": cfg.generation.samples,
    }
    if e is not None:
        return GenerationConfig.model_validate(
            {
                "prompts": str(prompts),
                "out": str(out),
                "teacher": {
                    "kind": "openai",
                    # one server, or several of the same model (a pool; record ids then name no server)
                    **(
                        {"base_url": e.base_url}
                        if e.endpoints is None
                        else {"endpoints": [x.model_dump(mode="json") for x in e.endpoints]}
                    ),
                    "model": e.model,
                    "api_key_env": e.api_key_env,
                    "timeout_s": e.timeout_s,
                    "render_with": resolve_model_ref(e.render_with, field="teacher.render_with")
                    if e.render_with
                    else None,
                },
                "sampling": sampling | {"top_logprobs": e.top_logprobs},
                "allow_length": cfg.generation.allow_length,
                "concurrency": e.concurrency,
            }
        )
    return GenerationConfig.model_validate(
        {
            "prompts": str(prompts),
            "out": str(out),
            "teacher": {
                "kind": "hf_local",
                "model": teacher_model_ref(cfg.teacher).path,
                "gguf_file": teacher_model_ref(cfg.teacher).gguf_file,
                "batch_size": cfg.generation.batch_size,
                "trust_remote_code": cfg.teacher.trust_remote_code,
                "dtype": "float32",
            },
            "sampling": sampling,
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

    ref = teacher_model_ref(t)
    tokenizer = load_tokenizer(ref.path, gguf_file=ref.gguf_file, trust_remote_code=t.trust_remote_code)
    model = load_causal_lm(
        ref.path, gguf_file=ref.gguf_file, trust_remote_code=t.trust_remote_code, dtype=torch.float32
    )
    return Teacher(model, tokenizer, ref.path)


def teacher_model_ref(t: LMTeacherConfig) -> ModelRef:
    """The teacher's folder (or hub id) and GGUF file: `model` may be a folder, a hub id, a .gguf file or
    pkg:<package>[/<path>], and a folder holding one GGUF and no config.json means that GGUF."""
    return resolve_model(t.model, gguf_file=t.gguf_file, field="teacher.model")


def choose_student_tokenizer(run: LMRun, teacher: Teacher, train_rows: list[dict[str, Any]]) -> None:
    """The student's tokenizer (`student.tokenizer`, `student.new_tokenizer` trained on the training prompts and
    answers and saved in the run directory, the pretrained student's own, else the teacher's); whether it
    differs from the teacher's is recorded, and a white-box signal across tokenizers needs `cross_tokenizer`."""
    from kdistill.lm.models import load_tokenizer
    from kdistill.lm.tokenizers import tokenizer_difference, tokenizer_fingerprint

    cfg, s = run.cfg, run.cfg.student
    trust = cfg.teacher.trust_remote_code
    if s.new_tokenizer is not None:
        saved = run.run_dir / "student_tokenizer"
        if run.main and not (saved / "tokenizer_config.json").is_file():
            from kdistill.lm.student_tokenizer import train_student_tokenizer

            texts = [
                r["prompt"] if r.get("prompt") else "\n".join(m["content"] for m in r["messages"])
                for r in train_rows
            ]
            texts += [r["completion"] for r in train_rows]
            trained = train_student_tokenizer(
                texts,
                vocab_size=s.new_tokenizer.vocab_size,
                like=teacher.tokenizer,
                byte_level=s.new_tokenizer.byte_level,
            )
            partial = saved.with_name("student_tokenizer.partial")
            trained.save_pretrained(partial)
            partial.replace(saved)  # a complete directory or none
        run.procs.wait_for_everyone()
        tokenizer = load_tokenizer(saved)
    elif s.tokenizer is not None:
        tokenizer = load_tokenizer(
            resolve_model_ref(s.tokenizer, field="student.tokenizer"), trust_remote_code=trust
        )
    elif s.init == "pretrained":
        tokenizer = load_tokenizer(s.model, trust_remote_code=trust)
    else:
        tokenizer = teacher.tokenizer
    cross = tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(teacher.tokenizer)
    if cross and cfg.distill.signal != "none" and cfg.distill.cross_tokenizer is None:
        diff = tokenizer_difference(teacher.tokenizer, tokenizer, names=("teacher", "student"))
        raise ValueError(f"the student's tokenizer is not the teacher's ({diff}); {CROSS_HINT}")
    if not cross and cfg.distill.cross_tokenizer is not None:
        run.warn(
            "the student's tokenizer is the teacher's: distill.cross_tokenizer aligns by bytes all the same "
            "(every chunk 1:1; hybrid then equals the divergence), at ~1.4-1.9x the step time of the token-id path "
            "that a config without cross_tokenizer takes"
        )
    run.student_tokenizer = tokenizer
    run.note(
        student_tokenizer={
            "cross": cross,
            "vocabulary": len(tokenizer),
            "teacher_vocabulary": len(teacher.tokenizer),
        }
    )


def build_student(run: LMRun, teacher: Teacher, train_rows: list[dict[str, Any]]) -> nn.Module:
    """The student before training: the teacher's most influential layers (prune), a pretrained model, or
    a fresh one from a config; it must cover its tokenizer's vocabulary (a pruned student with another
    tokenizer gets its embeddings transplanted from the teacher's)."""
    from kdistill.lm.models import load_causal_lm, model_from_config
    from kdistill.lm.prune import block_influence, choose_layers, prune_layers, pruning_report

    s = run.cfg.student
    if s.init == "prune":
        keep, influence = s.keep_layers, None
        calibration = [r["completion"] for r in train_rows[: s.calibration_texts]]
        if keep is None:  # width pruning only
            keep = list(range(teacher.model.config.num_hidden_layers))
        if isinstance(keep, int):
            influence = block_influence(teacher.model, teacher.tokenizer, calibration)
            keep = choose_layers(influence, keep)
        student = prune_layers(teacher.model, keep)
        report = pruning_report(teacher.model, student, keep, influence)
        if (
            s.width is not None
        ):  # after depth: channels are ranked by the layers that stay, on the smaller model
            from kdistill.lm.width import prune_width_calibrated

            budget = s.width.budget_params(report["params_before"])
            student, report["width"] = prune_width_calibrated(
                student,
                teacher.tokenizer,
                calibration,
                params_budget=budget,
                head_score=s.width.head_score,
                **s.width.sizes(),
            )
            report["params_after"] = report["width"]["params_after"]
        run.note(pruning=report)
    elif s.init == "pretrained":
        student = load_causal_lm(s.model, trust_remote_code=run.cfg.teacher.trust_remote_code)
    else:
        student = model_from_config(s.config)
    if s.init == "prune" and run.cross:
        from kdistill.lm.transplant import transplant_vocabulary

        student = transplant_vocabulary(student, teacher.tokenizer, run.student_tokenizer)
    vocab = student.get_output_embeddings().weight.shape[0]
    if vocab < len(run.student_tokenizer):
        raise ValueError(
            f"student.{s.init}: the student's vocabulary has {vocab} tokens but its tokenizer "
            f"{len(run.student_tokenizer)} (student.config.vocab_size must cover it)"
        )
    return student


def model_size(model: nn.Module) -> dict[str, int]:
    from kdistill.lm.models import size_on_disk_bytes

    return {"params": sum(p.numel() for p in model.parameters()), "size_bytes": size_on_disk_bytes(model)}


# -- 4. the teacher signal (distill.signal: cached) ---------------------------------------------------------


def teacher_signal(run: LMRun, teacher: Teacher, train_rows: list[dict[str, Any]]) -> Path:
    """The store the white-box arms train from: `distill.signal_dir` as given (checked against the student's
    tokenizer), the endpoint's logprobs converted, or the local teacher's captured."""
    d = run.cfg.distill
    if d.temperature != 1.0 and d.cross_tokenizer is None:
        direction = "underestimates" if d.temperature > 1 else "overestimates"
        run.warn(
            f"distill.temperature is {d.temperature:g} with a top-k teacher signal: the teacher's tail is tempered "
            f"as one bucket, which {direction} its tempered mass, by a lot on real distributions "
            "(docs/topk_tail.md); temperature 1 is exact"
        )
    if d.signal_dir is not None:
        store = Path(d.signal_dir)
        check_signal_store(run, store, train_rows)
    elif d.signal == "endpoint":
        store = endpoint_signal(run, train_rows)
    else:
        store = capture_signal(run, teacher, train_rows)
    run.note(teacher_signal=str(store))
    return store


def check_signal_store(run: LMRun, store: Path, train_rows: list[dict[str, Any]]) -> None:
    """A given store must be of the layout the run reads and hold every training answer."""
    from kdistill.lm.byte_signal import ByteSignal
    from kdistill.lm.signal_store import TeacherSignal

    if run.cfg.distill.cross_tokenizer is not None:
        opened: Any = ByteSignal(store)
    else:
        opened = TeacherSignal(store)
        opened.check_tokenizer(run.student_tokenizer)
    missing = [r["record_id"] for r in train_rows if r["record_id"] not in opened]
    if missing:
        raise ValueError(
            f"distill.signal_dir {store}: no signal for {len(missing)} of {len(train_rows)} training answers "
            f"(e.g. {missing[0]!r}); capture it from the same generations"
        )


def endpoint_signal(run: LMRun, train_rows: list[dict[str, Any]]) -> Path:
    """The top_logprobs the endpoint returned with the answers, as a signal store: named by bytes across
    tokenizers (no tokenizer involved), else mapped to the student's token ids; the rendering of the
    prompts is checked against the student's first."""
    from kdistill.lm.capture import signal_from_generations
    from kdistill.lm.endpoint_bytes import signal_bytes_from_generations

    cfg = run.cfg
    gen_dir = Path(run.manifest["data"]["generations"])
    check_rendering(run, gen_dir)
    log = run.logger.job("capture", "endpoint logprobs", total=len(train_rows))
    with run.procs.main_process_first():
        if cfg.distill.cross_tokenizer is not None:
            result = signal_bytes_from_generations(
                gen_dir, cache_root=run.cache_root, progress=lambda done, total: log.log({"step": done})
            )
        else:
            result = signal_from_generations(
                gen_dir,
                run.student_tokenizer,
                max_length=cfg.train.max_length,
                progress=lambda done, total: log.log({"step": done}),
                cache_root=run.cache_root,
            )
    endpoint = result.endpoint
    if endpoint is not None and endpoint.mismatched_tokens:
        share = endpoint.mismatched_tokens / max(endpoint.endpoint_tokens, 1)
        run.warn(
            f"{endpoint.mismatched_tokens} of {endpoint.endpoint_tokens} endpoint answer tokens ({share:.1%}) do not "
            "match the student's tokenization of the answers; those positions carry no signal"
        )
    return result.store_dir


def check_rendering(run: LMRun, gen_dir: Path) -> None:
    """Context fidelity: the endpoint's log-probs are conditioned on the prompt as the server saw it. A
    same-tokenizer signal rendered otherwise than the student renders it is refused; a server's own chat
    template (unknown to us) or unrecorded rendering is a warning; across tokenizers the renderings differ by
    nature and are only recorded."""
    from kdistill.lm.capture import prompt_rendering
    from kdistill.lm.endpoint_bytes import rendering_of_rows

    recorded = rendering_of_rows(gen_dir)
    student = prompt_rendering(run.student_tokenizer)
    run.note(rendering={"teacher": recorded, "student": student})
    if run.cfg.distill.cross_tokenizer is not None:
        return
    if recorded is None:
        run.warn(
            f"{gen_dir}: the rows do not record how the prompts were rendered; the signal may be conditioned on "
            "another context than the student trains on"
        )
    elif recorded.get("api") == "chat":
        run.warn(
            "the endpoint rendered the prompts with its own chat template, which kdistill cannot see; the student "
            f"trains on its own rendering ({student}). Set teacher.endpoint.render_with to the student's tokenizer "
            "to send the same text through the completions API"
        )
    elif {k: v for k, v in recorded.items() if k != "api"} != student:
        raise ValueError(
            f"{gen_dir}: the endpoint's prompts were rendered as {recorded}, the student renders them as {student}: "
            "its log-probs are conditioned on another context. Generate again with teacher.endpoint.render_with "
            "set to the student's tokenizer"
        )


def capture_signal(run: LMRun, teacher: Teacher, train_rows: list[dict[str, Any]]) -> Path:
    """The teacher's top-k log-probs over the training answers, captured once into the content-addressed
    cache (the main process computes, the others then find it there): in token ids, or named by bytes for a
    student with another tokenizer (`kdistill.lm.byte_signal`)."""
    from kdistill.lm.capture import capture_bytes, capture_topk
    from kdistill.lm.sft_data import tokenize_rows

    cfg = run.cfg
    log = run.logger.job("capture", f"teacher top-{cfg.distill.top_k}", total=len(train_rows))
    common = {
        "k": cfg.distill.top_k,
        "key_inputs": signal_key_inputs(run, teacher),
        "batch_size": cfg.evaluation.batch_size,
        "progress": lambda done, total: log.log({"step": done}),
        "cache_root": run.cache_root,
    }
    with run.procs.main_process_first():
        if cfg.distill.cross_tokenizer is not None:
            result = capture_bytes(
                teacher.model, teacher.tokenizer, train_rows, max_length=cfg.train.max_length, **common
            )
        else:
            examples = tokenize_rows(teacher.tokenizer, train_rows, max_length=cfg.train.max_length).examples
            result = capture_topk(
                teacher.model, examples, pad_token_id=teacher.tokenizer.pad_token_id, **common
            )
    return result.store_dir


def signal_key_inputs(run: LMRun, teacher: Teacher) -> dict[str, Any]:
    """What identifies the local teacher's captured signal in the cache: its weights and tokenizer."""
    from kdistill.lm.capture import teacher_identity
    from kdistill.lm.tokenizers import tokenizer_fingerprint

    return {
        "teacher": teacher_identity(
            run.cfg.teacher.model,
            gguf_file=teacher_model_ref(run.cfg.teacher).gguf_file,
            model_dir=teacher.path,
            dtype="float32",
        ),
        "tokenizer": tokenizer_fingerprint(teacher.tokenizer),
    }


def recover_on_text(run: LMRun, student: nn.Module, teacher: Teacher, stop_after: int | None) -> nn.Module:
    """The student after the text phase (`student.recover`; text and packing in kdistill.lm.recover): trained in
    place, or loaded when `jobs/recover` is done. The phase's size and cost go to the manifest's `recovery`."""
    from kdistill.lm.capture import capture_topk
    from kdistill.lm.objectives import CachedTeacher, TokenDistillObjective
    from kdistill.lm.recover import pack_chunks, recovery_objective_config, recovery_texts
    from kdistill.lm.signal_store import TeacherSignal
    from kdistill.lm.tokenizers import assert_same_tokenizer

    cfg, rc = run.cfg, run.cfg.student.recover
    assert rc is not None
    try:
        assert_same_tokenizer(teacher.tokenizer, run.student_tokenizer)
    except ValueError as err:
        raise ValueError(f"student.recover needs the teacher's tokenizer: {err}") from None
    examples = pack_chunks(
        teacher.tokenizer,
        recovery_texts(str(rc.text)),
        chunk_length=rc.chunk_length,
        max_tokens=rc.max_tokens,
        seed=cfg.seed,
    )
    tokens = sum(len(e["input_ids"]) for e in examples)
    log = run.logger.job("capture-text", f"teacher top-{rc.top_k} on text", total=len(examples))
    start = time.perf_counter()
    with run.procs.main_process_first():
        captured = capture_topk(
            teacher.model,
            examples,
            k=rc.top_k,
            key_inputs=signal_key_inputs(run, teacher),
            batch_size=cfg.evaluation.batch_size,
            pad_token_id=teacher.tokenizer.pad_token_id,
            progress=lambda done, total: log.log({"step": done}),
            cache_root=run.cache_root,
        )
    capture_seconds = time.perf_counter() - start
    train_cfg = cfg.train.model_copy(
        update={
            "epochs": rc.epochs,
            "lr": rc.lr or cfg.train.lr,
            "max_length": rc.chunk_length,
            "eval_every": None,
        }
    )
    global_batch = train_cfg.micro_batch_size * train_cfg.grad_accum * run.procs.num_processes
    steps = max(1, math.ceil(rc.epochs * len(examples) / global_batch))

    def objective() -> nn.Module:
        return TokenDistillObjective(
            student,
            recovery_objective_config(rc),
            teacher=CachedTeacher(TeacherSignal(captured.store_dir)),
            pad_token_id=teacher.tokenizer.pad_token_id,
            eos_token_id=teacher.tokenizer.eos_token_id,
            seed=cfg.seed,
        )

    arm = train_arm(
        run,
        "cached",
        student,
        teacher,
        examples,
        steps,
        run.run_dir / "student_recovered",
        captured.store_dir,
        None,
        stop_after,
        job="recover",
        label=f"recover on text ({rc.divergence}, {tokens:,} tokens)",
        objective=objective,
        train_cfg=train_cfg,
    )
    run.note(
        recovery={
            "text": str(rc.text),
            "chunks": len(examples),
            "tokens": tokens,
            "steps": steps,
            "signal": str(captured.store_dir),
            # this session's capture (near 0 when the cache held it) and every session's training
            "capture_seconds": round(capture_seconds, 3),
            "train_seconds": arm.train_seconds,
        }
    )
    return arm.model


# -- 5. training: one job per arm ---------------------------------------------------------------------------


def train_arms(
    run: LMRun,
    student: nn.Module,
    teacher: Teacher,
    examples: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    signal_dir: Path | None,
    stop_after: int | None,
    data_arms: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Arm]:
    """The configured objective's student (in `student/`) and, with compare_with_sft, an SFT-only one from
    the same start and for the same steps (in `student_sft/`); each of `data_arms` (name -> its own
    examples, e.g. `data-unfiltered`) an SFT student from the same start for the same steps too."""
    d, t = run.cfg.distill, run.cfg.train
    kinds = (
        [d.signal]
        + (["none"] if d.compare_with_sft else [])
        + [f"cross-{c.loss}" for c in d.compare_with]
        + list(data_arms or {})
    )
    global_batch = t.micro_batch_size * t.grad_accum * run.procs.num_processes
    steps = max(1, math.ceil(t.epochs * len(examples) / global_batch))
    evaluate = held_out_perplexity(run, teacher, eval_rows) if t.eval_every is not None else None
    # the first arm trains the initial student itself; every comparison arm starts from a copy of it
    pristine = copy.deepcopy(student) if len(kinds) > 1 else None
    arms = {}
    for kind in kinds:
        first = kind == kinds[0]
        out_dir = run.run_dir / (
            "student" if first else "student_sft" if kind == "none" else f"student_{kind}"
        )
        # each comparison arm trains its own copy: training is in place, and arms must not share a model
        start = student if first else copy.deepcopy(pristine)
        if kind.startswith("data-"):  # SFT on another data set, same steps: the job and its student are named
            assert data_arms is not None
            arms[kind] = train_arm(
                run,
                "none",
                start,
                teacher,
                data_arms[kind],
                steps,
                out_dir,
                None,
                evaluate,
                stop_after,
                job=kind,
                label=f"student SFT ({kind.removeprefix('data-')} data)",
            )
            continue
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
    *,
    job: str | None = None,
    label: str | None = None,
    objective: Callable[[], nn.Module] | None = None,
    train_cfg: LMTrainConfig | None = None,
) -> Arm:
    """One resumable training job (`jobs/sft`, `jobs/kd-<signal>` or `jobs/<job>`): loaded when done.json
    says it finished, else trained from its latest checkpoint and marked done. `objective` builds another
    objective than the arm's kind gives, `train_cfg` replaces `train` (the recovery phase's)."""
    from kdistill.lm.models import load_causal_lm
    from kdistill.lm.train import train_objective

    cfg = run.cfg
    job_dir = run.run_dir / "jobs" / (job or ("sft" if kind == "none" else f"kd-{kind}"))
    if label is None:
        label = "student SFT" if kind == "none" else f"student KD ({kind} teacher, {arm_loss(cfg, kind)})"
    log = run.logger.job(job_dir.name, label, total=steps)
    finished = read_done(job_dir)
    if finished is not None and (out_dir / "config.json").is_file():
        log.done()
        if run.main:  # left by a kill right after done.json, or by an older version
            discard_checkpoints(job_dir / "checkpoints")
        return Arm(kind, load_causal_lm(out_dir), finished["history"], finished.get("train_seconds"))
    clock = TrainClock(job_dir / "train_clock.json", write=run.main)

    def on_log(entry: dict[str, Any]) -> None:
        clock.tick()
        log.log(entry)

    built = objective() if objective else make_objective(kind, run, student, teacher, examples, signal_dir)
    torch.manual_seed(cfg.seed)  # LoRA adapters and dropout start the same on a rerun
    result = train_objective(
        built,
        examples,
        train_cfg or cfg.train,
        steps=steps,
        seed=cfg.seed,
        lora=cfg.student.lora,
        pad_token_id=run.student_tokenizer.pad_token_id,
        tokenizer=run.student_tokenizer,
        output_dir=out_dir,
        checkpoint_dir=job_dir / "checkpoints",
        evaluate=evaluate,
        on_log=on_log,
        stop_after=stop_after,
    )
    if not result.finished:
        raise RuntimeError("training stopped early (stop_after)")
    seconds = round(clock.seconds, 3)
    if run.main:  # every process is past its last checkpoint (train_objective ends with a barrier)
        mark_done(job_dir, {"history": result.history, "steps": steps, "train_seconds": seconds})
        discard_checkpoints(job_dir / "checkpoints")  # the saved student and done.json are all a rerun reads
    return Arm(kind, result.model, result.history, seconds)


def arm_cross_config(cfg: LMRunConfig, kind: str) -> Any:
    """The cross-tokenizer loss of an arm (None: not a cross-tokenizer arm)."""
    d = cfg.distill
    if kind in SIGNAL_STORES:
        return d.cross_tokenizer
    if kind.startswith("cross-"):
        return next(c for c in d.compare_with if f"cross-{c.loss}" == kind)
    return None


def arm_loss(cfg: LMRunConfig, kind: str) -> str:
    """What an arm minimises, in a few words."""
    cross = arm_cross_config(cfg, kind)
    if cross is None:
        return cfg.distill.divergence
    return "ULD" if cross.loss == "uld" else f"hybrid: {cfg.distill.divergence} + ULD"


def make_objective(
    kind: str,
    run: LMRun,
    student: nn.Module,
    teacher: Teacher,
    examples: list[dict[str, Any]],
    signal_dir: Path | None,
) -> nn.Module:
    """The training objective of one arm: SFT on the answers, or the white-box terms of `distill`."""
    from kdistill.lm.objectives import CachedTeacher, OnlineTeacher, SFTObjective, TokenDistillObjective
    from kdistill.lm.signal_store import TeacherSignal

    cfg = run.cfg
    if kind == "none":
        return SFTObjective(student)
    cross = arm_cross_config(cfg, kind)
    if cross is not None:
        from kdistill.lm.byte_signal import ByteSignal
        from kdistill.lm.cross_objective import CrossTokenizerObjective, alignment_summary, cross_alignments

        assert signal_dir is not None
        signal = ByteSignal(signal_dir)
        alignments = cross_alignments(examples, signal)
        run.note(alignment=alignment_summary(alignments))
        return CrossTokenizerObjective(
            student,
            cfg.distill,
            cross,
            signal=signal,
            alignments=alignments,
            student_tokenizer=run.student_tokenizer,
        )
    if kind in SIGNAL_STORES:
        assert signal_dir is not None
        source: CachedTeacher | OnlineTeacher = CachedTeacher(TeacherSignal(signal_dir))
    else:
        # fsdp shards the online teacher in place: train on a copy, the main process evaluates teacher.model
        model = copy.deepcopy(teacher.model) if cfg.train.parallel == "fsdp" else teacher.model
        source = OnlineTeacher(model, dtype=getattr(torch, cfg.distill.teacher_dtype))
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

    tokenizer = run.student_tokenizer
    held_out = tokenize_rows(tokenizer, eval_rows, max_length=run.cfg.train.max_length).examples
    pad, batch_size = tokenizer.pad_token_id, run.cfg.evaluation.batch_size

    def evaluate(student: nn.Module) -> dict[str, float]:
        ppl = response_perplexity(student, held_out, pad_token_id=pad, batch_size=batch_size)
        return {"perplexity": ppl["perplexity"]}

    return evaluate


# -- 6. evaluation (main process) ---------------------------------------------------------------------------


def evaluate_model(
    run: LMRun, name: str, label: str, model: nn.Module, teacher: Teacher, eval_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Every held-out metric of one model, computed once per run into `eval_<name>.json`: in the model's own
    tokens (a student with another tokenizer than the teacher's has no top-1 agreement with it; bits per
    byte of the teacher's answers compare any two tokenizers)."""
    from kdistill.lm.evaluate import bits_per_byte, evaluate_student

    is_teacher = model is teacher.model
    tokenizer = teacher.tokenizer if is_teacher else run.student_tokenizer

    def compute() -> dict[str, Any]:
        spin = run.logger.job(f"eval-{name}", f"eval: {label}")
        result = evaluate_student(
            model,
            tokenizer,
            eval_rows,
            teacher=None if run.cross and not is_teacher else teacher.model,
            max_length=run.cfg.train.max_length,
            max_new_tokens=run.cfg.evaluation.max_new_tokens or run.cfg.generation.max_new_tokens,
            batch_size=run.cfg.evaluation.batch_size,
        )
        result["bits_per_byte"] = bits_per_byte(
            model,
            tokenizer,
            eval_rows,
            max_length=run.cfg.train.max_length,
            batch_size=run.cfg.evaluation.batch_size,
        )["bits_per_byte"]
        spin.done()
        return result

    return cached_json(run.run_dir / f"eval_{name}.json", compute)


def evaluate_arms(
    run: LMRun,
    arms: dict[str, Arm],
    teacher: Teacher,
    eval_rows: list[dict[str, Any]],
    reasoning: Any = None,
) -> dict[str, dict[str, Any]]:
    """The trained students (after; sft, the comparison arm) and the teacher on the held-out answers; with
    `reasoning`, each data arm too, every student asked as it was trained (multitask: the answer task)."""
    from kdistill.lm.rationale import inference_rows

    d = run.cfg.distill
    main_rows = inference_rows(eval_rows, reasoning.arms[0].train_on) if reasoning else eval_rows
    evals = {
        "after": evaluate_model(
            run, "student_after", "student after", arms[d.signal].model, teacher, main_rows
        )
    }
    for arm in reasoning.arms[1:] if reasoning else []:
        kind = f"data-{arm.name}"
        rows = inference_rows(eval_rows, arm.train_on)
        evals[kind] = evaluate_model(run, f"student_{kind}", arm.label, arms[kind].model, teacher, rows)
    if d.compare_with_sft:
        sft = arms["none"].model
        evals["sft"] = evaluate_model(run, "student_sft", "student SFT only", sft, teacher, eval_rows)
    for c in d.compare_with:
        kind = f"cross-{c.loss}"
        label = f"student ({arm_loss(run.cfg, kind)})"
        evals[kind] = evaluate_model(run, f"student_{kind}", label, arms[kind].model, teacher, eval_rows)
    evals["teacher"] = evaluate_model(run, "teacher", "teacher", teacher.model, teacher, eval_rows)
    return evals


def time_generation(
    run: LMRun, teacher: Teacher, arms: dict[str, Arm], eval_rows: list[dict[str, Any]]
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Speed per model from one timing phase (kdistill.runs.timing): the teacher and every trained student
    answer the same first held-out prompts greedily, in one batch, with the same number of new tokens
    (forced) and the same prompt cut, in turns. Returns per model ("teacher" or the arm's kind) ms per
    answer and new tokens per second, median and spread, and the phase's record for metrics.json."""
    from kdistill.lm.evaluate import generation_call

    e = run.cfg.evaluation
    rows = eval_rows[: e.timing_prompts]
    models = {"teacher": (teacher.model, teacher.tokenizer)}
    models |= {kind: (arm.model, run.student_tokenizer) for kind, arm in arms.items()}
    modes = {m: m.training for model, _ in models.values() for m in model.modules()}
    spin = run.logger.job("timing", f"timing: {len(models)} models in turns")
    try:
        for model, _ in models.values():
            model.eval()
        calls = {
            name: generation_call(
                model,
                tokenizer,
                rows,
                new_tokens=e.timing_new_tokens,
                max_prompt_length=e.timing_max_prompt_length,
            )
            for name, (model, tokenizer) in models.items()
        }
        phase = time_models(calls, rounds=e.timing_rounds, threads=run.cfg.torch_threads())
    finally:
        for module, was_training in modes.items():
            module.training = was_training
    spin.done()
    tokens = len(rows) * e.timing_new_tokens  # per call, every model alike
    speeds = {
        name: {
            "latency_ms": 1000 * t.median_s / len(rows),
            "latency_ms_min": 1000 * t.min_s / len(rows),
            "latency_ms_max": 1000 * t.max_s / len(rows),
            "tokens_per_s": tokens / t.median_s,
            "tokens_per_s_min": tokens / t.max_s,
            "tokens_per_s_max": tokens / t.min_s,
        }
        for name, t in phase.models.items()
    }
    record = phase.record(
        batch_size=len(rows),
        new_tokens=e.timing_new_tokens,
        max_prompt_length=e.timing_max_prompt_length,
        device=str(next(teacher.model.parameters()).device),
    )
    return speeds, record


def deploy_speeds(
    run: LMRun,
    teacher: Teacher,
    arms: dict[str, Arm],
    eval_rows: list[dict[str, Any]],
    speeds: dict[str, dict[str, float]],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """`speeds` with each model's GGUF size and llama.cpp generated tokens/s added (kdistill.lm.deploy_eval),
    timed on the prompts of the PyTorch timing phase, cut the same way; and the phase's record."""
    from kdistill.lm.deploy_eval import deploy_metrics

    e = run.cfg.evaluation
    assert e.deploy is not None
    models = {"teacher": (teacher.model, teacher.tokenizer)}
    models |= {kind: (arm.model, run.student_tokenizer) for kind, arm in arms.items()}
    spin = run.logger.job("deploy", f"deploy: {len(models)} models as GGUF ({e.deploy.gguf})")
    rows, record = deploy_metrics(
        models,
        eval_rows[: e.timing_prompts],
        e.deploy,
        work_dir=run.run_dir / "deploy",
        threads=run.cfg.torch_threads(),
        max_prompt_length=e.timing_max_prompt_length,
    )
    spin.done()
    return {k: v | rows.get(k, {}) for k, v in speeds.items()}, record


def reasoning_data(run: LMRun, train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]]) -> Any:
    """The `verify:` stage (kdistill.lm.reasoning): verdicts in the run directory, resumable."""
    from kdistill.lm.reasoning import verified_data

    cfg = run.cfg
    assert cfg.verify is not None
    prompts_file = Path(cfg.verify.prompts) if cfg.verify.prompts else resolve_prompts(cfg.prompts.file)
    log = run.logger.job("verify", "verify teacher answers", total=len(train_rows) + len(eval_rows))
    with run.procs.main_process_first():  # the others find the main process's verdicts stored
        data = verified_data(
            cfg.verify,
            train_rows,
            eval_rows,
            prompts_file=prompts_file,
            verdicts_dir=run.run_dir / "verdicts",
            progress=lambda done, total: log.log({"step": done}),
        )
    log.done()
    run.note(reasoning={"teacher": data.teacher, "arms": {a.name: len(a.rows) for a in data.arms}})
    return data


# -- 7. metrics.json ----------------------------------------------------------------------------------------


def add_reasoning_metrics(
    metrics: dict[str, Any],
    reasoning: Any,
    evals: dict[str, dict[str, Any]],
    data_examples: dict[str, int],
    speeds: dict[str, dict[str, float]],
) -> None:
    """Held-out accuracy of every model as the verifiers judge it (the report's quality column), the data
    arms' rows, the teacher's pass@k and what each filter removed, in metrics.json."""
    from kdistill.lm.reasoning import verified_accuracy

    roles = {"teacher": "teacher", "before": "before", "distilled": "after", "sft": "sft"}
    for model in metrics["models"]:
        ev = evals.get(roles.get(model["role"], model["role"]))
        if ev is not None and "answers" in ev:
            model["verified"] = verified_accuracy(reasoning, ev["answers"])
            model["accuracy"] = model["verified"]["accuracy"]
    student_size = {k: v for k, v in metrics["models"][1].items() if k in ("params", "size_bytes")}
    for arm in reasoning.arms[1:]:
        kind = f"data-{arm.name}"
        row = _model_row(arm.label, kind, student_size, evals[kind], speeds[kind])
        row["verified"] = verified_accuracy(reasoning, evals[kind]["answers"])
        row["accuracy"] = row["verified"]["accuracy"]
        metrics["models"].insert(len(metrics["models"]) - 1, row)
    distilled = metrics["models"][-1]
    distilled["name"] = reasoning.arms[0].label
    teacher_pass = reasoning.teacher["held_out"].get("pass@1")
    metrics["reasoning"] = {
        "teacher": reasoning.teacher,
        "verification": reasoning.verification,
        "arms": [
            {
                "name": a.name,
                "label": a.label,
                "train_on": a.train_on,
                "rows": len(a.rows),
                "filters": a.filters,
            }
            for a in reasoning.arms
        ],
    }
    parts = [f"{m['name']} {m['verified']['accuracy']:.1%}" for m in metrics["models"][1:] if "verified" in m]
    metrics["summary"]["headline"] = (
        f"held-out problems solved (verified): {'; '.join(parts)}; the teacher's pass@1 "
        + (f"{teacher_pass:.1%}" if teacher_pass is not None else "n/a")
        + f" (greedy {metrics['models'][0]['verified']['accuracy']:.1%})"
    )


def lm_metrics(
    run: LMRun,
    teacher: Teacher,
    student_size: dict[str, int],
    arms: dict[str, Arm],
    evals: dict[str, dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    speeds: dict[str, dict[str, float]],
    timing: dict[str, Any],
    *,
    train: dict[str, int],
    t0: float,
) -> dict[str, Any]:
    """metrics.json: one row per model (teacher, before, [sft], distilled), the training histories, what
    was optimised, the headline, example answers and the timing phase (`speeds` per model: "teacher" or an
    arm's kind; the student before training has the distilled one's architecture, so its speed)."""
    cfg, d = run.cfg, run.cfg.distill
    distilled = arms[d.signal]
    name = (
        "student (distilled)" if d.signal == "none" else f"student (KD: {d.signal} {arm_loss(cfg, d.signal)})"
    )
    models = [
        _model_row("teacher", "teacher", model_size(teacher.model), evals["teacher"], speeds["teacher"]),
        _model_row("student (pruned, before)", "before", student_size, evals["before"], speeds[d.signal]),
    ]
    if "recovered" in evals:  # the start of every arm: the pruned student after the plain-text phase
        recovery = run.manifest.get("recovery") or {}
        models.append(
            _model_row(
                RECOVERED,
                "recovered",
                student_size,
                evals["recovered"],
                speeds[d.signal],
                seconds=recovery.get("train_seconds"),
            )
        )
    history = [{"model": name, "seed": cfg.seed, **h} for h in distilled.history]
    if "sft" in evals:
        sft = arms["none"]
        models.append(
            _model_row(SFT_ONLY, "sft", student_size, evals["sft"], speeds["none"], seconds=sft.train_seconds)
        )
        history += [{"model": SFT_ONLY, "seed": cfg.seed, **h} for h in sft.history]
    for c in d.compare_with:
        kind = f"cross-{c.loss}"
        label = f"student (KD: cached {arm_loss(cfg, kind)})"
        models.append(
            _model_row(label, kind, student_size, evals[kind], speeds[kind], seconds=arms[kind].train_seconds)
        )
        history += [{"model": label, "seed": cfg.seed, **h} for h in arms[kind].history]
    extra = _extra_params(cfg, distilled.model, teacher.model)
    models.append(
        _model_row(
            name, "distilled", student_size, evals["after"], speeds[d.signal], extra, distilled.train_seconds
        )
    )
    return {
        "task": "lm",
        "models": models,
        "history": history,
        "objective": _objective_summary(cfg),
        "summary": _lm_summary(models, train["answers"], train["response_tokens"]),
        "examples": _examples(eval_rows, evals["teacher"], evals["before"], evals["after"]),
        "timing": timing,
        **({"recovery": run.manifest["recovery"]} if "recovery" in run.manifest else {}),
        "run": run_record(
            cfg, run.run_dir, run.manifest["started"], t0, seeds=[cfg.seed], device=run.procs.device.type
        ),
    }


def _model_row(
    name: str,
    role: str,
    size: dict[str, int],
    ev: dict[str, Any],
    speed: dict[str, float],
    extra: int = 0,
    seconds: float | None = None,
) -> dict[str, Any]:
    """One model's row: quality from its evaluation `ev`, speed (latency_ms, tokens_per_s and their spread)
    from the timing phase."""
    return {
        "name": name,
        "role": role,
        **size,
        "extra_params": extra,
        "perplexity_on_teacher_answers": ev["perplexity"],
        "agreement_with_teacher": ev.get("teacher_agreement"),
        "bits_per_byte": ev.get("bits_per_byte"),
        "rouge_l": ev.get("rouge_l_f1"),
        "exact_match": ev.get("exact_match"),
        # its own answers (held-out prompts): loops and cut answers that agreement on teacher text hides
        "repeated_4gram_rate": ev.get("repeated_4gram_rate"),
        "distinct_2": ev.get("distinct_2"),
        "hit_max_tokens": ev.get("hit_max_tokens"),
        **speed,
        # the report's quality column: top-1 agreement, or ROUGE-L where tokenizers differ (no agreement)
        "accuracy": ev.get("teacher_agreement")
        if ev.get("teacher_agreement") is not None
        else ev.get("rouge_l_f1"),
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
    if after["agreement_with_teacher"] is None:  # another tokenizer: compare per byte
        headline = (
            f"distilled student (its own tokenizer): {after['bits_per_byte']:.3f} bits per byte of held-out teacher "
            f"answers (before {before['bits_per_byte']:.3f}, teacher {teacher['bits_per_byte']:.3f}), ROUGE-L "
            f"{after['rouge_l']:.3f}, {ratio:.2f}x fewer parameters, {speed:.2f}x faster answers; "
            + "; ".join(
                f"{m['name']}: {m['bits_per_byte']:.3f} bits per byte, ROUGE-L {m['rouge_l']:.3f}"
                for m in models[2:-1]
            )
        )
        return {
            "headline": headline.rstrip("; "),
            "train_answers": train_rows,
            "train_response_tokens": train_tokens,
            "params_ratio": ratio,
            "speedup": speed,
        }
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
    recovered = next((m for m in models if m["role"] == "recovered"), None)
    if recovered is not None:
        headline += (
            f"; every arm started from the student recovered on text: perplexity "
            f"{recovered['perplexity_on_teacher_answers']:.1f}, agreement {recovered['agreement_with_teacher']:.1%}"
        )
    deployed, deployed_teacher = after.get("deploy_tokens_per_s"), teacher.get("deploy_tokens_per_s")
    if deployed and deployed_teacher:
        headline += (
            f"; in llama.cpp {deployed / deployed_teacher:.2f}x the teacher's generated tokens/s "
            f"({after['gguf_type']} GGUF {after['gguf_bytes'] / 1e6:.0f} MB vs {teacher['gguf_bytes'] / 1e6:.0f} MB)"
        )
    rep, rep_teacher = after.get("repeated_4gram_rate"), teacher.get("repeated_4gram_rate")
    if rep is not None and rep_teacher is not None:
        headline += f"; its own answers repeat {rep:.0%} of their 4-grams (teacher {rep_teacher:.0%})"
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
    source = {"cached": f"cached top-{d.top_k}", "endpoint": "the endpoint's top_logprobs"}.get(
        d.signal, "online teacher"
    )
    if d.cross_tokenizer is not None:
        out["description"] = (
            f"{arm_loss(cfg, 'cached')} on {source} named by bytes, aligned by byte spans "
            f"(another tokenizer)" + (f" + {d.ce_weight} x SFT" if d.ce_weight else "")
        )
        return out
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
