"""How good and how cheap a distilled text encoder is, next to its teacher.

    recall_at_k             retrieval: does query i's document rank in the top k of all documents?
    similarity_spearman     does the student order pairs of held-out texts by similarity as the teacher does?
    encode_throughput       texts per second at a given batch size and thread count
    footprint               parameters and bytes (state dict as safetensors, or a saved directory)
    evaluate_encoder        all of them for one student against its teacher, as plain data

Similarities are cosines throughout (the embeddings are L2-normalised here, whatever the model does).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.evaluation.metrics import count_parameters, size_on_disk_bytes
from kdistill.runs.threads import torch_threads

__all__ = [
    "Encoder",
    "encode_throughput",
    "evaluate_encoder",
    "footprint",
    "pairwise_cosines",
    "recall_at_k",
    "similarity_spearman",
]


class Encoder(Protocol):
    embedding_dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor: ...


def _unit(e: Tensor) -> Tensor:
    return F.normalize(e.double(), p=2, dim=-1)


def recall_at_k(
    query_emb: Tensor, doc_emb: Tensor, relevant: Sequence[int] | None = None, ks: Sequence[int] = (1, 10)
) -> dict[str, float]:
    """Fraction of queries whose relevant document is among the k most similar documents, per k.

    query_emb (Q, D), doc_emb (N, D); relevant[q] = index of query q's document (default: q, i.e. the
    pairs are aligned). Documents are ranked by cosine; the rank of the relevant document is the number of
    documents scoring at least as high (itself included), so a tie counts against the query. Returns
    {"recall@1": ..., "recall@10": ...}; k larger than N counts every query as found.
    """
    if query_emb.ndim != 2 or doc_emb.ndim != 2 or query_emb.shape[1] != doc_emb.shape[1]:
        raise ValueError(
            f"expected (Q, D) and (N, D), got {tuple(query_emb.shape)} and {tuple(doc_emb.shape)}"
        )
    q = query_emb.shape[0]
    target = torch.arange(q) if relevant is None else torch.as_tensor(list(relevant), dtype=torch.long)
    if target.shape != (q,) or (q and (target.min() < 0 or target.max() >= doc_emb.shape[0])):
        raise ValueError(f"relevant must hold one document index in 0..{doc_emb.shape[0] - 1} per query")
    scores = _unit(query_emb) @ _unit(doc_emb).T  # (Q, N)
    own = scores.gather(1, target.unsqueeze(1))  # (Q, 1)
    rank = (scores >= own).sum(dim=1)  # (Q,), >= 1
    return {f"recall@{k}": (rank <= k).double().mean().item() if q else 0.0 for k in ks}


def pairwise_cosines(emb: Tensor) -> Tensor:
    """Cosine of every unordered pair i < j of rows, in row-major order: (N(N-1)/2,) float64."""
    unit = _unit(emb)
    i, j = torch.triu_indices(emb.shape[0], emb.shape[0], offset=1)
    return (unit[i] * unit[j]).sum(dim=-1)


def similarity_spearman(student_emb: Tensor, teacher_emb: Tensor) -> float:
    """Spearman rank correlation between the student's and the teacher's cosines over all text pairs.

    Both (N, D_s) / (N, D_t) for the same N texts (widths may differ); N(N-1)/2 pairs. Ties get average
    ranks (scipy.stats.spearmanr). 1.0 = the student orders every pair as the teacher does. NaN when
    either side's similarities are all equal.
    """
    from scipy.stats import spearmanr

    if student_emb.shape[0] != teacher_emb.shape[0] or student_emb.shape[0] < 3:
        raise ValueError(
            f"need the same N >= 3 texts on both sides, got {student_emb.shape[0]} and {teacher_emb.shape[0]}"
        )
    result = spearmanr(pairwise_cosines(student_emb).numpy(), pairwise_cosines(teacher_emb).numpy())
    return float(result.statistic)


def _threads(n: int | None) -> AbstractContextManager[None]:
    """`n` torch threads for the block, or whatever torch uses now when `n` is None."""
    return nullcontext() if n is None else torch_threads(n)


def encode_throughput(
    encoder: Encoder,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    threads: int | None = None,
    repeats: int = 3,
) -> float:
    """Texts per second encoding `texts` (tokenization included), the median of `repeats` timed passes.

    One untimed warm-up batch first. `threads` sets torch's intra-op threads for the measurement (and is
    restored after); compare encoders only at the same batch size, thread count and machine.
    """
    if not texts or repeats < 1:
        raise ValueError("encode_throughput needs texts and repeats >= 1")
    with _threads(threads):
        encoder.encode(list(texts[:batch_size]), batch_size=batch_size)
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder.encode(list(texts), batch_size=batch_size)
            seconds.append(time.perf_counter() - start)
    return len(texts) / sorted(seconds)[len(seconds) // 2]


def footprint(encoder: nn.Module, saved_dir: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """{"parameters", "state_bytes"} (the state dict as safetensors), plus "saved_bytes" of a saved directory."""
    out = {"parameters": count_parameters(encoder), "state_bytes": size_on_disk_bytes(encoder)}
    if saved_dir is not None:
        out["saved_bytes"] = sum(f.stat().st_size for f in Path(saved_dir).rglob("*") if f.is_file())
    return out


def evaluate_encoder(
    student: Any,
    teacher: Any,
    *,
    queries: Sequence[str],
    documents: Sequence[str],
    heldout_texts: Sequence[str],
    relevant: Sequence[int] | None = None,
    batch_size: int = 32,
    threads: int | None = None,
    ks: Sequence[int] = (1, 10),
    saved_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Retrieval recall@k of student and teacher, Spearman of their pairwise similarities on held-out
    texts, throughput of both at the same batch size and thread count, and the student's footprint."""
    out: dict[str, Any] = {}
    for name, model in (("student", student), ("teacher", teacher)):
        with _threads(threads):
            q = model.encode(queries, batch_size=batch_size)
            d = model.encode(documents, batch_size=batch_size)
        out[name] = recall_at_k(q, d, relevant, ks) | {
            "texts_per_s": encode_throughput(model, heldout_texts, batch_size=batch_size, threads=threads),
            **footprint(model, saved_dir if name == "student" else None),
        }
    with _threads(threads):
        s, t = (
            student.encode(heldout_texts, batch_size=batch_size),
            teacher.encode(heldout_texts, batch_size=batch_size),
        )
    out["spearman_vs_teacher"] = similarity_spearman(s, t)
    out["speedup"] = out["student"]["texts_per_s"] / out["teacher"]["texts_per_s"]
    out["settings"] = {"batch_size": batch_size, "threads": threads or torch.get_num_threads()}
    return out
