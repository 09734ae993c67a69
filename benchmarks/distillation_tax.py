"""The distillation tax: time per optimizer step of a student trained on a cached top-k teacher signal vs plain SFT.

Issue 4's target: offline distillation from a cached top-k signal costs at most 1.15x the time of an SFT step
of the same student on the same batches.

Setup (all random, nothing downloaded): a student with SmolLM2-135M's shapes (vocab 49,152, hidden 576,
intermediate 1536, 9 heads / 3 KV heads, tied embeddings) but only `--layers` blocks, sequences of `--seq` random
tokens (every position but the first is a loss token), micro-batch `--batch`, float32. The teacher signal
(top-k log-probabilities, k = `--k`) is captured once with `kdistill.lm.capture.capture_topk` from a separately
initialised teacher of the same vocabulary (`--teacher-layers` blocks) into a temporary store, and read back
through `CachedTeacher(TeacherSignal(store))`, as `kdistill run` does.

Arms, all trained by `kdistill.lm.train.train_objective` (AdamW, lr 1e-4, grad clip 1.0, cosine schedule):
  sft       SFTObjective as runs use it: cross-entropy from the last hidden states and the head weights,
            chunk by chunk (`chunked_cross_entropy`, chunk_size 1024), never the full logits.
  sft-plain SFTObjective(chunk_size=None): the student's full (B, T, V) logits -> cross-entropy
            (`response_nll_sum`), what SFT did before the chunked CE.
  kd        TokenDistillObjective + CachedTeacher, sparse forward KL(teacher || student) over the top-k + tail
            buckets at T = 1, ce_weight 0: the chunked loss (`chunked_distill_loss`, default chunk_size 1024),
            which never forms the whole logits and computes the head gradients inside its forward.
  kd+ce     the same plus the CE term (ce_weight 1): the usual KD + SFT mix; the objective passes kd_weight and
            ce_weight to the chunked loss, which forms one fused gradient (one pair of head matmuls) per chunk.
  kd-plain  benchmark-only objective: the kd loss on the full logits (model forward -> logits ->
            `sparse_forward_kl`), no chunking. kd-plain vs sft-plain is the cost of the loss itself; kd vs kd-plain
            is the cost (or gain) of the chunked path.

What is timed: each run gets `on_log` with log_every=1 and records `time.perf_counter()` when step s ends; the
time of step s is the difference from the end of step s-1, i.e. one whole iteration of `train_objective`'s loop
(batch indices, collate, the teacher-signal join for kd, forward, backward, grad clip, AdamW step, scheduler,
bookkeeping). The first `--warmup` steps of every run are dropped. Every run starts from the same student
weights and sees the same batches (same data seed). Arms are interleaved: `--rounds` rounds, each running every
arm once (the order rotates between rounds), so a slow period of a shared machine hits every arm.

    python benchmarks/distillation_tax.py                 # prints a table, writes results/distillation_tax.json
    python benchmarks/distillation_tax.py --quick         # smoke run (2 layers, seq 64, 1 round); writes nothing
    python benchmarks/distillation_tax.py --profile kd    # torch.profiler's op table of one kd step; no timing
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

RESULTS = Path(__file__).resolve().parent / "results" / "distillation_tax.json"

# SmolLM2-135M's shapes (its config.json), with the number of blocks left to the command line
SMOLLM2_LIKE = {
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
ARMS = ("sft", "kd", "kd+ce", "kd-plain", "sft-plain")


def random_examples(n: int, seq: int, vocab: int, seed: int) -> list[dict[str, Any]]:
    """n rows of `seq` random token ids (never the pad id 0); every token is a loss token (labels = ids)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, seq), generator=gen)
    return [{"input_ids": r, "labels": r, "record_id": f"r{i}"} for i, r in enumerate(ids.tolist())]


def plain_topk_objective(student: nn.Module, signal: Any) -> nn.Module:
    """The kd arm's loss on the full logits: forward -> (B, T, V) -> sparse_forward_kl summed over tokens."""
    from kdistill.lm.objectives import Objective
    from kdistill.lm.sft_data import IGNORE_INDEX
    from kdistill.losses.token_sparse import sparse_forward_kl

    class PlainTopK(Objective):
        def __init__(self) -> None:
            super().__init__()
            self.student = student

        def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
            input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
            logits = self.student(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
            lengths = attention_mask.sum(dim=1).tolist()
            rows = signal.batch(batch["ids"], lengths=lengths, pad_to=input_ids.shape[1])
            mask = (batch["labels"][:, 1:] != IGNORE_INDEX) & rows["valid"][:, :-1]
            kd = sparse_forward_kl(
                logits,
                rows["topk_ids"][:, :-1].long(),
                rows["topk_logprobs"][:, :-1],
                mask=mask,
                reduction="sum",
            )
            return {"kd/forward_kl": kd}

    return PlainTopK()


def make_objective(arm: str, student: nn.Module, signal: Any) -> nn.Module:
    from kdistill.lm.config import LMDistillConfig
    from kdistill.lm.objectives import CachedTeacher, SFTObjective, TokenDistillObjective

    if arm == "sft":
        return SFTObjective(student)
    if arm == "sft-plain":
        return SFTObjective(student, chunk_size=None)
    if arm == "kd-plain":
        return plain_topk_objective(student, signal)
    settings = LMDistillConfig(
        signal="cached", divergence="forward_kl", temperature=1.0, ce_weight=1.0 if arm == "kd+ce" else 0.0
    )
    return TokenDistillObjective(student, settings, teacher=CachedTeacher(signal), pad_token_id=0)


def timed_run(
    objective: nn.Module, examples: list[dict[str, Any]], steps: int, batch: int
) -> tuple[list[float], list[float], list[float]]:
    """Train for `steps` steps; (wall-clock end of every step, process CPU time then, loss of every step)."""
    from kdistill.lm.config import LMTrainConfig
    from kdistill.lm.train import train_objective

    ends: list[float] = []
    cpu_ends: list[float] = []
    losses: list[float] = []

    def on_log(entry: dict[str, Any]) -> None:
        ends.append(time.perf_counter())
        cpu_ends.append(time.process_time())
        losses.append(float(entry["loss"]))

    cfg = LMTrainConfig(micro_batch_size=batch, grad_accum=1, lr=1e-4, warmup_steps=0, log_every=1)
    result = train_objective(objective, examples, cfg, steps=steps, seed=0, pad_token_id=0, on_log=on_log)
    assert result.finished and len(ends) == steps, (result.steps_done, len(ends))
    return ends, cpu_ends, losses


def profile_step(objective: nn.Module, examples: list[dict[str, Any]], batch: int) -> str:
    """torch.profiler's op table (self CPU time) of one forward + backward of `objective` (after one untimed)."""
    from torch.profiler import ProfilerActivity, profile

    from kdistill.lm.sft_data import collate

    rows = collate(examples[:batch], pad_token_id=0)
    rows["ids"] = [e["record_id"] for e in examples[:batch]]
    objective.train()
    sum(objective(rows).values()).backward()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sum(objective(rows).values()).backward()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


def step_times(ends: list[float], warmup: int) -> list[float]:
    """Step s takes from the end of step s - 1 to its own end; steps warmup + 1 .. last."""
    return [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:], strict=True)]


def quantile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]
        if len(values) > 1
        else values[0]
    )


def machine() -> dict[str, Any]:
    def lscpu(field: str) -> str | None:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None
        return next(
            (line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith(field)), None
        )

    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": lscpu("Model name"),
        "ram_gib": round(mem_kb / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": metadata.version("transformers"),
        "accelerate": metadata.version("accelerate"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="student blocks (SmolLM2-135M has 30)")
    parser.add_argument(
        "--teacher-layers", type=int, default=4, help="teacher blocks (same shapes otherwise)"
    )
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=4, help="micro-batch (rows per optimizer step)")
    parser.add_argument("--k", type=int, default=20, help="top-k entries captured per position")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of every run")
    parser.add_argument("--measured", type=int, default=4, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=4, help="runs per arm, interleaved")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (see the README on why 1)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 layers, seq 64, 1 round; writes nothing"
    )
    parser.add_argument(
        "--profile", choices=ARMS, help="print the op profile of one step of this arm; no timing"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.teacher_layers, args.seq, args.rounds, args.measured = 2, 2, 64, 1, 2
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or "sft" not in arms:
        parser.error(f"--arms must include sft and name only {', '.join(ARMS)}; got {args.arms!r}")
    if args.warmup < 1 or args.measured < 1:
        parser.error("--warmup and --measured must be >= 1 (the first step has no previous step end)")
    torch.set_num_threads(args.threads)

    from kdistill.lm.capture import capture_topk
    from kdistill.lm.models import model_from_config
    from kdistill.lm.signal_store import TeacherSignal

    vocab = SMOLLM2_LIKE["vocab_size"]
    steps = args.warmup + args.measured
    n_examples = max(16, steps * args.batch)  # every run sees the same batches (same data seed)
    examples = random_examples(n_examples, args.seq, vocab, seed=0)
    student_config = SMOLLM2_LIKE | {"num_hidden_layers": args.layers}
    student_params = sum(p.numel() for p in model_from_config(student_config, seed=1).parameters())
    load_before = os.getloadavg()
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        teacher = model_from_config(SMOLLM2_LIKE | {"num_hidden_layers": args.teacher_layers}, seed=1234)
        capture = capture_topk(
            teacher,
            examples,
            Path(tmp) / "signal",
            k=args.k,
            key_inputs={"teacher": "random-smollm2-like", "tokenizer": f"random-{vocab}"},
        )
        del teacher
        signal = TeacherSignal(Path(tmp) / "signal")
        if args.profile:
            student = model_from_config(student_config, seed=1)
            print(profile_step(make_objective(args.profile, student, signal), examples, args.batch))
            return
        print(
            f"captured top-{args.k} of {capture.tokens} tokens in {capture.elapsed_s:.1f} s "
            f"({capture.bytes / 2**20:.1f} MiB); student {student_params / 1e6:.1f}M params, "
            f"{args.layers} layers; {torch.get_num_threads()} threads",
            flush=True,
        )

        times: dict[str, list[list[float]]] = {a: [] for a in arms}  # arm -> per round, measured step seconds
        cpu_times: dict[str, list[list[float]]] = {a: [] for a in arms}  # the same in process CPU seconds
        losses: dict[str, list[list[float]]] = {a: [] for a in arms}
        for r in range(args.rounds):
            order = arms[r % len(arms) :] + arms[: r % len(arms)]
            for arm in order:
                gc.collect()
                student = model_from_config(student_config, seed=1)  # the same weights in every run
                objective = make_objective(arm, student, signal)
                ends, cpu_ends, run_losses = timed_run(objective, examples, steps, args.batch)
                times[arm].append(step_times(ends, args.warmup))
                cpu_times[arm].append(step_times(cpu_ends, args.warmup))
                step_s = times[arm][-1]
                losses[arm].append(run_losses)
                print(
                    f"round {r + 1} {arm:>8}: median {statistics.median(step_s):.3f} s/step "
                    f"(loss {run_losses[0]:.3f} -> {run_losses[-1]:.3f})",
                    flush=True,
                )
                del student, objective
        signal = None

    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    tokens_per_step = args.batch * (args.seq - 1)
    sft_median = statistics.median([t for run in times["sft"] for t in run])
    sft_cpu_median = statistics.median([t for run in cpu_times["sft"] for t in run])
    rows = []
    for arm in arms:
        pooled = [t for run in times[arm] for t in run]
        median = statistics.median(pooled)
        cpu_median = statistics.median([t for run in cpu_times[arm] for t in run])
        round_ratios = [
            statistics.median(a) / statistics.median(s) for a, s in zip(times[arm], times["sft"], strict=True)
        ]
        rows.append(
            {
                "arm": arm,
                "steps_timed": len(pooled),
                "median_s": median,
                "q25_s": quantile(pooled, 0.25),
                "q75_s": quantile(pooled, 0.75),
                "tokens_per_s": tokens_per_step / median,
                "ratio_to_sft": median / sft_median,
                "round_ratios_to_sft": round_ratios,
                "cpu_median_s": cpu_median,
                "cpu_ratio_to_sft": cpu_median / sft_cpu_median,
                "step_s": times[arm],
                "cpu_step_s": cpu_times[arm],
                "loss_first_last": [[run[0], run[-1]] for run in losses[arm]],
            }
        )

    print()
    print(
        "| arm | steps timed | median s/step | IQR s/step | loss tokens/s | x SFT (median) | x SFT per round "
        "| CPU s/step (median) | x SFT (CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        per_round = ", ".join(f"{x:.2f}" for x in row["round_ratios_to_sft"])
        print(
            f"| {row['arm']} | {row['steps_timed']} | {row['median_s']:.2f} | {row['q25_s']:.2f}-{row['q75_s']:.2f} | "
            f"{row['tokens_per_s']:.0f} | {row['ratio_to_sft']:.2f} | {per_round} | {row['cpu_median_s']:.2f} | "
            f"{row['cpu_ratio_to_sft']:.2f} |"
        )
    print(f"\nwall {wall:.0f} s; load average before {load_before}, after {load_after}")
    if args.quick:
        return
    result = {
        "benchmark": "distillation_tax",
        "target": "kd / sft <= 1.15",
        "settings": {
            "student": student_config,
            "student_params": student_params,
            "teacher_layers": args.teacher_layers,
            "seq": args.seq,
            "micro_batch": args.batch,
            "loss_tokens_per_step": tokens_per_step,
            "k": args.k,
            "warmup_steps_dropped": args.warmup,
            "measured_steps_per_run": args.measured,
            "rounds": args.rounds,
            "threads": torch.get_num_threads(),
            "dtype": "float32",
            "optimizer": "AdamW lr 1e-4, grad clip 1.0, cosine, no warmup (LMTrainConfig defaults otherwise)",
            "kd": "sparse forward_kl, T=1, chunk_size 1024 (default), ce_weight 0 (kd) / 1 (kd+ce, fused)",
        },
        "capture": {"seconds": capture.elapsed_s, "tokens": capture.tokens, "bytes": capture.bytes},
        "arms": rows,
        "wall_s": wall,
        "load_average_before_after": [load_before, load_after],
        "machine": machine(),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from kdistill.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
