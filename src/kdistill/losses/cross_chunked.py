"""Cross-tokenizer distillation straight from the student's hidden states, a chunk of rows at a time.

Row r is one aligned chunk of text (`kdistill.lm.alignment`): the student's hidden state that predicts it and
the cached teacher's top-k there (`teacher_logprobs`, and `teacher_student_ids`, each candidate's student id
by `kdistill.lm.vocab_map`, -1 = none). `exact` marks the 1:1 chunks, where the student's next token and the
teacher's cover the same bytes, so the teacher's distribution is one over the student's next token as well.

    loss="uld":    every row:  uld_topk                                              -> unmatched
    loss="hybrid": exact rows: hybrid_topk's matched part -> matched, its unmatched part -> unmatched
                   other rows: uld_topk (the teacher's candidates there spell other byte spans, so only the
                               shape of its distribution is comparable)           -> unmatched
    total = matched_weight * matched + unmatched_weight * unmatched

`matched` and `unmatched` are SUMS over unmasked rows (not means: the caller divides by what its mean needs,
e.g. the unmasked row count of the whole accumulation window). With loss="uld" everything is unmatched, so
total = unmatched_weight * sum of uld_topk.

Memory. The student logits are hidden @ W^T (+ b): (R, V) for R rows, 2.5 GB per float32 copy at R = 4096
and V = 152k, and the sort / top-k / masking of the losses keep several copies for backward. Here they are
formed chunk_size rows at a time, each chunk under `torch.utils.checkpoint` (use_reentrant=False): the
forward keeps only the chunk's inputs (no (chunk, V) tensor outlives its chunk), and the backward
recomputes each chunk's logits and losses when it reaches that chunk. Checkpointing rather than a custom
autograd.Function with the gradient formed in the forward (as `chunked_distill_loss` does): the losses here
go through top-k and sorts with no cheap closed-form gradient, the three outputs (total, matched, unmatched)
stay independently differentiable, and autograd derives the gradient from the same code that computes the
value. The price is one more (chunk, H) x (H, V) matmul and loss evaluation per chunk in backward.
Masked rows are dropped before chunking (they cost no matmul).

Shapes: hidden (R, H); head_weight (V, H), cast to hidden's dtype; head_bias (V,) or None;
teacher_student_ids (R, k) int64; teacher_logprobs (R, k) (-inf = absent); exact (R,) bool; mask (R,) bool,
True = the row counts. The losses run in float32 (float64 for float64 inputs); the teacher gets no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from kdistill.losses.divergence import Divergence, check_temperature
from kdistill.losses.hybrid import bind_divergence, hybrid_topk_parts
from kdistill.losses.numerics import compute_dtype
from kdistill.losses.uld import check_teacher_vocab_size, uld_topk

CrossLoss = Literal["uld", "hybrid"]


@dataclass(frozen=True)
class CrossTokenizerLoss:
    """What `chunked_cross_tokenizer_loss` returns: 0-dim tensors, sums over unmasked rows.

    total:     matched_weight * matched + unmatched_weight * unmatched (what to backpropagate).
    matched:   the hybrid's matched-part divergence summed over exact rows (0 with loss="uld").
    unmatched: the hybrid's unmatched part over exact rows plus ULD (top-k + tail) over the other rows
               (loss="uld": ULD over every row).
    """

    total: Tensor
    matched: Tensor
    unmatched: Tensor


def _check_inputs(
    hidden: Tensor,
    head_weight: Tensor,
    head_bias: Tensor | None,
    teacher_student_ids: Tensor | None,
    teacher_logprobs: Tensor,
    exact: Tensor | None,
    mask: Tensor | None,
    loss: str,
    chunk_size: int,
) -> None:
    if loss not in ("uld", "hybrid"):
        raise ValueError(f"loss must be 'uld' or 'hybrid', got {loss!r}")
    if hidden.ndim != 2:
        raise ValueError(f"hidden must be (R, H), got {tuple(hidden.shape)}")
    rows, width = hidden.shape
    if head_weight.ndim != 2 or head_weight.shape[1] != width:
        raise ValueError(
            f"head_weight {tuple(head_weight.shape)} must be (V, {width}) for hidden {tuple(hidden.shape)}"
        )
    if head_bias is not None and head_bias.shape != head_weight.shape[:1]:
        raise ValueError(f"head_bias {tuple(head_bias.shape)} must be ({head_weight.shape[0]},)")
    if teacher_logprobs.ndim != 2 or teacher_logprobs.shape[0] != rows:
        raise ValueError(f"teacher_logprobs {tuple(teacher_logprobs.shape)} must be ({rows}, k)")
    if loss == "hybrid":
        if teacher_student_ids is None or exact is None:
            raise ValueError("loss='hybrid' needs teacher_student_ids and exact")
    if teacher_student_ids is not None:
        if teacher_student_ids.shape != teacher_logprobs.shape:
            raise ValueError(
                f"teacher_student_ids {tuple(teacher_student_ids.shape)} must have the shape of teacher_logprobs "
                f"{tuple(teacher_logprobs.shape)}"
            )
        if teacher_student_ids.dtype.is_floating_point or teacher_student_ids.dtype == torch.bool:
            raise ValueError(
                f"teacher_student_ids must be an integer tensor, got dtype {teacher_student_ids.dtype}"
            )
    for name, flags in (("exact", exact), ("mask", mask)):
        if flags is not None and (flags.dtype != torch.bool or flags.shape != (rows,)):
            raise ValueError(
                f"{name} must be a ({rows},) bool tensor, got {flags.dtype} {tuple(flags.shape)}"
            )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def chunked_cross_tokenizer_loss(
    hidden: Tensor,
    head_weight: Tensor,
    head_bias: Tensor | None = None,
    *,
    teacher_logprobs: Tensor,
    loss: CrossLoss,
    teacher_student_ids: Tensor | None = None,
    exact: Tensor | None = None,
    mask: Tensor | None = None,
    divergence: str | Divergence = "forward_kl",
    divergence_kwargs: dict[str, Any] | None = None,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    teacher_vocab_size: int | None = None,
    matched_weight: float = 1.0,
    unmatched_weight: float = 1.0,
    chunk_size: int = 1024,
) -> CrossTokenizerLoss:
    """ULD or hybrid ULD of a top-k teacher from the student's hidden states, chunk_size rows of logits at
    a time (module docstring: which rows get which loss, memory). Value and gradients (w.r.t. hidden,
    head_weight, head_bias) equal the dense composition: logits = hidden @ W^T + b, then `uld_topk` /
    `hybrid_topk` with reduction="sum" on the rows they apply to. teacher_student_ids and exact are needed
    for loss="hybrid" only; the keywords are those of `uld_topk` and `hybrid_topk`.
    """
    _check_inputs(
        hidden, head_weight, head_bias, teacher_student_ids, teacher_logprobs, exact, mask, loss, chunk_size
    )
    check_temperature(student_temperature)
    check_temperature(teacher_temperature)
    check_teacher_vocab_size(teacher_vocab_size, teacher_logprobs.shape[1])
    if loss == "hybrid":  # a bad divergence name or parameter fails even if no row is exact
        bind_divergence(divergence, divergence_kwargs)

    device = hidden.device
    keep = torch.ones(hidden.shape[0], dtype=torch.bool, device=device) if mask is None else mask.to(device)
    if loss == "hybrid":
        exact_rows = (keep & exact.to(device)).nonzero().squeeze(1)
        shape_rows = (keep & ~exact.to(device)).nonzero().squeeze(1)
    else:
        exact_rows = keep.new_zeros(0, dtype=torch.int64)
        shape_rows = keep.nonzero().squeeze(1)
    chunks = [("hybrid", rows) for rows in exact_rows.split(chunk_size) if rows.numel()]
    chunks += [("uld", rows) for rows in shape_rows.split(chunk_size) if rows.numel()]
    if not chunks:  # nothing counts: one empty chunk keeps the outputs attached to the inputs (zero grads)
        chunks = [("uld", shape_rows)]

    weight = head_weight.to(hidden.dtype)  # a copy only if the dtypes differ
    bias = None if head_bias is None else head_bias.to(hidden.dtype)
    ids = None if teacher_student_ids is None else teacher_student_ids.to(device)
    logprobs = teacher_logprobs.detach().to(device)
    temperatures = {"student_temperature": student_temperature, "teacher_temperature": teacher_temperature}

    def chunk_sums(kind: str, h: Tensor, w: Tensor, b: Tensor | None, c_ids: Tensor | None, c_lp: Tensor):
        """(matched sum, unmatched sum) of one chunk: its logits (c, V) exist only in here."""
        logits = F.linear(h, w, b)  # (c, H) @ (H, V) -> (c, V)
        if kind == "uld":
            shape = uld_topk(
                logits, c_lp, teacher_vocab_size=teacher_vocab_size, reduction="sum", **temperatures
            )
            return torch.zeros((), dtype=shape.dtype, device=shape.device), shape
        matched_part, unmatched_part = hybrid_topk_parts(
            logits,
            c_ids,
            c_lp,
            divergence=divergence,
            divergence_kwargs=divergence_kwargs,
            teacher_vocab_size=teacher_vocab_size,
            **temperatures,
        )
        return matched_part.sum(), unmatched_part.sum()

    use_checkpoint = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (hidden, head_weight, head_bias)
    )
    dtype = compute_dtype(hidden, teacher_logprobs)
    matched = torch.zeros((), dtype=dtype, device=device)
    unmatched = torch.zeros((), dtype=dtype, device=device)
    for kind, rows in chunks:
        args = (kind, hidden[rows], weight, bias, None if ids is None else ids[rows], logprobs[rows])
        if use_checkpoint:
            m, u = checkpoint(chunk_sums, *args, use_reentrant=False, preserve_rng_state=False)
        else:
            m, u = chunk_sums(*args)
        matched = matched + m
        unmatched = unmatched + u
    total = matched_weight * matched + unmatched_weight * unmatched
    return CrossTokenizerLoss(total=total, matched=matched, unmatched=unmatched)
