"""`kdistill run` for `task: encoder`: a sentence-embedding teacher distilled into each configured student.

    corpus ──> held-out query -> document pairs (first sentence -> rest of a paragraph) + training texts
    teacher ──> embeddings of the training texts, cached once by content (resumable) ──> every epoch reads them
    student (cut from the teacher's layers, static token vectors, or built from a config)
        ──> trained against the cached rows (cosine / MSE / similarity-matrix / RKD terms, resumable)
        ──> saved so that `sentence_transformers.SentenceTransformer(students/<name>)` loads it
    teacher, each student before and after ──> recall@1/@10 on the pairs, Spearman of pairwise similarities
        against the teacher, texts/s at the same batch size and thread count, parameters, bytes
    a static student saved as float16 ──> scored again as loaded back from its folder (its own row)

The run directory is the one of the other tasks (config.yaml, manifest.json, metrics.json, report.html);
restarting the same command continues an interrupted run: finished students are loaded (their
`jobs/<name>/done.json`), the interrupted one resumes from its last checkpoint, finished evaluations are
read back (`eval_*.json`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console

from kdistill.encoders.config import (
    EncoderCorpusConfig,
    EncoderEvaluationConfig,
    EncoderRunConfig,
    EncoderStudentConfig,
)
from kdistill.runs.checkpoint import discard_checkpoints
from kdistill.runs.clock import TrainClock
from kdistill.runs.locations import default_cache_root, resolve_model_ref
from kdistill.runs.logger import RunLogger
from kdistill.runs.markers import cached_json, mark_done, read_done
from kdistill.runs.run_dir import (
    RunResult,
    claim_run_dir,
    run_record,
    start_manifest,
    write_config,
    write_manifest,
    write_metrics,
)
from kdistill.runs.threads import torch_threads

if TYPE_CHECKING:
    from torch import nn

    from kdistill.encoders.cache import CacheReport, TeacherEmbeddings
    from kdistill.encoders.domains import DomainPairs
    from kdistill.encoders.models import TextEncoder


def run_encoder(
    cfg: EncoderRunConfig,
    *,
    runs_dir: Path = Path("runs"),
    cache_root: Path | None = None,
    fresh: bool = False,
    console: Console | None = None,
    stop_after: int | None = None,
    wait: bool = False,
) -> RunResult:
    """Run (or continue) the encoder distillation `cfg` describes; `stop_after` stops each student's
    training after that many steps (tests use it to simulate a kill). One process at a time runs a config
    in `runs_dir`: another one raises `RunBusyError`, or with `wait` is waited for."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    teacher_path = resolve_model_ref(cfg.teacher.model)  # a wrong reference fails before a run dir is made
    with claim_run_dir(cfg, runs_dir, fresh=fresh, wait=wait) as claim:
        if claim.finished:
            return claim.finished_result()
        run_dir, resumed = claim.run_dir, claim.resumed
        write_config(run_dir, cfg)
        manifest = start_manifest(cfg, run_dir, resumed=resumed, seeds=[cfg.seed])
        write_manifest(run_dir, manifest)
        t0 = time.perf_counter()
        logger = RunLogger.for_run(run_dir, cfg, console=console)
        with torch_threads(cfg.torch_threads()), logger.shown():
            teacher = load_teacher(cfg, teacher_path)
            data = build_encoder_data(cfg.corpus)
            cache, cache_report = embed_training_texts(
                teacher, data, cache_root or default_cache_root(), cfg.evaluation.batch_size, logger
            )
            held_out = HeldOutEvaluation(data, teacher, cfg.evaluation, logger, cfg.corpus.split_seed)
            manifest |= inputs_record(cfg, teacher_path, teacher, data, held_out, cache_report)
            write_manifest(run_dir, manifest)
            teacher_eval = held_out.cached(run_dir / "eval_teacher.json", teacher, "teacher")
            pairs = list(data.train.items())
            session = StudentSession(
                run_dir,
                teacher,
                cache,
                pairs,
                held_out,
                logger,
                cfg.seed,
                stop_after,
                cache_root or default_cache_root(),
            )
            outcomes = [distil_student(spec, session) for spec in cfg.students]
            timing = time_encoders(teacher, outcomes, held_out, cfg.evaluation, logger)
            metrics = encoder_metrics(cfg, data, held_out, teacher_eval, outcomes, timing)
            metrics["run"] = run_record(cfg, run_dir, manifest["started"], t0, seeds=[cfg.seed], device="cpu")
        from kdistill.evaluation import write_report

        write_report(run_dir, metrics, config_yaml=cfg.to_yaml(), manifest=manifest)
        write_metrics(run_dir, metrics)  # last: marks the run finished
    return RunResult(run_dir, metrics, resumed)


@dataclass(frozen=True)
class EncoderData:
    """Training texts (id -> text) and the held-out retrieval pairs."""

    train: dict[str, str]
    queries: list[str]
    documents: list[str]


def _read_texts(paths: list[str], field: str) -> list[str]:
    """Texts of .jsonl / plain-text files, or of a `datasets` directory saved with `save_to_disk`."""
    from kdistill.encoders.corpus import corpus_from_files, corpus_from_records

    texts: list[str] = []
    for ref in paths:
        path = Path(ref)
        if path.is_dir():
            import datasets

            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                if "train" not in dataset:
                    raise ValueError(f"corpus.files: {path} holds splits {list(dataset)} and no 'train'")
                dataset = dataset["train"]
            texts.extend(corpus_from_records(dataset, field=field).values())
        elif path.is_file():
            texts.extend(corpus_from_files(path, field=field).values())
        else:
            raise FileNotFoundError(f"corpus.files: {ref}: no such file or directory")
    return list(dict.fromkeys(texts))


def build_encoder_data(corpus: EncoderCorpusConfig) -> EncoderData:
    """The training texts and held-out pairs the config describes (deterministic for a given config)."""
    from kdistill.encoders.corpus import text_id
    from kdistill.encoders.python_docs import held_out_pairs, python_docs_paragraphs

    if corpus.source == "python_docs":
        texts = python_docs_paragraphs(limit=corpus.limit)
    else:
        texts = _read_texts(corpus.files, corpus.field)
    if corpus.limit is not None:
        texts = texts[: corpus.limit]
    try:
        pairs = held_out_pairs(texts, corpus.held_out_pairs, seed=corpus.split_seed)
    except ValueError as err:
        raise ValueError(f"corpus.held_out_pairs: {err}") from None
    if not pairs.train_paragraphs:
        raise ValueError(f"corpus: all {len(texts)} texts are held out; lower corpus.held_out_pairs")
    train = {text_id(t): t for t in pairs.train_paragraphs}
    return EncoderData(train=train, queries=pairs.queries, documents=pairs.documents)


def check_students(cfg: EncoderRunConfig, teacher: TextEncoder) -> None:
    """Errors a student would hit only after the teacher's embeddings are computed, raised up front."""
    n = teacher.num_layers
    for spec in cfg.students:
        keep = spec.keep_layers
        if isinstance(keep, int) and not 1 <= keep <= n:
            raise ValueError(
                f"students.{spec.name}.keep_layers: {keep} is not in 1..{n} (the teacher has {n} layers)"
            )
        if isinstance(keep, list) and (len(set(keep)) != len(keep) or not all(-n <= i < n for i in keep)):
            raise ValueError(
                f"students.{spec.name}.keep_layers: {keep} must be distinct layer indices in {-n}..{n - 1} "
                f"(the teacher has {n} layers)"
            )
        if spec.dims is not None and spec.dims > teacher.embedding_dim:
            raise ValueError(
                f"students.{spec.name}.dims: {spec.dims} is wider than the teacher's token vectors "
                f"({teacher.embedding_dim}); PCA can only reduce"
            )


def build_student(
    spec: EncoderStudentConfig,
    teacher: TextEncoder,
    train_texts: list[str],
    seed: int,
    cache_root: Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The untrained student a spec describes and how it was made; deterministic, so a resumed run
    rebuilds the same one. A static student's pooled start is kept under `cache_root` (one pass of the
    teacher over its whole vocabulary, reused by every run and resume with the same teacher)."""
    from kdistill.encoders.models import (
        StaticEmbeddingStudent,
        choose_encoder_layers,
        cut_layers,
        encoder_from_config,
        evenly_spaced_layers,
    )

    if spec.kind == "layers":
        keep, info = spec.keep_layers, {}
        if isinstance(keep, int):
            if spec.layer_choice == "influence":
                keep, influence = choose_encoder_layers(teacher, keep, train_texts[:64])
                info["layer_influence"] = [round(x, 4) for x in influence]
            else:
                keep = evenly_spaced_layers(teacher.num_layers, keep)
        student = cut_layers(teacher, keep)
        return student, info | {"kept_layers": sorted(k % teacher.num_layers for k in keep)}
    if spec.kind == "static":
        vectors = pooled_vectors(teacher, cache_root) if spec.init == "pooled" and cache_root else None
        student = StaticEmbeddingStudent.from_teacher(
            teacher,
            dims=spec.dims,
            init=spec.init,
            sif_texts=train_texts if spec.sif else None,
            token_vectors=vectors,
        )
        return student, {"vocab_size": student.embedding.num_embeddings, "dims": student.embedding_dim}
    student = encoder_from_config(
        spec.config,
        teacher.tokenizer,
        pooling=teacher.pooling,
        normalize=teacher.normalize,
        max_seq_length=teacher.max_seq_length,
        seed=seed,
    )
    return student, {}


def pooled_vectors(teacher: TextEncoder, cache_root: Path) -> torch.Tensor:
    """`pooled_token_vectors` of the teacher, computed once per teacher fingerprint and kept as safetensors
    under cache_root/static-init (written atomically, so a killed run leaves no half file)."""
    from safetensors.torch import load_file

    from kdistill.encoders.models import pooled_token_vectors
    from kdistill.io import atomic_save_safetensors

    path = cache_root / "static-init" / f"{teacher.fingerprint()}-pooled.safetensors"
    if path.is_file():
        return load_file(str(path))["vectors"]
    vectors = pooled_token_vectors(teacher)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(path, {"vectors": vectors.contiguous()})
    return vectors


def load_teacher(cfg: EncoderRunConfig, path: str) -> TextEncoder:
    """The teacher with the config's overrides, and every student spec checked against it up front."""
    from kdistill.encoders.models import load_encoder

    teacher = load_encoder(
        path,
        pooling=cfg.teacher.pooling,
        max_seq_length=cfg.teacher.max_seq_length,
        trust_remote_code=cfg.teacher.trust_remote_code,
    )
    check_students(cfg, teacher)
    return teacher


def embed_training_texts(
    teacher: TextEncoder, data: EncoderData, cache_root: Path, batch_size: int, logger: RunLogger
) -> tuple[TeacherEmbeddings, CacheReport]:
    """The teacher's embedding of every training text, from the content-addressed cache (filled if needed)."""
    from kdistill.encoders.cache import cache_teacher_embeddings

    log = logger.job("teacher-embeddings", "teacher embeddings", total=len(data.train))
    cache, report = cache_teacher_embeddings(
        teacher,
        data.train,
        cache_root=cache_root,
        batch_size=batch_size,
        on_commit=lambda stored, total: log.log({"step": stored}),
    )
    log.done()
    return cache, report


def off_domain_sets(ev: EncoderEvaluationConfig, seed: int) -> tuple[dict[str, DomainPairs], dict[str, str]]:
    """The off-domain retrieval pairs the config asks for, and why any of them is missing on this machine."""
    from kdistill.encoders.domains import DomainUnavailable, domain_pairs

    found, missing = {}, {}
    for name in ev.off_domain:
        try:
            found[name] = domain_pairs(name, limit=ev.off_domain_pairs, seed=seed)
        except DomainUnavailable as err:
            missing[name] = str(err)
    return found, missing


class HeldOutEvaluation:
    """Every model scored the same way: recall@1/@10 on the held-out pairs, Spearman of its pairwise
    similarities against the teacher's, texts/s, parameters and bytes, at one batch size and thread count."""

    def __init__(
        self,
        data: EncoderData,
        teacher: TextEncoder,
        ev: EncoderEvaluationConfig,
        logger: RunLogger,
        seed: int = 0,
    ) -> None:
        self.queries, self.documents = data.queries, data.documents
        self.spearman_texts = data.documents[: ev.spearman_texts]
        self.timed_texts = data.documents[: ev.throughput_texts]
        self.batch_size, self.threads, self.logger = ev.batch_size, ev.threads, logger
        self.domains, self.missing_domains = off_domain_sets(ev, seed)
        with torch.inference_mode():
            self.teacher_spearman = teacher.encode(self.spearman_texts, batch_size=ev.batch_size)

    def __call__(self, model: Any, label: str, saved_dir: Path | None = None) -> dict[str, Any]:
        from kdistill.encoders.evaluate import footprint, recall_at_k, similarity_spearman

        spinner = self.logger.job("eval-" + label.replace(" ", "-"), f"eval: {label}")
        with torch.inference_mode():
            q = model.encode(self.queries, batch_size=self.batch_size)
            d = model.encode(self.documents, batch_size=self.batch_size)
            s = model.encode(self.spearman_texts, batch_size=self.batch_size)
        result = recall_at_k(q, d, ks=(1, 10))
        with torch.inference_mode():
            result["domains"] = {
                name: recall_at_k(
                    model.encode(pairs.queries, batch_size=self.batch_size),
                    model.encode(pairs.documents, batch_size=self.batch_size),
                    ks=(1, 10),
                )
                for name, pairs in self.domains.items()
            }
        result["spearman_vs_teacher"] = similarity_spearman(s, self.teacher_spearman)
        size = footprint(model, saved_dir)
        result["params"], result["size_bytes"] = size["parameters"], size["state_bytes"]
        if "saved_bytes" in size:
            result["saved_bytes"] = size["saved_bytes"]
        result["embedding_dim"] = int(model.embedding_dim)
        spinner.done()
        return result

    def cached(self, path: Path, model: Any, label: str, saved_dir: Path | None = None) -> dict[str, Any]:
        """The evaluation kept at `path` by an earlier session, or a new one written there."""
        return cached_json(path, lambda: self(model, label, saved_dir))


def inputs_record(
    cfg: EncoderRunConfig,
    teacher_path: str,
    teacher: TextEncoder,
    data: EncoderData,
    held_out: HeldOutEvaluation,
    cache_report: CacheReport,
) -> dict[str, Any]:
    """The manifest's account of what the run read: the teacher, the data sizes, the embedding cache."""
    return {
        "teacher": {"model": cfg.teacher.model, "path": teacher_path, "fingerprint": teacher.fingerprint()},
        "data": {
            "train_texts": len(data.train),
            "held_out_pairs": len(data.queries),
            "spearman_texts": len(held_out.spearman_texts),
            "throughput_texts": len(held_out.timed_texts),
            "off_domain_pairs": {name: len(pairs) for name, pairs in held_out.domains.items()},
            "off_domain_missing": held_out.missing_domains,
        },
        "teacher_embeddings": {"dir": str(cache_report.store_dir), "key": cache_report.key},
    }


@dataclass(frozen=True)
class StudentSession:
    """What every student's job shares: where it writes, what it learns from, how it is scored and shown."""

    run_dir: Path
    teacher: TextEncoder
    cache: TeacherEmbeddings
    train_pairs: list[tuple[str, str]]  # (text id, text), the order batches index
    held_out: HeldOutEvaluation
    logger: RunLogger
    seed: int
    stop_after: int | None  # stop each training after this many steps (how tests simulate a kill)
    cache_root: Path | None = None  # where reusable starts live (a static student's pooled vectors)


@dataclass(frozen=True)
class StudentOutcome:
    """One student's results: its `done.json` record (history, steps, before-evaluation...), the evaluation
    of the trained student, and (saved as float16 only) the evaluation of the student as saved."""

    spec: EncoderStudentConfig
    out_dir: Path
    done: dict[str, Any]
    after: dict[str, Any]
    model: Any  # the trained student (the timing phase runs it)
    saved: dict[str, Any] | None = None


def distil_student(spec: EncoderStudentConfig, s: StudentSession) -> StudentOutcome:
    """One student's job: loaded when an earlier session finished it, else trained (resuming if possible)."""
    from kdistill.encoders.save import load_saved_encoder

    job, out_dir = s.run_dir / "jobs" / spec.name, s.run_dir / "students" / spec.name
    done = read_done(job)
    if done is not None and (out_dir / "modules.json").is_file():
        student = load_saved_encoder(out_dir)
        discard_checkpoints(job / "checkpoints")  # left by a kill right after done.json, or an older version
        s.logger.job(spec.name, f"train: {spec.name}", total=done["steps"]).done()
    else:
        student, done = train_student(spec, s, job, out_dir)
    after = s.held_out.cached(job / "eval_after.json", student, f"{spec.name} after", out_dir)
    saved = None
    if spec.save_dtype != "float32":
        saved = cached_json(job / "eval_saved.json", lambda: _evaluate_as_saved(spec, s, out_dir))
    return StudentOutcome(spec, out_dir, done, after, student, saved)


def _evaluate_as_saved(spec: EncoderStudentConfig, s: StudentSession, out_dir: Path) -> dict[str, Any]:
    """The student as a user gets it: loaded back from its folder (float16 vectors, computed in float32);
    size_bytes is its weights file, not the float32 copy the loader holds in memory."""
    from kdistill.encoders.save import load_saved_encoder

    result = s.held_out(load_saved_encoder(out_dir), f"{spec.name} {spec.save_dtype} as saved", out_dir)
    result["size_bytes"] = (out_dir / "model.safetensors").stat().st_size
    return result


def train_student(
    spec: EncoderStudentConfig, s: StudentSession, job: Path, out_dir: Path
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the student, score it untrained, distil it from the cached rows, save it, mark the job done."""
    from kdistill.encoders.distill import (
        EmbeddingDistiller,
        TrainingStopped,
        planned_steps,
        train_embedding_student,
    )
    from kdistill.encoders.save import save_sentence_transformer

    job.mkdir(parents=True, exist_ok=True)
    build = s.logger.job(f"build-{spec.name}", f"build: {spec.name} ({spec.kind})")
    student, made = build_student(spec, s.teacher, [t for _, t in s.train_pairs], s.seed, s.cache_root)
    build.done()
    before = s.held_out.cached(job / "eval_before.json", student, f"{spec.name} before")
    steps = planned_steps(spec.train, len(s.train_pairs))
    torch.manual_seed(s.seed)  # the projection (when widths differ) starts the same on a rerun
    distiller = EmbeddingDistiller(student, s.cache.dim, spec.losses)
    log = s.logger.job(spec.name, f"train: {spec.name}", total=steps)
    clock = TrainClock(job / "train_clock.json")

    def on_log(entry: dict[str, Any]) -> None:
        clock.tick()
        log.log(entry)

    try:
        history = train_embedding_student(
            distiller,
            s.train_pairs,
            s.cache,
            spec.train,
            steps=steps,
            seed=s.seed,
            log_every=max(1, steps // 40),
            on_log=on_log,
            checkpoint_dir=job / "checkpoints",
            stop_after=s.stop_after,
        )
    except TrainingStopped as err:
        raise RuntimeError(f"student {spec.name}: training {err}") from None
    save_sentence_transformer(student, out_dir, dtype=spec.save_dtype)
    if spec.save_dtype != "float32":
        # Scored now, before done.json: a resumed run loads the rounded copy and must not score that as the
        # trained student. No saved_dir: the folder holds the rounded copy, whose bytes its own row reports.
        s.held_out.cached(job / "eval_after.json", student, f"{spec.name} after")
    done = {
        "train_seconds": round(clock.seconds, 3),  # every session's share of a resumed job
        "history": history,
        "steps": steps,
        "extra_params": distiller.extra_parameters(),
        "before": before,
        "student": made,
    }
    mark_done(job, done)
    discard_checkpoints(job / "checkpoints")  # the saved student and done.json are all a rerun reads
    return student, done


def time_encoders(
    teacher: TextEncoder,
    outcomes: list[StudentOutcome],
    held_out: HeldOutEvaluation,
    ev: EncoderEvaluationConfig,
    logger: RunLogger,
) -> dict[str, Any]:
    """The timing phase: the teacher and every trained student encode the same held-out texts at the same
    batch size and thread count, in turns, after a warm-up round (kdistill.runs.timing); metrics["timing"],
    with texts/s per model under "texts_per_s"."""
    from kdistill.runs.timing import time_models

    texts = list(held_out.timed_texts)
    models = {"teacher": teacher} | {o.spec.name: o.model for o in outcomes}
    spinner = logger.job("timing", f"timing: {len(models)} models x {ev.timing_rounds} rounds")
    with torch.inference_mode():
        phase = time_models(
            {name: lambda m=m: m.encode(texts, batch_size=ev.batch_size) for name, m in models.items()},
            rounds=ev.timing_rounds,
            threads=ev.threads,
        )
    spinner.done()
    record = phase.record(
        texts=len(texts),
        batch_size=ev.batch_size,
        max_seq_length=teacher.max_seq_length,
        sequence_note="teacher and transformer students truncate at max_seq_length; static students read "
        "whole texts (no limit), so their texts/s is if anything understated",
    )
    record["texts_per_s"] = {name: len(texts) / t.median_s for name, t in phase.models.items()}
    return record


def encoder_metrics(
    cfg: EncoderRunConfig,
    data: EncoderData,
    held_out: HeldOutEvaluation,
    teacher_eval: dict[str, Any],
    outcomes: list[StudentOutcome],
    timing: dict[str, Any],
) -> dict[str, Any]:
    """metrics.json without its `run` block: one row per model, the training histories, the students; the
    speed of the teacher and each trained student comes from the timing phase (`time_encoders`)."""
    speed = timing["texts_per_s"]
    teacher_eval = teacher_eval | {"texts_per_s": speed["teacher"]}
    models = [_model_row("teacher", "teacher", "teacher", teacher_eval, None)]
    history: list[dict[str, Any]] = []
    students: dict[str, Any] = {}
    for o in outcomes:
        name, done = o.spec.name, o.done
        models.append(_model_row(f"{name} (before)", "before", o.spec.kind, done["before"], teacher_eval))
        row = _model_row(name, "distilled", o.spec.kind, o.after | {"texts_per_s": speed[name]}, teacher_eval)
        row["extra_params"] = done["extra_params"]
        row["train_seconds"] = done["train_seconds"]
        models.append(row)
        if o.saved is not None:
            label = f"{name} ({o.spec.save_dtype} as saved)"
            models.append(_model_row(label, "saved", o.spec.kind, o.saved, teacher_eval))
        history.extend({"model": name, "seed": cfg.seed, **h} for h in done["history"])
        students[name] = {
            "dir": str(o.out_dir),
            "steps": done["steps"],
            "train_seconds": done["train_seconds"],
            "losses": o.spec.losses,
            "save_dtype": o.spec.save_dtype,
            **done["student"],
        }
    return {
        "task": "encoder",
        "models": models,
        "history": history,
        "students": students,
        "summary": _encoder_summary(models, len(data.train), len(data.queries)),
        "timing": timing,
        "evaluation": {
            "batch_size": held_out.batch_size,
            "threads": timing["threads"],
            "pairs": len(data.queries),
            "spearman_texts": len(held_out.spearman_texts),
            "throughput_texts": len(held_out.timed_texts),
            "off_domain": {
                name: {"pairs": len(pairs), "source": pairs.source}
                for name, pairs in held_out.domains.items()
            },
            "off_domain_missing": held_out.missing_domains,
        },
    }


def _model_row(
    name: str, role: str, kind: str, result: dict[str, Any], teacher: dict[str, Any] | None
) -> dict:
    row = {"name": name, "role": role, "kind": kind, **result}
    # timed models only (the timing phase): a "before" row shares its trained model's architecture
    texts_per_s = result.get("texts_per_s")
    row["texts_per_s"] = texts_per_s
    row["latency_ms"] = 1000.0 / texts_per_s if texts_per_s else None
    row["accuracy"] = result["recall@10"]  # the quality axis of the trade-off plot
    row["accuracy_std"] = 0.0
    row["off_domain_recall@10"] = off_domain_recall(result)
    if teacher is not None and teacher["recall@10"]:
        row["recall@10_kept"] = result["recall@10"] / teacher["recall@10"]
        row["speedup"] = texts_per_s / teacher["texts_per_s"] if texts_per_s else None
        teacher_off = off_domain_recall(teacher)
        if row["off_domain_recall@10"] is not None and teacher_off:
            row["off_domain_kept"] = row["off_domain_recall@10"] / teacher_off
    return row


def off_domain_recall(result: dict[str, Any]) -> float | None:
    """Mean recall@10 over the off-domain sets (each domain weighs the same, whatever its size); None without."""
    domains = result.get("domains") or {}
    return sum(d["recall@10"] for d in domains.values()) / len(domains) if domains else None


def _encoder_summary(models: list[dict[str, Any]], train_texts: int, pairs: int) -> dict[str, Any]:
    teacher = models[0]
    parts, summary = [], {"train_texts": train_texts, "held_out_pairs": pairs}
    before = {m["name"].removesuffix(" (before)"): m for m in models if m["role"] == "before"}
    for m in models:
        if m["role"] != "distilled":
            continue
        ratio = teacher["params"] / m["params"] if m["params"] else float("nan")
        part = (
            f"{m['name']} keeps {m['recall@10_kept']:.0%} of the teacher's recall@10 in-domain "
            f"({m['recall@10']:.3f} vs {teacher['recall@10']:.3f})"
        )
        off, start = m.get("off_domain_recall@10"), before.get(m["name"], {}).get("off_domain_recall@10")
        if off is not None and "off_domain_kept" in m:
            part += f", {m['off_domain_kept']:.0%} off-domain ({off:.3f}"
            part += f"; {start:.3f} before training)" if start is not None else ")"
            summary[f"{m['name']}: off-domain recall@10 kept"] = m["off_domain_kept"]
            if start is not None:
                summary[f"{m['name']}: off-domain recall@10 change from its start"] = off - start
        parts.append(f"{part} at {m['speedup']:.1f}x its throughput with {ratio:.1f}x fewer parameters")
        summary[f"{m['name']}: recall@10 kept"] = m["recall@10_kept"]
        summary[f"{m['name']}: speedup"] = m["speedup"]
    summary["headline"] = "; ".join(parts) if parts else f"teacher recall@10 {teacher['recall@10']:.3f}"
    return {"headline": summary.pop("headline"), **summary}
