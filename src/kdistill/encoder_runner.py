"""`kdistill run` for `task: encoder`: a sentence-embedding teacher distilled into each configured student.

    corpus ──> held-out query -> document pairs (first sentence -> rest of a paragraph) + training texts
    teacher ──> embeddings of the training texts, cached once by content (resumable) ──> every epoch reads them
    student (cut from the teacher's layers, static token vectors, or built from a config)
        ──> trained against the cached rows (cosine / MSE / similarity-matrix / RKD terms, resumable)
        ──> saved so that `sentence_transformers.SentenceTransformer(students/<name>)` loads it
    teacher, each student before and after ──> recall@1/@10 on the pairs, Spearman of pairwise similarities
        against the teacher, texts/s at the same batch size and thread count, parameters, bytes

The run directory is the one of the other tasks (config.yaml, manifest.json, metrics.json, report.html);
restarting the same command continues an interrupted run: finished students are loaded, the interrupted one
resumes from its last checkpoint, finished evaluations are read back.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from kdistill.config import EncoderCorpusConfig, EncoderRunConfig, EncoderStudentConfig
from kdistill.io import atomic_write_text
from kdistill.lm_runner import _cached_eval, _progress, default_cache_root, resolve_model_ref
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


def _steps(student: EncoderStudentConfig, num_texts: int) -> int:
    t = student.train
    return t.steps if t.steps is not None else max(1, math.ceil(t.epochs * num_texts / t.batch_size))


def check_students(cfg: EncoderRunConfig, teacher: Any) -> None:
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
    spec: EncoderStudentConfig, teacher: Any, train_texts: list[str], seed: int
) -> tuple[Any, dict[str, Any]]:
    """The untrained student a spec describes and how it was made; deterministic, so a resumed run
    rebuilds the same one."""
    from kdistill.encoders import (
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
        student = StaticEmbeddingStudent.from_teacher(
            teacher, dims=spec.dims, init=spec.init, sif_texts=train_texts if spec.sif else None
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


def _model_row(
    name: str, role: str, kind: str, result: dict[str, Any], teacher: dict[str, Any] | None
) -> dict:
    row = {"name": name, "role": role, "kind": kind, **result}
    row["latency_ms"] = 1000.0 / result["texts_per_s"] if result["texts_per_s"] else None
    row["accuracy"] = result["recall@10"]  # the quality axis of the trade-off plot
    row["accuracy_std"] = 0.0
    if teacher is not None and teacher["recall@10"]:
        row["recall@10_kept"] = result["recall@10"] / teacher["recall@10"]
        row["speedup"] = result["texts_per_s"] / teacher["texts_per_s"]
    return row


def run_encoder(
    cfg: EncoderRunConfig,
    *,
    runs_dir: Path = Path("runs"),
    cache_root: Path | None = None,
    fresh: bool = False,
    console: Console | None = None,
    stop_after: int | None = None,
) -> RunResult:
    """Run (or continue) the encoder distillation `cfg` describes; `stop_after` stops each student's
    training after that many steps (tests use it to simulate a kill)."""
    from transformers.utils import logging as hf_logging

    from kdistill.encoders import (
        EmbeddingDistiller,
        cache_teacher_embeddings,
        encode_throughput,
        footprint,
        load_encoder,
        load_saved_encoder,
        recall_at_k,
        save_sentence_transformer,
        similarity_spearman,
    )
    from kdistill.encoders.distill import EmbeddingDistillConfig, TrainingStopped, train_embedding_student

    hf_logging.disable_progress_bar()
    cache_root = cache_root or default_cache_root()
    teacher_path = resolve_model_ref(cfg.teacher.model)  # a wrong reference fails before a run dir is made
    existing = None if fresh else find_unfinished_run(runs_dir, cfg)
    run_dir = existing or new_run_dir(runs_dir, cfg.name)
    atomic_write_text(run_dir / CONFIG, cfg.to_yaml())
    manifest = start_manifest(cfg, run_dir, resumed=existing is not None, seeds=[cfg.seed])
    atomic_write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2))
    t0 = time.perf_counter()
    progress = _progress(console)
    ev = cfg.evaluation

    def spinner(label: str) -> Callable[[], None]:
        task = progress.add_task(label, total=None) if progress is not None else None
        return lambda: progress.update(task, total=1, completed=1) if progress is not None else None

    with progress if progress is not None else contextlib.nullcontext():
        teacher = load_encoder(
            teacher_path,
            pooling=cfg.teacher.pooling,
            max_seq_length=cfg.teacher.max_seq_length,
            trust_remote_code=cfg.teacher.trust_remote_code,
        )
        check_students(cfg, teacher)
        data = build_encoder_data(cfg.corpus)
        train_pairs = list(data.train.items())
        train_texts = [t for _, t in train_pairs]
        task = progress.add_task("teacher embeddings", total=len(train_pairs)) if progress else None

        def on_commit(stored: int, total: int) -> None:
            if progress is not None:
                progress.update(task, completed=stored, total=total)

        cache, cache_report = cache_teacher_embeddings(
            teacher, data.train, cache_root=cache_root, batch_size=ev.batch_size, on_commit=on_commit
        )
        on_commit(len(cache), len(train_pairs))
        spearman_texts = data.documents[: ev.spearman_texts]
        timed_texts = data.documents[: ev.throughput_texts]
        manifest["teacher"] = {
            "model": cfg.teacher.model,
            "path": teacher_path,
            "fingerprint": teacher.fingerprint(),
        }
        manifest["data"] = {
            "train_texts": len(train_pairs),
            "held_out_pairs": len(data.queries),
            "spearman_texts": len(spearman_texts),
            "throughput_texts": len(timed_texts),
        }
        manifest["teacher_embeddings"] = {"dir": str(cache_report.store_dir), "key": cache_report.key}
        atomic_write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2))

        with torch.inference_mode():
            teacher_spearman_emb = teacher.encode(spearman_texts, batch_size=ev.batch_size)

        def evaluate(model: Any, label: str, saved_dir: Path | None = None) -> dict[str, Any]:
            done = spinner(f"eval: {label}")
            with torch.inference_mode():
                q = model.encode(data.queries, batch_size=ev.batch_size)
                d = model.encode(data.documents, batch_size=ev.batch_size)
                s = model.encode(spearman_texts, batch_size=ev.batch_size)
            result = recall_at_k(q, d, ks=(1, 10))
            result["spearman_vs_teacher"] = similarity_spearman(s, teacher_spearman_emb)
            result["texts_per_s"] = encode_throughput(
                model, timed_texts, batch_size=ev.batch_size, threads=ev.threads
            )
            size = footprint(model, saved_dir)
            result["params"], result["size_bytes"] = size["parameters"], size["state_bytes"]
            if "saved_bytes" in size:
                result["saved_bytes"] = size["saved_bytes"]
            result["embedding_dim"] = int(model.embedding_dim)
            done()
            return result

        teacher_eval = _cached_eval(run_dir / "eval_teacher.json", lambda: evaluate(teacher, "teacher"))
        models = [_model_row("teacher", "teacher", "teacher", teacher_eval, None)]
        history: list[dict[str, Any]] = []
        students_meta: dict[str, Any] = {}
        for spec in cfg.students:
            job = run_dir / "jobs" / spec.name
            out_dir = run_dir / "students" / spec.name
            done_file = job / "done.json"
            steps = _steps(spec, len(train_pairs))
            if done_file.is_file() and (out_dir / "modules.json").is_file():
                done = json.loads(done_file.read_text())
                student = load_saved_encoder(out_dir)
            else:
                job.mkdir(parents=True, exist_ok=True)
                finish = spinner(f"build: {spec.name} ({spec.kind})")
                student, made = build_student(spec, teacher, train_texts, cfg.seed)
                finish()
                before = _cached_eval(
                    job / "eval_before.json", lambda s=student, n=spec.name: evaluate(s, f"{n} before")
                )
                torch.manual_seed(cfg.seed)  # the projection (when widths differ) starts the same on a rerun
                distiller = EmbeddingDistiller(student, cache.dim, spec.losses)
                t = spec.train
                train_cfg = EmbeddingDistillConfig(
                    steps=steps,
                    batch_size=t.batch_size,
                    lr=t.lr,
                    warmup_steps=min(t.warmup_steps, steps - 1),
                    weight_decay=t.weight_decay,
                    seed=cfg.seed,
                    log_every=max(1, steps // 40),
                    checkpoint_every=t.checkpoint_every,
                    losses=spec.losses,
                )
                bar = progress.add_task(f"train: {spec.name}", total=steps) if progress else None

                clock = TrainClock(job / "train_clock.json")

                def on_log(entry: dict[str, Any], bar: Any = bar, clock: TrainClock = clock) -> None:
                    clock.tick()
                    if progress is not None:
                        progress.update(bar, completed=entry["step"])

                try:
                    student_history = train_embedding_student(
                        distiller,
                        train_pairs,
                        cache,
                        train_cfg,
                        on_log=on_log,
                        checkpoint_dir=job / "checkpoints",
                        stop_after=stop_after,
                    )
                except TrainingStopped as err:
                    raise RuntimeError(f"student {spec.name}: training {err}") from None
                save_sentence_transformer(student, out_dir)
                done = {
                    "train_seconds": round(clock.seconds, 3),  # every session's share of a resumed job
                    "history": student_history,
                    "steps": steps,
                    "extra_params": distiller.extra_parameters(),
                    "before": before,
                    "student": made,
                }
                atomic_write_text(done_file, json.dumps(done))
            after = _cached_eval(
                job / "eval_after.json",
                lambda s=student, o=out_dir, n=spec.name: evaluate(s, f"{n} after", o),
            )
            label = spec.name
            models.append(_model_row(f"{label} (before)", "before", spec.kind, done["before"], teacher_eval))
            row = _model_row(label, "distilled", spec.kind, after, teacher_eval)
            row["extra_params"] = done["extra_params"]
            row["train_seconds"] = done["train_seconds"]
            models.append(row)
            history.extend({"model": label, "seed": cfg.seed, **h} for h in done["history"])
            students_meta[spec.name] = {
                "dir": str(out_dir),
                "steps": done["steps"],
                "train_seconds": done["train_seconds"],
                "losses": spec.losses,
                **done["student"],
            }

    metrics = {
        "task": "encoder",
        "models": models,
        "history": history,
        "students": students_meta,
        "summary": _encoder_summary(models, len(train_pairs), len(data.queries)),
        "evaluation": {
            "batch_size": ev.batch_size,
            "threads": ev.threads or torch.get_num_threads(),
            "pairs": len(data.queries),
            "spearman_texts": len(spearman_texts),
            "throughput_texts": len(timed_texts),
        },
        "run": run_record(cfg, run_dir, manifest["started"], t0, seeds=[cfg.seed], device="cpu"),
    }
    from kdistill.evaluation import write_report

    write_report(run_dir, metrics, config_yaml=cfg.to_yaml(), manifest=manifest)
    atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2))  # last: marks the run finished
    return RunResult(run_dir, metrics, existing is not None)


def _encoder_summary(models: list[dict[str, Any]], train_texts: int, pairs: int) -> dict[str, Any]:
    teacher = models[0]
    parts, summary = [], {"train_texts": train_texts, "held_out_pairs": pairs}
    for m in models:
        if m["role"] != "distilled":
            continue
        ratio = teacher["params"] / m["params"] if m["params"] else float("nan")
        parts.append(
            f"{m['name']} keeps {m['recall@10_kept']:.0%} of the teacher's recall@10 "
            f"({m['recall@10']:.3f} vs {teacher['recall@10']:.3f}) at {m['speedup']:.1f}x its throughput "
            f"with {ratio:.1f}x fewer parameters"
        )
        summary[f"{m['name']}: recall@10 kept"] = m["recall@10_kept"]
        summary[f"{m['name']}: speedup"] = m["speedup"]
    summary["headline"] = "; ".join(parts) if parts else f"teacher recall@10 {teacher['recall@10']:.3f}"
    return {"headline": summary.pop("headline"), **summary}
