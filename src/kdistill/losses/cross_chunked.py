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


# ---------------------------------------------------------------- the training form: CE + cross loss, one pass


@dataclass(frozen=True)
class FusedCrossTokenizerLoss:
    """What `fused_cross_tokenizer_loss` returns. `total` is the one differentiable output; the parts are
    detached sums for logging."""

    total: Tensor  # kd_weight * (matched_weight * matched + unmatched_weight * unmatched) + ce_weight * ce
    ce: Tensor  # the student's cross-entropy summed over rows with a label
    matched: Tensor
    unmatched: Tensor


@dataclass(frozen=True)
class _FusedSpec:
    labels: Tensor  # (R,)
    cross_rows: Tensor  # (C,) int64 into R
    ids: Tensor | None  # (C, k)
    logprobs: Tensor  # (C, k)
    exact: Tensor | None  # (C,)
    loss: str
    divergence: str | Divergence
    divergence_kwargs: dict[str, Any] | None
    temperatures: dict[str, float]
    teacher_vocab_size: int | None
    matched_weight: float
    unmatched_weight: float
    kd_weight: float
    ce_weight: float
    chunk_size: int

    def ce_and_gradient(
        self, logits: Tensor, start: int, end: int, *, gradient: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The CE summed over rows [start, end) and ce_weight x its gradient w.r.t. the logits in closed form
        (softmax - one-hot on labelled rows), computed without autograd."""
        labels = self.labels[start:end]
        labelled = labels != -100
        safe = labels.clamp_min(0)[:, None]
        with torch.no_grad():
            log_p = torch.log_softmax(logits.to(compute_dtype(logits)), dim=-1)  # (c, V)
            ce = -(log_p.gather(1, safe)[:, 0] * labelled).sum()
            if not gradient:
                return ce, None
            grad = log_p.exp_()  # in place: log_p is not needed any more
            grad.scatter_add_(1, safe, -torch.ones_like(safe, dtype=grad.dtype))
            grad.mul_((labelled * self.ce_weight)[:, None].to(grad.dtype))
        return ce, grad

    def cross_terms(self, logits: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
        """(matched, unmatched) sums of the aligned chunks among rows [start, end)."""
        zero = torch.zeros((), dtype=compute_dtype(logits), device=logits.device)
        inside = (self.cross_rows >= start) & (self.cross_rows < end)
        matched, unmatched = zero, zero
        if self.kd_weight and bool(inside.any()):
            exact = inside & self.exact if self.loss == "hybrid" else torch.zeros_like(inside)
            shape = inside & ~exact
            if bool(exact.any()):
                m, u = hybrid_topk_parts(
                    logits[self.cross_rows[exact] - start],
                    self.ids[exact],
                    self.logprobs[exact],
                    divergence=self.divergence,
                    divergence_kwargs=self.divergence_kwargs,
                    teacher_vocab_size=self.teacher_vocab_size,
                    **self.temperatures,
                )
                matched, unmatched = m.sum(), u.sum()
            if bool(shape.any()):
                unmatched = unmatched + uld_topk(
                    logits[self.cross_rows[shape] - start],
                    self.logprobs[shape],
                    teacher_vocab_size=self.teacher_vocab_size,
                    reduction="sum",
                    **self.temperatures,
                )
        return matched, unmatched

    def weighted(self, ce: Tensor, matched: Tensor, unmatched: Tensor) -> Tensor:
        return self.ce_weight * ce + self.kd_weight * (
            self.matched_weight * matched + self.unmatched_weight * unmatched
        )


class _FusedCross(torch.autograd.Function):
    """(hidden, weight, bias) -> the weighted total, its gradients formed chunk by chunk in forward: one
    logits matmul and two gradient matmuls per chunk, the loss's own gradient by autograd on the chunk's
    logits only (no recomputation in backward)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, spec: _FusedSpec):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        w = weight.to(hidden.dtype)
        b = None if bias is None else bias.to(hidden.dtype)
        acc = compute_dtype(weight)
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        sums = [torch.zeros((), dtype=compute_dtype(hidden), device=hidden.device) for _ in range(3)]
        rows = hidden.shape[0]
        for start in range(0, rows, spec.chunk_size):
            end = min(start + spec.chunk_size, rows)
            h = hidden[start:end]
            logits = F.linear(h, w, b)  # (c, V)
            wanted = need_h or need_w or need_b
            ce, g = spec.ce_and_gradient(logits, start, end, gradient=wanted and bool(spec.ce_weight))
            with torch.enable_grad():
                z = logits.detach().requires_grad_(wanted)
                matched, unmatched = spec.cross_terms(z, start, end)
                value = spec.kd_weight * (spec.matched_weight * matched + spec.unmatched_weight * unmatched)
                if z.requires_grad and value.requires_grad:
                    (g_cross,) = torch.autograd.grad(value, z)
                    g = g_cross if g is None else g.add_(g_cross)
                    del g_cross
            for n, part in enumerate((ce, matched, unmatched)):
                sums[n] = sums[n] + part.detach()
            del logits, z, value
            if g is not None:
                g = g.to(w.dtype)  # the matmul dtype (the CE part is formed in float32)
                if grad_b is not None:
                    grad_b.add_(g.sum(dim=0, dtype=acc))
                if grad_h is not None:
                    grad_h[start:end] = (g @ w).to(grad_h.dtype)
                if grad_w is not None:
                    grad_w.add_((g.t() @ h).to(acc))
                del g
        ctx.set_materialize_grads(False)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(*(t if t is not None else torch.empty(0) for t in (grad_h, grad_w, grad_b)))
        ctx.present = (grad_h is not None, grad_w is not None, grad_b is not None)
        ce, matched, unmatched = sums
        ctx.mark_non_differentiable(ce, matched, unmatched)
        return spec.weighted(ce, matched, unmatched), ce, matched, unmatched

    @staticmethod
    def backward(ctx, grad_total, *_):
        if grad_total is None:
            return None, None, None, None
        out = []
        for saved, present, dtype in zip(ctx.saved_tensors, ctx.present, (None, *ctx.dtypes), strict=True):
            grad = saved * grad_total if present else None
            out.append(grad if grad is None or dtype is None else grad.to(dtype))
        return out[0], out[1], out[2], None


def fused_cross_tokenizer_loss(
    hidden: Tensor,
    head_weight: Tensor,
    head_bias: Tensor | None = None,
    *,
    labels: Tensor,
    cross_rows: Tensor,
    teacher_logprobs: Tensor,
    loss: CrossLoss,
    teacher_student_ids: Tensor | None = None,
    exact: Tensor | None = None,
    divergence: str | Divergence = "forward_kl",
    divergence_kwargs: dict[str, Any] | None = None,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    teacher_vocab_size: int | None = None,
    matched_weight: float = 1.0,
    unmatched_weight: float = 1.0,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    chunk_size: int = 1024,
) -> FusedCrossTokenizerLoss:
    """What a cross-tokenizer training step minimises, in one pass over the student's answer rows:

        total = ce_weight * sum_r CE(logits_r, labels_r) + kd_weight * chunked_cross_tokenizer_loss(rows
                `cross_rows`).total

    hidden (R, H) are the rows the SFT term covers (labels (R,), -100 = none); `cross_rows` (C,) picks the
    aligned chunks among them, with their teacher_logprobs / teacher_student_ids (C, k) and exact (C,). Each
    chunk of rows forms its logits once, and the gradient w.r.t. those logits (autograd of the losses on
    the chunk alone) becomes the gradients w.r.t. hidden, weight and bias right there: three head matmuls
    per chunk, as `chunked_distill_loss`, instead of CE and the checkpointed cross loss apart (seven). Value
    and gradients equal that composition (tested); only `total` is differentiable.
    """
    cross_rows = cross_rows.to(hidden.device, torch.int64)
    _check_inputs(
        hidden[cross_rows],
        head_weight,
        head_bias,
        teacher_student_ids,
        teacher_logprobs,
        exact,
        None,
        loss,
        chunk_size,
    )
    if labels.shape != hidden.shape[:1]:
        raise ValueError(
            f"labels {tuple(labels.shape)} must be ({hidden.shape[0]},) for hidden {tuple(hidden.shape)}"
        )
    check_temperature(student_temperature)
    check_temperature(teacher_temperature)
    check_teacher_vocab_size(teacher_vocab_size, teacher_logprobs.shape[1])
    if loss == "hybrid":
        bind_divergence(divergence, divergence_kwargs)
    device = hidden.device
    spec = _FusedSpec(
        labels=labels.to(device),
        cross_rows=cross_rows,
        ids=None if teacher_student_ids is None else teacher_student_ids.to(device),
        logprobs=teacher_logprobs.detach().to(device),
        exact=None if exact is None else exact.to(device),
        loss=loss,
        divergence=divergence,
        divergence_kwargs=divergence_kwargs,
        temperatures={"student_temperature": student_temperature, "teacher_temperature": teacher_temperature},
        teacher_vocab_size=teacher_vocab_size,
        matched_weight=matched_weight,
        unmatched_weight=unmatched_weight,
        kd_weight=kd_weight,
        ce_weight=ce_weight,
        chunk_size=chunk_size,
    )
    with torch.autocast(device.type, enabled=False):
        total, ce, matched, unmatched = _FusedCross.apply(hidden, head_weight, head_bias, spec)
    return FusedCrossTokenizerLoss(total=total, ce=ce, matched=matched, unmatched=unmatched)
