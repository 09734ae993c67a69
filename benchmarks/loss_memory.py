"""Peak memory and time of a token-level distillation loss, forward + backward: full logits vs chunked.

Three ways to compute forward_kl(student, teacher) (or `--divergence`), mean over tokens, from the last
hidden states and the lm_head weights of a student and a dense teacher (same vocabulary), for batch x seq
tokens:

  plain       logits = hidden @ W^T for every token (student and teacher), then `forward_kl` on them
  chunked     `kdistill.losses.chunked.chunked_distill_loss`: chunk_size tokens at a time, gradients
              computed in the forward pass
  checkpoint  the alternative design: the same chunks, each wrapped in
              torch.utils.checkpoint(use_reentrant=False), so the backward recomputes each chunk

Each (config, variant) runs in a fresh subprocess. On CPU the peak is the process's maximum resident set
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`); the baseline is read after the inputs are allocated (and
written), the peak after every forward + backward, and the table reports peak - baseline, i.e. what the
loss needs on top of its inputs (the head weight's .grad included: every variant must produce it). With
--device cuda, torch.cuda.max_memory_allocated after torch.cuda.reset_peak_memory_stats() instead.

    .venv/bin/python benchmarks/loss_memory.py                     # both configs, all variants; writes results/loss_memory.json
    .venv/bin/python benchmarks/loss_memory.py --configs smollm2-135m --variants plain,chunked --chunk-sizes 512 --repeats 1
    .venv/bin/python benchmarks/loss_memory.py --device cuda
    .venv/bin/python benchmarks/loss_memory.py --divergence generalized_jsd --variants plain,chunked --out benchmarks/results/loss_memory_jsd.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "loss_memory.json"

# name -> (vocab, hidden): the lm_head shapes of two small open models (teacher hidden = student hidden here)
CONFIGS: dict[str, tuple[int, int]] = {
    "smollm2-135m": (49_152, 576),
    "qwen2.5-0.5b": (151_936, 896),
}
VARIANTS = ("plain", "chunked", "checkpoint")
MIB = 2**20


# --- the three losses -----------------------------------------------------------------------------------


def loss_fn(variant: str, chunk_size: int, divergence: str = "forward_kl") -> Any:
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from kdistill.losses import TOKEN_DIVERGENCES
    from kdistill.losses.chunked import chunked_distill_loss

    token_fn = TOKEN_DIVERGENCES.get(
        divergence
    )  # each with its default parameters (generalized_jsd: beta 0.5)

    def plain(h, w, th, tw):
        logits = F.linear(h, w)  # (B, S, V)
        with torch.no_grad():
            teacher_logits = F.linear(th, tw)  # (B, S, V)
        return token_fn(logits, teacher_logits)

    def chunked(h, w, th, tw):
        return chunked_distill_loss(
            h, w, teacher_hidden=th, teacher_head=tw, chunk_size=chunk_size, divergence=divergence
        ).divergence

    def chunk_sum(h, w, th, tw):
        with torch.no_grad():
            teacher_logits = F.linear(th, tw)  # (c, V)
        return token_fn(F.linear(h, w), teacher_logits, reduction="sum")

    def checkpointed(h, w, th, tw):
        h, th = h.reshape(-1, h.shape[-1]), th.reshape(-1, th.shape[-1])  # (N, H)
        total = sum(
            checkpoint(chunk_sum, h[s : s + chunk_size], w, th[s : s + chunk_size], tw, use_reentrant=False)
            for s in range(0, h.shape[0], chunk_size)
        )
        return total / h.shape[0]

    return {"plain": plain, "chunked": chunked, "checkpoint": checkpointed}[variant]


def worker(args: argparse.Namespace) -> None:
    """One (config, variant) in this process: print one JSON line with its peak memory and times."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    vocab, hidden = CONFIGS[args.config]
    fn = loss_fn(args.variant, args.chunk_size, args.divergence)
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, scale: float = 1.0, grad: bool = False) -> torch.Tensor:
        # in place scaling: no transient copy that would raise the baseline's maximum RSS
        return torch.randn(*shape, generator=g, device=device).mul_(scale).requires_grad_(grad)

    h = randn(args.batch, args.seq, hidden, grad=True)
    w = randn(vocab, hidden, scale=0.05, grad=True)
    th = randn(args.batch, args.seq, hidden)
    tw = randn(vocab, hidden, scale=0.05)

    def rss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # ru_maxrss: KiB on Linux

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / MIB
    else:
        baseline = rss_mib()
    times, loss = [], None
    for _ in range(args.repeats):
        h.grad = w.grad = None
        start = time.perf_counter()
        loss = fn(h, w, th, tw)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / MIB if device.type == "cuda" else rss_mib()
    record = {
        "baseline_mib": baseline,
        "peak_mib": peak,
        "extra_mib": peak - baseline,
        "seconds": times,
        "loss": loss.item(),
        "grad_w_norm": w.grad.norm().item(),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(record), flush=True)


# --- the driver -----------------------------------------------------------------------------------------


def run_one(args: argparse.Namespace, config: str, variant: str, chunk_size: int | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--config", config, "--variant", variant]
    cmd += ["--chunk-size", str(chunk_size or 0)]
    for flag in ("device", "batch", "seq", "repeats", "threads", "divergence"):
        cmd += [f"--{flag}", str(getattr(args, flag))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    vocab, hidden = CONFIGS[config]
    tokens = args.batch * args.seq
    where = {"config": config, "variant": variant, "chunk_size": chunk_size, "vocab": vocab, "hidden": hidden}
    if proc.returncode != 0:  # e.g. -9: killed for memory; recorded, and the other runs go on
        print(proc.stderr[-3000:], file=sys.stderr)
        return {**where, "tokens": tokens, "error": f"exit {proc.returncode}"}
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record.update(
        config=config,
        variant=variant,
        chunk_size=chunk_size,
        vocab=vocab,
        hidden=hidden,
        tokens=tokens,
        logits_mib=tokens * vocab * 4 / MIB,  # one float32 (tokens, V) tensor
        median_s=statistics.median(record["seconds"]),
    )
    return record


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument(
        "--chunk-sizes", default="1024,512", help="comma-separated tokens per chunk (chunked, checkpoint)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="forward + backward passes per process")
    parser.add_argument(
        "--divergence",
        default="forward_kl",
        help="a dense token divergence (kdistill methods), default parameters",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    configs, variants = args.configs.split(","), args.variants.split(",")
    for name, known in ((configs, CONFIGS), (variants, VARIANTS)):
        unknown = sorted(set(name) - set(known))
        if unknown:
            parser.error(f"unknown {unknown}; known: {list(known)}")
    chunk_sizes = [int(c) for c in args.chunk_sizes.split(",")]
    jobs = [
        (config, variant, None if variant == "plain" else chunk_size)
        for config in configs
        for variant in variants
        for chunk_size in ([None] if variant == "plain" else chunk_sizes)
    ]
    machine = machine_info(args)
    started = time.perf_counter()
    records = []
    for config, variant, chunk_size in jobs:  # one at a time: the plain runs need several GiB
        record = run_one(args, config, variant, chunk_size)
        records.append(record)
        if "error" in record:
            print(f"{config:>13} {variant:>10} {chunk_size or '':>5}: failed, {record['error']}", flush=True)
            continue
        print(
            f"{config:>13} {variant:>10} {chunk_size or '':>5}: +{record['extra_mib']:8.0f} MiB, "
            f"{record['median_s']:6.2f} s per forward + backward (loss {record['loss']:.6f})",
            flush=True,
        )
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    ok = [r for r in records if "error" not in r]
    plain = {r["config"]: r for r in ok if r["variant"] == "plain"}
    for r in ok:
        r["of_plain"] = r["extra_mib"] / plain[r["config"]]["extra_mib"] if r["config"] in plain else None
    print()
    print(
        "| config | vocab x hidden | tokens | variant | chunk | peak - baseline MiB | of plain "
        "| s per fwd+bwd (median) |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for r in ok:
        of_plain = "" if r["of_plain"] is None else f"{r['of_plain']:.0%}"
        print(
            f"| {r['config']} | {r['vocab']:,} x {r['hidden']} | {r['tokens']:,} | {r['variant']} | "
            f"{r['chunk_size'] or ''} | {r['extra_mib']:,.0f} | {of_plain} | {r['median_s']:.2f} |"
        )
    result = {
        "benchmark": "loss_memory",
        "divergence": args.divergence,
        "device": args.device,
        "batch": args.batch,
        "seq": args.seq,
        "chunk_sizes": chunk_sizes,
        "repeats": args.repeats,
        "memory_measure": "torch.cuda.max_memory_allocated" if args.device == "cuda" else "ru_maxrss",
        "results": records,
        "machine": machine,
        "total_wall_s": time.perf_counter() - started,
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from kdistill.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
