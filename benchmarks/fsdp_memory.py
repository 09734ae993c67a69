"""Per-process peak memory and step time of `train.parallel: fsdp` vs `ddp`: 2 processes, the same student.

Each mode runs `kdistill.lm.train.train_objective` (SFT objective, AdamW, full fine-tuning, float32) in a
fresh `torchrun --nproc_per_node 2` group (gloo on CPU, NCCL with --device cuda): the same Llama-shaped student
(built from a config, seeded), the same synthetic rows (random token ids, the second half of each row is the
answer). Every process reports:

  peak_rss_mib      its maximum resident set (`resource.getrusage(RUSAGE_SELF).ru_maxrss`), whole process
  baseline_rss_mib  its resident set after imports and the process group, before the student is built
  training_mib      peak - baseline: what the student, its gradients, AdamW state, activations and the
                    parallel wrapper (DDP buckets, FSDP gathered layers) took; the comparison's figure
  state_mib         counted, not measured: the elements of the student's parameters this process holds
                    (its shards under FSDP) x 4 bytes x 4 (weights, gradients, AdamW's two moments)
  (--device cuda: torch.cuda.max_memory_allocated instead of RSS, baseline 0)

Allocator. On CPU the resident set follows glibc malloc, which keeps freed memory of the heap mapped:
FSDP's per-layer gather buffers, allocated and freed every layer, and the full student freed after
sharding stay in the RSS although no tensor uses them (measured: FSDP's RSS then equals DDP's). So each
mode runs twice: with `MALLOC_MMAP_THRESHOLD_=65536` (every allocation of 64 KiB or more is its own mapping,
unmapped when freed: the RSS follows the live tensors; the goal is judged on this one) and with glibc's
defaults (reported beside it, what a plain CPU run shows). On CUDA neither applies: the caching allocator's
max_memory_allocated counts live tensor bytes.

The run stops one step before its end (`stop_after`), so the peak never includes the consolidation of the
final student into one model on the main process (done once per run, after training). Step time: the main
process's wall time from the end of step 1 to the end of the last step, divided by the steps.

    .venv/bin/python benchmarks/fsdp_memory.py                  # writes results/fsdp_memory.json
    .venv/bin/python benchmarks/fsdp_memory.py --layers 4 --steps 3   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "fsdp_memory.json"
MIB = 2**20


def worker(args: argparse.Namespace) -> None:
    """One process of the torchrun group: train, then write this process's figures to args.out/rank-R.json."""
    import torch

    torch.set_num_threads(args.threads)
    rank = int(os.environ["RANK"])  # the process group is accelerate's, started inside train_objective
    from kdistill.lm.config import LMTrainConfig
    from kdistill.lm.fsdp import local_numel
    from kdistill.lm.models import model_from_config
    from kdistill.lm.objectives import SFTObjective
    from kdistill.lm.train import close_process_group, train_objective

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    student = model_from_config(
        {
            "model_type": "llama",
            "vocab_size": args.vocab,
            "hidden_size": args.hidden,
            "intermediate_size": args.hidden * 8 // 3,
            "num_hidden_layers": args.layers,
            "num_attention_heads": args.hidden // 64,
            "num_key_value_heads": args.hidden // 64,
            "max_position_embeddings": args.seq,
            "tie_word_embeddings": True,
        },
        seed=0,
    )
    total = sum(p.numel() for p in student.parameters())
    gen = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(64):
        ids = torch.randint(3, args.vocab, (args.seq,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (args.seq // 2) + ids[args.seq // 2 :]})
    cfg = LMTrainConfig(
        micro_batch_size=args.micro,
        grad_accum=1,
        lr=1e-4,
        warmup_steps=0,
        log_every=1,
        parallel=args.mode,
    )
    ends: list[float] = []
    objective = SFTObjective(student)
    train_objective(
        objective,
        rows,
        cfg,
        steps=args.steps + 1,
        pad_token_id=0,
        on_log=lambda entry: ends.append(time.perf_counter()),
        stop_after=args.steps,
    )
    if args.device == "cuda":
        peak, baseline = torch.cuda.max_memory_allocated(), 0
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    held = sum(local_numel(p) for p in objective.parameters())
    figures = {
        "rank": rank,
        "params_total": total,
        "params_held": held,
        "peak_rss_mib": peak / MIB,
        "baseline_rss_mib": baseline / MIB,
        "training_mib": (peak - baseline) / MIB,
        "state_mib": held * 4 * 4 / MIB,
    }
    if rank == 0:
        figures["step_seconds"] = (ends[-1] - ends[0]) / (len(ends) - 1)
    Path(args.out, f"rank-{rank}.json").write_text(json.dumps(figures))
    close_process_group()


ALLOCATORS = {"mmap_64k": {"MALLOC_MMAP_THRESHOLD_": "65536"}, "glibc_default": {}}


def launch(mode: str, args: argparse.Namespace, out: Path, allocator: dict[str, str]) -> list[dict]:
    """Run the worker for `mode` under torchrun with 2 processes; their figures."""
    out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={port}", __file__, "--worker", "--mode", mode, "--out", str(out)]
    for name in ("layers", "hidden", "vocab", "seq", "micro", "steps", "threads", "device"):
        cmd += [f"--{name}", str(getattr(args, name))]
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    env |= {"OMP_NUM_THREADS": str(args.threads), **allocator}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="ddp", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    parser.add_argument("--layers", type=int, default=16, help="decoder layers of the student")
    parser.add_argument("--hidden", type=int, default=768, help="hidden size (heads of 64)")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary (tied embeddings)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per row")
    parser.add_argument("--micro", type=int, default=1, help="rows per process per step")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps measured")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from kdistill.io import atomic_write_text

    load_before = os.getloadavg()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    scratch = args.out.parent / f".fsdp_memory-{os.getpid()}"
    allocators = ALLOCATORS if args.device == "cpu" else {"cuda": {}}
    measured = {}
    for name, allocator in allocators.items():
        runs = {mode: launch(mode, args, scratch / name / mode, allocator) for mode in ("ddp", "fsdp")}
        per_mode = {
            mode: {
                "max_training_mib": max(r["training_mib"] for r in ranks),
                "max_peak_rss_mib": max(r["peak_rss_mib"] for r in ranks),
                "state_mib": max(r["state_mib"] for r in ranks),
                "step_seconds": ranks[0]["step_seconds"],
                "ranks": ranks,
            }
            for mode, ranks in runs.items()
        }
        ddp, fsdp = per_mode["ddp"], per_mode["fsdp"]
        ratios = {
            "training_memory": fsdp["max_training_mib"] / ddp["max_training_mib"],
            "peak_rss": fsdp["max_peak_rss_mib"] / ddp["max_peak_rss_mib"],
            "state": fsdp["state_mib"] / ddp["state_mib"],
            "step_time": fsdp["step_seconds"] / ddp["step_seconds"],
        }
        measured[name] = {"env": allocator, "modes": per_mode, "fsdp_over_ddp": ratios}
    load_after = os.getloadavg()
    judged = measured[next(iter(allocators))]["fsdp_over_ddp"]
    result = {
        "benchmark": "fsdp_memory",
        "started_utc": started,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
        },
        "load_average_before": load_before,
        "load_average_after": load_after,
        "settings": {
            k: getattr(args, k)
            for k in ("layers", "hidden", "vocab", "seq", "micro", "steps", "threads", "device")
        },
        "params": ddp["ranks"][0]["params_total"],
        "allocators": measured,
        "goal_memory_ratio": 0.6,
        "goal_judged_on": next(iter(allocators)),
        "goal_met": judged["training_memory"] <= 0.6,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    for name, m in measured.items():
        for mode in ("ddp", "fsdp"):
            r = m["modes"][mode]
            print(
                f"{name} {mode}: training {r['max_training_mib']:.0f} MiB (peak RSS {r['max_peak_rss_mib']:.0f}), "
                f"state {r['state_mib']:.0f} MiB, {r['step_seconds']:.2f} s/step"
            )
        print(name, " ".join(f"{k} {v:.2f}x" for k, v in m["fsdp_over_ddp"].items()))
    print("goal met" if result["goal_met"] else "goal NOT met")
    for path in sorted(scratch.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    scratch.rmdir()


if __name__ == "__main__":
    main()
