"""Token-level distillation straight from the last hidden states, a chunk of tokens at a time.

A language model's loss normally starts from logits = hidden @ W^T, (N, V) for N tokens: at N = 4096 and
a 152k vocabulary that is 2.5 GB per float32 copy, and a divergence with its backward keeps several copies
alive. `chunked_distill_loss` takes the hidden states and the head weights instead and computes

    divergence = (1 / D) * sum_{t unmasked} div(softmax(z_s,t / T), softmax(z_t,t / T))
    nll_sum    = sum_{t : labels_t != -100} -log softmax(z_s,t)[labels_t]          (T = 1, only with labels)
    z_s,t = h_s,t @ W_s^T + b_s,   z_t,t = h_t,t @ W_t^T + b_t   (or a sparse top-k teacher)

chunk_size tokens at a time, where div is any divergence of `kdistill.losses.token` (dense teacher) or
`kdistill.losses.token_sparse` (top-k teacher), applied with reduction="sum" to each chunk, and D is the
number of unmasked tokens (or `num_tokens`), clamped at >= 1. The value and the gradients with respect to
the student's hidden states, head weight and bias equal those of the plain computation (full logits ->
the same divergence function with reduction="mean") up to float rounding: the same functions are called,
only on fewer rows at a time.

Design: the gradients are computed in the forward pass (as Liger-Kernel's fused linear losses do). For
each chunk the forward computes the chunk's logits, the divergence (and CE) on them, their gradient with
respect to those logits by `torch.autograd.grad`, and folds it into the gradients of the inputs right away:
grad_h[chunk] = g @ W and grad_W += g^T @ h (an in-place addmm into one float32 buffer). Nothing of size
(chunk, V) outlives its chunk; what the autograd graph keeps for backward is grad_h (N, H), grad_W (V, H)
and grad_b (V,), and the backward only multiplies them by the incoming gradient. The alternative,
`torch.utils.checkpoint` around each chunk, keeps nothing in the forward but recomputes every chunk's
student and teacher logits and divergence in the backward (two more (c, H) x (H, V) matmuls per chunk),
and there autograd hands each chunk's head gradient over as a fresh (V, H) tensor before adding it into
the accumulated one. benchmarks/loss_memory.py measures both (its "checkpoint" variant; numbers in
benchmarks/README.md): at 4096 tokens the checkpointed loss peaked 90-130 MiB higher and was slower in 3
of 4 settings (about 3x at vocabulary 152k on CPU). Either way the per-chunk working set is what the token
function needs for (c, V) logits (about 7 float32 copies at the peak, as for the plain full-logits path),
so the peak over the inputs is about (c / N) of the plain one plus the head gradient buffers: chunk_size
1024 of 4096 tokens measured 27-28% of plain, 512 measured 15-16%. The costs of this choice:
  * with grad enabled, the gradient work is done in the forward even if backward is never called (under
    torch.no_grad(), or when no student input requires grad, it is skipped and only the value computed);
  * with `labels` the divergence and the CE need separate gradients (the caller weighs them afterwards),
    so there are two sets of buffers (2 x (V, H)) and two sets of head matmuls per chunk;
  * no double backward (the gradient is not itself differentiable).

Shapes: student_hidden (B, S, H) or (N, H) (any leading shape), already aligned by the caller (position t
predicts token t + 1: shift before calling). student_head (V, H), student_head_bias (V,). Dense teacher:
teacher_hidden (..., H_t) with the student's leading shape (H_t may differ from H), teacher_head (V, H_t),
teacher_head_bias (V,). Sparse teacher: teacher_ids, teacher_logprobs (..., k). mask: bool, the leading
shape, True = the token counts for the divergence. labels: integer, the leading shape, -100 = no CE term;
labels and mask are independent (pass mask = labels != -100 if both should cover the same tokens).

The teacher gets no gradient: its tensors are detached here (they normally come from torch.no_grad()
anyway). Dtypes: logits are computed in student_hidden's dtype (teacher: teacher_hidden's), the head weight
cast to it if it differs (e.g. float32 master weights with bfloat16 activations); the divergence and CE run
in float32 (the token functions upcast); head gradients accumulate in float32 (or float64) and are returned
in the weight's dtype.

Masked tokens (mask False and label -100) are dropped before chunking: they cost no matmul.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.numerics import compute_dtype
from kdistill.losses.token import TOKEN_DIVERGENCES, _check_options
from kdistill.losses.token_sparse import SPARSE_TOKEN_DIVERGENCES

IGNORE_INDEX = -100  # label that marks a token without a CE term
_RESERVED = ("mask", "temperature", "scale_by_t2", "reduction", "num_tokens")

Rows = slice | Tensor  # one chunk: a slice of the flat token axis, or the int64 indices of its tokens


@dataclass(frozen=True)
class ChunkedLoss:
    """What `chunked_distill_loss` returns.

    divergence: 0-dim float32 (float64 for float64 inputs), the divergence summed over unmasked tokens
                divided by `num_tokens` or the unmasked count (>= 1): the reduction="mean" of the token
                functions.
    nll_sum:    0-dim, the student's cross-entropy summed over tokens with labels != -100; None without
                labels. Divide it by what the caller's CE mean needs (e.g. `label_tokens`).
    tokens:     0-dim int64, the number of unmasked tokens (the default divergence denominator).
    label_tokens: 0-dim int64, the number of labels != -100; None without labels.
    """

    divergence: Tensor
    nll_sum: Tensor | None
    tokens: Tensor
    label_tokens: Tensor | None


@dataclass(frozen=True)
class _ChunkTerms:
    """The loss terms of one chunk of student logits. Tensors are flat over tokens, (N, ...), and detached."""

    divergence: Callable[..., Tensor]
    kwargs: Mapping[str, Any]
    temperature: float
    scale_by_t2: bool
    mask: Tensor | None  # (N,) bool; None: every computed row counts for the divergence
    labels: Tensor | None  # (N,) int; None: no CE term
    teacher_hidden: Tensor | None  # (N, H_t), dense teacher
    teacher_head: Tensor | None  # (V, H_t), in teacher_hidden's dtype
    teacher_bias: Tensor | None  # (V,)
    teacher_ids: Tensor | None  # (N, k), sparse teacher
    teacher_logprobs: Tensor | None  # (N, k)

    @property
    def count(self) -> int:
        return 1 if self.labels is None else 2

    def value(self, term: int, logits: Tensor, rows: Rows) -> Tensor:
        """Term 0: the divergence summed over the chunk; term 1: the CE summed over it. logits: (c, V)."""
        if term == 1:
            z = logits.to(compute_dtype(logits))
            return F.cross_entropy(z, self.labels[rows], ignore_index=IGNORE_INDEX, reduction="sum")
        if self.teacher_head is not None:
            with torch.no_grad():
                # (c, H_t) @ (H_t, V) -> (c, V)
                teacher = (F.linear(self.teacher_hidden[rows], self.teacher_head, self.teacher_bias),)
        else:
            teacher = (self.teacher_ids[rows], self.teacher_logprobs[rows])
        return self.divergence(
            logits,
            *teacher,
            mask=None if self.mask is None else self.mask[rows],
            temperature=self.temperature,
            scale_by_t2=self.scale_by_t2,
            reduction="sum",
            **self.kwargs,
        )


def _chunks(n: int, keep: Tensor | None, chunk_size: int) -> list[Rows]:
    """The chunks of the flat token axis; at least one (possibly empty), so that checks always run."""
    if keep is None:
        return [slice(start, min(start + chunk_size, n)) for start in range(0, max(n, 1), chunk_size)]
    rows = keep.nonzero().squeeze(1)  # (n_kept,)
    return list(rows.split(chunk_size)) or [rows]


def _accumulate(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """acc += a @ b, in place when the dtypes allow it (no (V, H) temporary)."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    else:
        acc.add_(a @ b)


def _chunk_pass(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    terms: _ChunkTerms,
    chunks: list[Rows],
    needs: tuple[bool, bool, bool],
) -> tuple[list[Tensor], list[list[Tensor | None]]]:
    """Every term summed over the chunks, and (if `needs` says so) its gradients w.r.t. hidden, weight, bias.

    hidden: (N, H); weight: (V, H); bias: (V,). Returns the sums [divergence(, nll)] and, per term,
    [grad_hidden (N, H) in hidden's dtype, grad_weight (V, H) and grad_bias (V,) in float32 or wider].
    """
    need_h, need_w, need_b = needs
    dtype = hidden.dtype
    w = weight.to(dtype)  # a copy only if the dtypes differ
    b = None if bias is None else bias.to(dtype)
    acc = compute_dtype(weight)
    grads: list[list[Tensor | None]] = [
        [
            torch.zeros_like(hidden) if need_h else None,
            torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None,
            torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None,
        ]
        for _ in range(terms.count)
    ]
    sums: list[Tensor | None] = [None] * terms.count
    for rows in chunks:
        h = hidden[rows]  # (c, H)
        logits = F.linear(h, w, b)  # (c, V) in the input dtype
        for term in range(terms.count):
            if not any(needs):
                value = terms.value(term, logits, rows)
            else:
                with torch.enable_grad():
                    z = logits.detach().requires_grad_()
                    value = terms.value(term, z, rows)
                    (g,) = torch.autograd.grad(value, z)  # (c, V), logits' dtype
                grad_h, grad_w, grad_b = grads[term]
                if grad_h is not None:
                    grad_h[rows] = g @ w  # (c, V) @ (V, H) -> (c, H)
                if grad_w is not None:
                    _accumulate(grad_w, g.t(), h)  # (V, c) @ (c, H) -> (V, H)
                if grad_b is not None:
                    grad_b.add_(g.sum(dim=0, dtype=acc))
                del z, g  # free this chunk's (c, V) tensors before the next
            value = value.detach()
            sums[term] = value if sums[term] is None else sums[term] + value
        del logits
    return sums, grads


class _ChunkedHeadLoss(torch.autograd.Function):
    """(hidden, weight, bias) -> (divergence sum, nll sum), gradients computed in forward (see module doc)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, terms, chunks):
        sums, grads = _chunk_pass(hidden, weight, bias, terms, chunks, ctx.needs_input_grad[:3])
        ctx.set_materialize_grads(False)
        ctx.count = terms.count
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        # save_for_backward (not ctx attributes): released after backward unless retain_graph
        ctx.save_for_backward(*(g for per_term in grads for g in per_term))
        if terms.count == 1:
            nll = torch.zeros((), dtype=sums[0].dtype, device=sums[0].device)
            ctx.mark_non_differentiable(nll)
            return sums[0], nll
        return sums[0], sums[1]

    @staticmethod
    def backward(ctx, grad_div, grad_nll):
        saved = ctx.saved_tensors
        per_term = [saved[3 * t : 3 * t + 3] for t in range(ctx.count)]
        outer = [grad_div, grad_nll][: ctx.count]

        def combine(i: int) -> Tensor | None:
            out = None
            for grads, g in zip(per_term, outer, strict=True):
                if grads[i] is None or g is None:
                    continue
                out = grads[i] * g if out is None else out.add_(grads[i] * g)
            return out

        grad_h, grad_w, grad_b = combine(0), combine(1), combine(2)
        weight_dtype, bias_dtype = ctx.dtypes
        if grad_w is not None:
            grad_w = grad_w.to(weight_dtype)
        if grad_b is not None:
            grad_b = grad_b.to(bias_dtype)
        return grad_h, grad_w, grad_b, None, None


def _check_inputs(
    student_hidden: Tensor,
    student_head: Tensor,
    student_head_bias: Tensor | None,
    teacher_hidden: Tensor | None,
    teacher_head: Tensor | None,
    teacher_head_bias: Tensor | None,
    teacher_ids: Tensor | None,
    teacher_logprobs: Tensor | None,
    labels: Tensor | None,
    mask: Tensor | None,
    chunk_size: int,
) -> None:
    if student_hidden.ndim < 2:
        raise ValueError(f"student_hidden must be (..., H), got {tuple(student_hidden.shape)}")
    lead, hid = student_hidden.shape[:-1], student_hidden.shape[-1]
    if student_head.ndim != 2 or student_head.shape[1] != hid:
        raise ValueError(
            f"student_head must be (V, {hid}) for student_hidden (..., {hid}), got {tuple(student_head.shape)}"
        )
    vocab = student_head.shape[0]
    if student_head_bias is not None and student_head_bias.shape != (vocab,):
        raise ValueError(f"student_head_bias must be ({vocab},), got {tuple(student_head_bias.shape)}")
    dense = teacher_hidden is not None or teacher_head is not None
    sparse = teacher_ids is not None or teacher_logprobs is not None
    if dense == sparse:
        raise ValueError(
            "give exactly one teacher: teacher_hidden + teacher_head (dense) or teacher_ids + teacher_logprobs (sparse)"
        )
    if dense:
        if teacher_hidden is None or teacher_head is None:
            raise ValueError("a dense teacher needs both teacher_hidden and teacher_head")
        if teacher_hidden.shape[:-1] != lead:
            raise ValueError(
                f"teacher_hidden {tuple(teacher_hidden.shape)} does not match student_hidden "
                f"{tuple(student_hidden.shape)}: expected leading shape {tuple(lead)}"
            )
        t_hid = teacher_hidden.shape[-1]
        if teacher_head.shape != (vocab, t_hid):
            raise ValueError(
                f"teacher_head must be ({vocab}, {t_hid}) (the student's vocabulary, the teacher's hidden size), "
                f"got {tuple(teacher_head.shape)}"
            )
        if teacher_head_bias is not None and teacher_head_bias.shape != (vocab,):
            raise ValueError(f"teacher_head_bias must be ({vocab},), got {tuple(teacher_head_bias.shape)}")
    else:
        if teacher_ids is None or teacher_logprobs is None:
            raise ValueError("a sparse teacher needs both teacher_ids and teacher_logprobs")
        if teacher_head_bias is not None:
            raise ValueError("teacher_head_bias only applies to a dense teacher")
        if teacher_ids.shape[:-1] != lead or teacher_logprobs.shape[:-1] != lead:
            raise ValueError(
                f"teacher_ids {tuple(teacher_ids.shape)} / teacher_logprobs {tuple(teacher_logprobs.shape)} do not "
                f"match student_hidden {tuple(student_hidden.shape)}: expected (..., k) with leading shape {tuple(lead)}"
            )
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
        if mask.shape != lead:
            raise ValueError(
                f"mask {tuple(mask.shape)} does not match the leading shape {tuple(lead)} of student_hidden"
            )
    if labels is not None:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        if labels.shape != lead:
            raise ValueError(
                f"labels {tuple(labels.shape)} does not match the leading shape {tuple(lead)} of student_hidden"
            )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def chunked_distill_loss(
    student_hidden: Tensor,
    student_head: Tensor,
    *,
    student_head_bias: Tensor | None = None,
    teacher_hidden: Tensor | None = None,
    teacher_head: Tensor | None = None,
    teacher_head_bias: Tensor | None = None,
    teacher_ids: Tensor | None = None,
    teacher_logprobs: Tensor | None = None,
    divergence: str = "forward_kl",
    divergence_kwargs: Mapping[str, Any] | None = None,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    num_tokens: int | Tensor | None = None,
    chunk_size: int = 1024,
) -> ChunkedLoss:
    """A token divergence (and the student's CE) from hidden states and head weights, chunk by chunk.

        divergence = (1 / D) * sum_{t : mask_t} div(student_logits_t, teacher_t)
        nll_sum    = sum_{t : labels_t != -100} -log softmax(student_logits_t)[labels_t]

    with student_logits = student_hidden @ student_head^T (+ bias), never formed for more than `chunk_size`
    tokens at once; see the module docstring for shapes, dtypes and the memory design.

    divergence: a name of TOKEN_DIVERGENCES (dense teacher: teacher_hidden + teacher_head, teacher logits
    formed per chunk the same way) or SPARSE_TOKEN_DIVERGENCES (top-k teacher: teacher_ids +
    teacher_logprobs); divergence_kwargs: its own parameters (e.g. {"beta": 0.5}).
    temperature, scale_by_t2: as in the token functions (the CE term always uses T = 1).
    Reduction units: the divergence per token is summed over the vocabulary (or the k + 1 buckets), summed
    over unmasked tokens and divided by D = num_tokens if given, else the number of unmasked tokens, clamped
    at >= 1 (all masked gives exactly 0 with zero gradients): exactly the token functions' "mean".
    nll_sum is a sum over labelled tokens, not a mean. chunk_size: tokens per chunk (the peak memory of
    this loss is a few (chunk_size, V) float32 tensors plus the head gradients).
    """
    _check_options(temperature, "mean", num_tokens)
    _check_inputs(
        student_hidden,
        student_head,
        student_head_bias,
        teacher_hidden,
        teacher_head,
        teacher_head_bias,
        teacher_ids,
        teacher_logprobs,
        labels,
        mask,
        chunk_size,
    )
    dense = teacher_hidden is not None
    registry = TOKEN_DIVERGENCES if dense else SPARSE_TOKEN_DIVERGENCES
    fn = registry.get(divergence)
    kwargs = dict(divergence_kwargs or {})
    clash = sorted(set(kwargs) & set(_RESERVED))
    if clash:
        raise ValueError(f"divergence_kwargs cannot set {clash}: they are arguments of chunked_distill_loss")

    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])  # (..., H) -> (N, H)
    n = hidden.shape[0]
    flat_mask = None if mask is None else mask.reshape(-1)  # (N,)
    flat_labels = None if labels is None else labels.reshape(-1)  # (N,)
    # rows that need logits at all; without labels those are exactly the unmasked ones (chunk mask not needed)
    if flat_labels is None:
        keep = flat_mask
    elif flat_mask is None:
        keep = None
    else:
        keep = flat_mask | (flat_labels != IGNORE_INDEX)
    if dense:
        t_hidden = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])  # (N, H_t)
        t_head = teacher_head.detach().to(t_hidden.dtype)
        t_bias = None if teacher_head_bias is None else teacher_head_bias.detach().to(t_hidden.dtype)
        t_ids = t_logprobs = None
    else:
        t_hidden = t_head = t_bias = None
        t_ids = teacher_ids.reshape(-1, teacher_ids.shape[-1])  # (N, k)
        t_logprobs = teacher_logprobs.detach().reshape(-1, teacher_logprobs.shape[-1])  # (N, k)
    terms = _ChunkTerms(
        divergence=fn,
        kwargs=kwargs,
        temperature=temperature,
        scale_by_t2=scale_by_t2,
        mask=None if flat_labels is None else flat_mask,
        labels=flat_labels,
        teacher_hidden=t_hidden,
        teacher_head=t_head,
        teacher_bias=t_bias,
        teacher_ids=t_ids,
        teacher_logprobs=t_logprobs,
    )
    chunks = _chunks(n, keep, chunk_size)

    inputs = (student_hidden, student_head, student_head_bias)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs):
        div_sum, nll_sum = _ChunkedHeadLoss.apply(hidden, student_head, student_head_bias, terms, chunks)
    else:
        sums, _ = _chunk_pass(hidden, student_head, student_head_bias, terms, chunks, (False, False, False))
        div_sum, nll_sum = sums[0], (sums[1] if terms.count == 2 else None)

    device = div_sum.device
    tokens = torch.tensor(n, device=device) if flat_mask is None else flat_mask.sum()
    denominator = tokens if num_tokens is None else torch.as_tensor(num_tokens, device=device)
    return ChunkedLoss(
        divergence=div_sum / denominator.to(div_sum.dtype).clamp_min(1),
        nll_sum=None if flat_labels is None else nll_sum,
        tokens=tokens,
        label_tokens=None if flat_labels is None else (flat_labels != IGNORE_INDEX).sum(),
    )
