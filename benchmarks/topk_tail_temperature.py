"""How far the one-bucket tempering of a top-k teacher's tail is from the dense tempering (issue 15).

A sparse teacher is known on its top-k tokens at T = 1 only, so `kdistill.losses.topk` tempers its tail as
one category, (tail mass)^(1/T), where the dense teacher would give the tail sum_j q_j^(1/T) over its tokens.
This script measures the gap on distributions over a 49,152-token vocabulary (SmolLM2's):

  zipf-s      q_i proportional to i^(-s), one row (the tail's shape is what matters, not the ids)
  gauss-sigma logits drawn N(0, sigma^2), 16 rows (a log-normal spread of probabilities)

For each distribution, k in {1, 5, 20, 50} and T in {0.5, 2, 4} it reports, averaged over the rows:

  tail_dense     the tail bucket's probability in the densely tempered teacher (the truth)
  tail_bucket    the same under the one-bucket tempering (what the sparse losses use)
  tail_capped    the closer bound of `tempered_tail_bounds(ids_are_top_k=True)` (no tail token above the
                 k-th): the best estimate from the top-k alone that is never worse than tail_bucket
  tail_low/high  the bracket without that assumption (the module docstring's bound)
  tv             total variation between the one-bucket and the dense-bucketed tempered teacher
  fkl_dense, fkl_bucket
                 sparse forward KL(teacher || student) over the k + 1 buckets with each teacher, the student
                 being softmax((log q + N(0, 1) noise) / T) (exact on its side)
  fkl_capped     the same with the teacher's tail at tail_capped (the top-k sharing the rest as tempered)

It runs in seconds on a CPU and measures numbers, not time:

    .venv/bin/python benchmarks/topk_tail_temperature.py    # prints the table, writes results/topk_tail_temperature.json
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from kdistill.losses import sparse_forward_kl
from kdistill.losses.topk import present_entries, teacher_bucket_log_probs, tempered_tail_bounds

RESULTS = Path(__file__).resolve().parent / "results" / "topk_tail_temperature.json"
VOCAB = 49_152
KS = (1, 5, 20, 50)
TEMPERATURES = (0.5, 2.0, 4.0)
ZIPF_EXPONENTS = (1.0, 1.2, 1.5, 2.0)
GAUSS_SIGMAS = (2.0, 4.0)
GAUSS_ROWS = 16
STUDENT_NOISE = 1.0
SEED = 0


def distributions(vocab: int) -> dict[str, torch.Tensor]:
    """name -> (rows, V) float64 log-probabilities at T = 1."""
    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    out = {f"zipf-{s}": torch.log_softmax(-s * ranks.log(), dim=-1).unsqueeze(0) for s in ZIPF_EXPONENTS}
    g = torch.Generator().manual_seed(SEED)
    for sigma in GAUSS_SIGMAS:
        logits = sigma * torch.randn(GAUSS_ROWS, vocab, generator=g, dtype=torch.float64)
        out[f"gauss-{sigma}"] = torch.log_softmax(logits, dim=-1)
    return out


def dense_buckets(log_q: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """(rows, k + 1) probabilities of the densely tempered distribution over (top-k ids, tail)."""
    log_p = torch.log_softmax(log_q / temperature, dim=-1)
    top = log_p.gather(-1, ids)
    tail = torch.logsumexp(log_p.scatter(-1, ids, -torch.inf), dim=-1, keepdim=True)
    return torch.cat([top, tail], dim=-1).exp()


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(rows,) KL(p || q) of (rows, C) probabilities (0 log 0 = 0)."""
    return torch.where(p > 0, p * (p.log() - q.log()), 0.0).sum(dim=-1)


def measure(name: str, log_q: torch.Tensor, k: int, temperature: float) -> dict[str, Any]:
    rows, vocab = log_q.shape
    logprobs, ids = log_q.topk(k, dim=-1)  # (rows, k)
    present = present_entries(ids, None)
    dense = dense_buckets(log_q, ids, temperature)  # (rows, k + 1)
    bucket = teacher_bucket_log_probs(logprobs, present, vocab, temperature, torch.float64).exp()
    low, high = tempered_tail_bounds(logprobs, present, vocab, temperature, torch.float64)
    c_low, c_high = tempered_tail_bounds(
        logprobs, present, vocab, temperature, torch.float64, ids_are_top_k=True
    )
    capped = c_low if temperature > 1 else c_high  # the side the one-bucket tempering sits on

    g = torch.Generator().manual_seed(SEED + 1)
    student_logits = log_q + STUDENT_NOISE * torch.randn(rows, vocab, generator=g, dtype=torch.float64)
    student = dense_buckets(torch.log_softmax(student_logits, dim=-1), ids, temperature)
    fkl_bucket = sparse_forward_kl(student_logits, ids, logprobs, temperature=temperature, reduction="none")
    fkl_dense = kl(dense, student)
    top = torch.softmax(logprobs / temperature, dim=-1)  # the top-k's shares, exact on every side
    with_capped_tail = torch.cat([(1 - capped).unsqueeze(-1) * top, capped.unsqueeze(-1)], dim=-1)
    fkl_capped = kl(with_capped_tail, student)

    def mean(x: torch.Tensor) -> float:
        return float(x.mean())

    return {
        "distribution": name,
        "k": k,
        "temperature": temperature,
        "tail_dense": mean(dense[:, -1]),
        "tail_bucket": mean(bucket[:, -1]),
        "tail_capped": mean(capped),
        "tail_low": mean(low),
        "tail_high": mean(high),
        "tv": mean(0.5 * (dense - bucket).abs().sum(dim=-1)),
        "fkl_dense": mean(fkl_dense),
        "fkl_bucket": mean(fkl_bucket),
        "fkl_capped": mean(fkl_capped),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    head = (
        "| distribution | k | T | tail dense | tail one-bucket | tail capped | bracket | TV | fKL dense | "
        "fKL one-bucket | fKL capped |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        lines.append(
            f"| {r['distribution']} | {r['k']} | {r['temperature']:g} | {r['tail_dense']:.3g} | "
            f"{r['tail_bucket']:.3g} | {r['tail_capped']:.3g} | [{r['tail_low']:.3g}, {r['tail_high']:.3g}] | "
            f"{r['tv']:.3g} | {r['fkl_dense']:.3g} | {r['fkl_bucket']:.3g} | {r['fkl_capped']:.3g} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [
        measure(name, log_q, k, temperature)
        for name, log_q in distributions(VOCAB).items()
        for k in KS
        for temperature in TEMPERATURES
    ]
    print(markdown(results))
    record = {
        "benchmark": "topk_tail_temperature",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "settings": {
            "vocab": VOCAB,
            "ks": KS,
            "temperatures": TEMPERATURES,
            "zipf_exponents": ZIPF_EXPONENTS,
            "gauss_sigmas": GAUSS_SIGMAS,
            "gauss_rows": GAUSS_ROWS,
            "student_noise": STUDENT_NOISE,
            "seed": SEED,
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
