"""Token-level distillation straight from the last hidden states, a chunk of tokens at a time.

A language model's loss normally starts from logits = hidden @ W^T, (N, V) for N tokens: at N = 4096 and
a 152k vocabulary that is 2.5 GB per float32 copy, and a divergence with its backward keeps several copies
alive. `chunked_distill_loss` takes the hidden states and the head weights instead and computes

    divergence = (1 / D) * sum_{t unmasked} div(softmax(z_s,t / T), softmax(z_t,t / T))
    nll_sum    = sum_{t : labels_t != -100} -log softmax(z_s,t)[labels_t]          (T = 1, only with labels)
    z_s,t = h_s,t @ W_s^T + b_s,   z_t,t = h_t,t @ W_t^T + b_t   (or a sparse top-k teacher)

chunk_size tokens at a time, where div is any registered divergence (`kdistill.losses.divergence`): its
dense form (dense teacher) or its sparse form (top-k teacher), applied with reduction="sum" to each chunk,
and D is the number of unmasked tokens (or `num_tokens`), clamped at >= 1. The value and the gradients with respect to
the student's hidden states, head weight and bias equal those of the plain computation (full logits ->
the same divergence function with reduction="mean") up to float rounding.

Design: the gradients are computed in the forward pass (as Liger-Kernel's fused linear losses do). For
each chunk the forward computes the chunk's logits, the divergence (and CE) on them and their gradient g
with respect to those logits, and folds it into the gradients of the inputs right away: grad_h[chunk] =
g @ W and grad_W += g^T @ h (an in-place addmm into one float32 buffer). Nothing of size (chunk, V)
outlives its chunk; what the autograd graph keeps for backward is grad_h (N, H), grad_W (V, H) and grad_b
(V,), and the backward only multiplies them by the incoming gradient. The alternative,
`torch.utils.checkpoint` around each chunk, keeps nothing in the forward but recomputes every chunk's
student and teacher logits and divergence in the backward (two more (c, H) x (H, V) matmuls per chunk),
and there autograd hands each chunk's head gradient over as a fresh (V, H) tensor before adding it into
the accumulated one. benchmarks/loss_memory.py measures both (its "checkpoint" variant; numbers in
benchmarks/README.md): at 4096 tokens the checkpointed loss peaked 90-130 MiB higher and was slower in 3
of 4 settings (about 3x at vocabulary 152k on CPU).

How g is formed. The elementwise passes over the (c, V) logits cost as much as the head matmuls on CPU,
so the common cases avoid autograd through the vocabulary and work in place on the chunk's own buffer. The
path is chosen from the divergence's record (`Divergence`):
  * sparse teacher (every divergence): the divergence depends on the logits only through the student's
    k + 1 bucket log-probabilities, so autograd runs on the record's per-token function of those (c, k + 1)
    tensors and the softmax's chain rule is applied by hand: one exp, one sum and one row scaling over the
    buffer, the top-k entries by (c, k) scatters (`_sparse_chunk`);
  * dense teacher, `in_place_forward_kl` (forward_kl, the default): the closed form (p_s - p_t) / T, in
    place (`_dense_forward_kl_chunk`);
  * dense teacher, a record with a `closed_form`: its w = dDiv/dlog p_s (derivations in `losses/token.py`)
    and the softmax chain rule dz = (w - p_s sum w) / T (`_dense_closed_form_chunk`);
  * CE: softmax - onehot, sharing the divergence's softmax at T = 1;
  * a record without a closed form: its dense form and `torch.autograd.grad` on the chunk's logits.
About 1-3 (c, V) float32 buffers are alive at a time for forward KL and sparse teachers, a few more for the
other dense closed forms (the autograd path: about 7, as the plain full-logits path), so chunk_size 1024 of
4096 tokens measured 13% of the plain peak for forward KL, 512 measured 8%.
With labels, `kd_weight` and `ce_weight` fuse the two terms: one gradient of kd_weight * divergence +
ce_weight * nll_sum per chunk, so one set of buffers and one pair of head matmuls; backward then accepts
only gradients of that sum (times any factor; anything else raises). Without them the divergence and the
CE keep separate gradients (two (V, H) buffers, two pairs of matmuls) and any combination works.
The costs of this design:
  * with grad enabled, the gradient work is done in the forward even if backward is never called (under
    torch.no_grad(), or when no student input requires grad, it is skipped and only the value computed);
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

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.divergence import DIVERGENCES, ClosedForm, Divergence, PerToken, check_temperature
from kdistill.losses.masking import check_reduction
from kdistill.losses.numerics import compute_dtype
from kdistill.losses.topk import (
    condition_on_top_k,
    over_full_rows,
    present_entries,
    scatter_ids,
    teacher_bucket_log_probs,
)

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
class _Weights:
    """The factors the chunk gradients are formed with (gradients are only computed when these are given).

    div: 0-dim, the divergence sum's factor (1 / D, times kd_weight when fused); nll: the CE sum's factor
    (ce_weight when fused, else 1). fused: one gradient of div * divergence_sum + nll * nll_sum per chunk,
    instead of one per term.
    """

    div: Tensor
    nll: float
    fused: bool


@dataclass(frozen=True)
class _ChunkTerms:
    """The loss terms of one chunk of student logits. Tensors are flat over tokens, (N, ...), and detached."""

    divergence: Callable[..., Tensor]  # the record's dense or sparse form (autograd path and values)
    kwargs: Mapping[str, Any]
    per_token: PerToken | None  # sparse fast path: the divergence per token over the k + 1 buckets
    dense_forward_kl: bool  # dense fast path: forward KL in closed form, in place
    dense_form: ClosedForm | None  # other dense divergences: per-token value and dDiv/dlog p_s
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

    def teacher_logits(self, rows: Rows) -> Tensor:
        with torch.no_grad():
            # (c, H_t) @ (H_t, V) -> (c, V)
            return F.linear(self.teacher_hidden[rows], self.teacher_head, self.teacher_bias)

    def value(self, term: int, logits: Tensor, rows: Rows) -> Tensor:
        """Term 0: the divergence summed over the chunk; term 1: the CE summed over it. logits: (c, V)."""
        if term == 1:
            z = logits.to(compute_dtype(logits))
            return F.cross_entropy(z, self.labels[rows], ignore_index=IGNORE_INDEX, reduction="sum")
        if self.teacher_head is not None:
            teacher = (self.teacher_logits(rows),)
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

    def chunk(
        self, logits: Tensor, rows: Rows, weights: _Weights | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The chunk's sums [divergence(, nll)] and gradients w.r.t. its logits, each (c, V): none without
        weights, [weighted sum] when fused, else [divergence * weights.div(, nll)]. `logits` is this chunk's
        own buffer: the fast paths overwrite it (it becomes a gradient)."""
        mask = None if self.mask is None else self.mask[rows]
        labels = None if self.labels is None else self.labels[rows]
        if self.per_token is not None:
            return _sparse_chunk(
                logits, self.teacher_ids[rows], self.teacher_logprobs[rows], mask, labels, self, weights
            )
        if self.dense_forward_kl:
            return _dense_forward_kl_chunk(logits, self.teacher_logits(rows), mask, labels, self, weights)
        if self.dense_form is not None:
            return _dense_closed_form_chunk(logits, self.teacher_logits(rows), mask, labels, self, weights)
        return self._autograd_chunk(logits, rows, weights)

    def _autograd_chunk(
        self, logits: Tensor, rows: Rows, weights: _Weights | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Any divergence: the token function's value, and its gradient by autograd on the chunk's logits."""
        if weights is None:
            return [self.value(term, logits, rows) for term in range(self.count)], []
        values, grads = [], []
        for term in range(self.count):  # one term's graph at a time: fewer (c, V) tensors alive
            with torch.enable_grad():
                z = logits.detach().requires_grad_()
                value = self.value(term, z, rows)
                factor = weights.div if term == 0 else weights.nll
                (g,) = torch.autograd.grad(value * factor, z)  # (c, V), logits' dtype
            values.append(value.detach())
            if weights.fused and grads:
                grads[0].add_(g)
            else:
                grads.append(g)
            del z, g
        return values, grads


def _sparse_chunk(
    logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    mask: Tensor | None,
    labels: Tensor | None,
    terms: _ChunkTerms,
    weights: _Weights | None,
) -> tuple[list[Tensor], list[Tensor]]:
    """A sparse divergence (and the CE) of one chunk with its gradient w.r.t. the logits, in a few in-place
    passes over the (c, V) buffer instead of autograd through the vocabulary.

    The divergence depends on the logits only through the student's k + 1 bucket log-probabilities
    log q_j, so autograd runs on those (c, k + 1) tensors; with p = softmax(z / T) over the vocabulary,
    d log q_j / d z_v = (1[v in bucket j] * p_v / q_j - p_v) / T, so with g = dDiv / d log q
        dz_i = (g_i - p_i * sum_j g_j) / T                             at a top-k id i
        dz_v = e_v * (g_tail / S_tail - sum_j g_j / Z) / T             on the tail
    where e = exp((z - m) / T) with m the row's largest *tail* logit, S_tail = sum of e over the tail (>= 1:
    it never underflows, however small the tail's probability) and Z = S_tail + sum_i exp((z_i - m) / T),
    formed in log space over the k + 1 buckets. The top-k entries of the buffer are set to -inf first (a
    (c, k) scatter), so one exp and one sum give the tail. CE (T = 1): dz = softmax(z) - onehot(label).
    """
    T = terms.temperature
    dtype = compute_dtype(logits, teacher_logprobs)
    z = logits.to(dtype)  # (c, V): this chunk's buffer (a copy only for low-precision logits)
    vocab, k = z.shape[1], teacher_ids.shape[1]
    zero = torch.zeros((), dtype=dtype, device=z.device)
    neg_inf = torch.full((), -math.inf, dtype=dtype, device=z.device)
    present = present_entries(teacher_ids, mask)  # (c, k)
    ids, any_present = scatter_ids(teacher_ids, present)  # (c, k), (c, 1)
    log_p_t = teacher_bucket_log_probs(teacher_logprobs, present, vocab, T, dtype)  # (c, k + 1)
    over_full = over_full_rows(teacher_logprobs, present, vocab, dtype)  # (c,): compare the conditionals
    log_p_t = condition_on_top_k(log_p_t, over_full)
    z_top = z.gather(1, ids)  # (c, k)
    labelled = lab_ids = e1 = None
    if labels is not None:
        labelled = labels != IGNORE_INDEX  # (c,)
        lab_ids = labels.clamp_min(0).unsqueeze(1)  # (c, 1)
        z_lab = z.gather(1, lab_ids).squeeze(1)  # (c,)
        if T != 1.0 or (weights is not None and not weights.fused):
            e1 = z.clone()  # the CE's own buffer (exp(z - max) at T = 1, below)

    # the tail: the top-k entries set to -inf (rows without a teacher entry keep everything in the tail)
    z.scatter_(1, ids, torch.where(any_present, neg_inf, z_top))
    tail_max = z.amax(dim=1, keepdim=True)  # (c, 1); -inf for an empty tail
    m = torch.where(tail_max == -math.inf, zero, tail_max)
    e = z.sub_(m)
    if T != 1.0:
        e.div_(T)
    e.exp_()  # (c, V) exp((z - m) / T) on the tail, 0 at the top-k ids
    s_tail = e.sum(dim=1, keepdim=True)  # (c, 1) >= 1 unless the tail is empty
    bucket_logits = torch.cat([torch.where(present, (z_top - m) / T, neg_inf), s_tail.log()], dim=1)
    log_z = torch.logsumexp(bucket_logits, dim=1, keepdim=True)  # (c, 1)
    log_q = bucket_logits - log_z  # (c, k + 1)
    if mask is not None:  # masked rows: everything in the tail, no garbage
        log_q[:, k:] = torch.where(mask.unsqueeze(1), log_q[:, k:], zero)

    with torch.enable_grad():
        lq = log_q.requires_grad_(weights is not None)
        per_token = terms.per_token(condition_on_top_k(lq, over_full), log_p_t)  # (c,)
        if terms.scale_by_t2:
            per_token = per_token * T**2
        if mask is not None:
            per_token = torch.where(mask, per_token, zero)
        div_sum = per_token.sum()
        g = torch.autograd.grad(div_sum, lq)[0] if weights is not None else None
    values = [div_sum.detach()]
    if e1 is not None:
        m1 = torch.maximum(tail_max, z_top.amax(dim=1, keepdim=True))  # the row's max
        e1.sub_(m1).exp_()
        s1 = e1.sum(dim=1, keepdim=True)
        lse = (m1 + s1.log()).squeeze(1)
    elif labels is not None:  # T = 1: the buckets' normaliser is the CE's
        lse = (m + log_z).squeeze(1)
    if labels is not None:
        values.append(torch.where(labelled, lse - z_lab, zero).sum())
    if weights is None:
        return values, []

    # the divergence's gradient (times weights.div): the tail by one in-place row scaling, the top-k by a scatter
    sum_g = g.sum(dim=1, keepdim=True)  # (c, 1)
    inv_z = (-log_z).exp()  # (c, 1) 1 / Z
    g_tail = torch.where(s_tail > 0, g[:, k:] / s_tail, zero)  # an empty tail has no entry to scale
    tail_coef = weights.div * (g_tail - sum_g * inv_z) / T  # (c, 1)
    p_top = log_q[:, :k].exp()  # (c, k) softmax at the top-k ids, 0 where absent
    top = weights.div * (g[:, :k] - sum_g * p_top) / T  # (c, k)
    ce = None if labelled is None else weights.nll * labelled.to(dtype).unsqueeze(1)  # (c, 1)
    if ce is not None and e1 is None:  # fused at T = 1: the CE's softmax is e / Z as well
        tail_coef = tail_coef + ce * inv_z
        top = top + ce * p_top
    e.mul_(tail_coef)
    e.scatter_add_(1, ids, torch.where(present, top, zero))  # the top-k entries of e are 0 here
    if ce is None:
        return values, [e]
    if e1 is None:
        e.scatter_add_(1, lab_ids, -ce)
        return values, [e]
    e1.mul_(ce / s1)  # softmax(z) - onehot(label), times the CE's factor
    e1.scatter_add_(1, lab_ids, -ce)
    if weights.fused:
        return values, [e.add_(e1)]
    _zero_masked_rows(e, mask)
    return values, [e, e1]


def _zero_masked_rows(grad: Tensor, mask: Tensor | None) -> None:
    """Rows of a divergence gradient that the mask drops are 0 even when their logits are NaN/inf garbage
    (0 * NaN is NaN); only those rows are written."""
    if mask is not None:
        rows = (~mask).nonzero().squeeze(1)
        if rows.numel():
            grad.index_fill_(0, rows, 0.0)


def _dense_forward_kl_chunk(
    logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None,
    labels: Tensor | None,
    terms: _ChunkTerms,
    weights: _Weights | None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Forward KL (and the CE) of one chunk against a dense teacher, with the closed-form gradient
    dKL / dz = (p_s - p_t) / T, in place on the chunk's two (c, V) buffers plus one for exp of the teacher:

        KL = sum_v p_t,v (b_v - a_v) - log S_t + log S_s,   a = (z_s - max) / T, b = (z_t - max) / T,
        S_s = sum exp(a), S_t = sum exp(b), p_t = exp(b) / S_t

    with 0 * log 0 = 0 (a -inf teacher logit contributes nothing). Masked rows' teacher logits are zeroed
    first, as the token functions do.
    """
    T = terms.temperature
    dtype = compute_dtype(logits, teacher_logits)
    z, t = logits.to(dtype), teacher_logits.to(dtype)  # (c, V) each, buffers of this chunk
    zero = torch.zeros((), dtype=dtype, device=z.device)
    _zero_masked_rows(t, mask)
    labelled = lab_ids = e1 = None
    m = z.amax(dim=1, keepdim=True)  # (c, 1)
    if labels is not None:
        labelled = labels != IGNORE_INDEX
        lab_ids = labels.clamp_min(0).unsqueeze(1)
        z_lab = z.gather(1, lab_ids).squeeze(1)
        if T != 1.0 or (weights is not None and not weights.fused):
            e1 = torch.sub(z, m).exp_()  # exp(z - max) at T = 1 for the CE (its own gradient buffer)
    a = z.sub_(m)
    b = t.sub_(t.amax(dim=1, keepdim=True))
    if T != 1.0:
        a.div_(T)
        b.div_(T)
    e_t = torch.exp(b)  # (c, V)
    s_t = e_t.sum(dim=1)
    # sum_v exp(b_v) (b_v - a_v); NaN only from 0 * inf or -inf - -inf, which are 0 * log 0 terms
    cross = b.sub_(a).mul_(e_t).nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf).sum(dim=1)
    del b, t
    e_s = a.exp_()  # (c, V) exp(a), in place
    s_s = e_s.sum(dim=1)
    per_token = cross / s_t - s_t.log() + s_s.log()  # (c,)
    if terms.scale_by_t2:
        per_token = per_token * T**2
    if mask is not None:
        per_token = torch.where(mask, per_token, zero)
    values = [per_token.sum()]
    if labels is not None:
        lse = m.squeeze(1) + (s_s if e1 is None else e1.sum(dim=1)).log()
        values.append(torch.where(labelled, lse - z_lab, zero).sum())
    if weights is None:
        return values, []

    kd = weights.div * (T if terms.scale_by_t2 else 1.0 / T)  # d(sum of T^2 KL)/dz = T (p_s - p_t)
    kd = kd.expand(z.shape[0], 1) if mask is None else kd * mask.to(dtype).unsqueeze(1)  # (c, 1)
    s_s, s_t = s_s.unsqueeze(1), s_t.unsqueeze(1)
    ce = None if labelled is None else weights.nll * labelled.to(dtype).unsqueeze(1)  # (c, 1)
    coef_s = kd / s_s
    if ce is not None and e1 is None:  # fused at T = 1: the CE's softmax is p_s as well
        coef_s = coef_s + ce / s_s
    grad = e_s.mul_(coef_s).addcmul_(e_t, -kd / s_t)
    del e_t
    if ce is None:
        return values, [grad]
    if e1 is None:
        return values, [grad.scatter_add_(1, lab_ids, -ce)]
    e1.mul_(ce / e1.sum(dim=1, keepdim=True))
    e1.scatter_add_(1, lab_ids, -ce)
    if weights.fused:
        return values, [grad.add_(e1)]
    _zero_masked_rows(grad, mask)
    return values, [grad, e1]


@dataclass(frozen=True)
class _LabelTerms:
    """The CE of one chunk alone (no teacher): what `chunked_cross_entropy` sums. Chunks hold only rows
    with a label, so every row counts."""

    labels: Tensor  # (N,) int

    count = 1

    def chunk(
        self, logits: Tensor, rows: Rows, weights: _Weights | None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """[nll summed over the chunk], and [weights.div * (softmax(z) - onehot(label))], formed in place in
        the chunk's own (c, V) buffer."""
        labels = self.labels[rows].unsqueeze(1)  # (c, 1)
        z = logits.to(compute_dtype(logits))  # (c, V)
        z_label = z.gather(1, labels).squeeze(1)  # (c,)
        m = z.amax(dim=1, keepdim=True)  # (c, 1)
        e = z.sub_(m).exp_()  # exp(z - max), in place
        total = e.sum(dim=1, keepdim=True)  # (c, 1)
        values = [(m + total.log()).squeeze(1).sub_(z_label).sum()]
        if weights is None:
            return values, []
        factor = weights.div.to(e.dtype)
        grad = e.mul_(factor / total)
        return values, [grad.scatter_add_(1, labels, (-factor).expand(labels.shape).contiguous())]


def _log_softmax_(x: Tensor) -> Tensor:
    """log_softmax over dim 1, in place: x - logsumexp(x) (one (c, V) temporary inside logsumexp)."""
    return x.sub_(torch.logsumexp(x, dim=1, keepdim=True))


def _dense_closed_form_chunk(
    logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None,
    labels: Tensor | None,
    terms: _ChunkTerms,
    weights: _Weights | None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Any dense divergence (and the CE) of one chunk with its gradient from the closed form of
    its record's `closed_form`: w = dDiv/dlog p_s, then dDiv/dz = (w - p_s sum_v w_v) / T.

    The log-softmaxes overwrite the chunk's own logits buffers; with w (or log M) and at most two more
    temporaries, about five (c, V) buffers at a time, no autograd graph. Masked rows' teacher logits are
    zeroed first, as the token functions do.
    """
    T = terms.temperature
    dtype = compute_dtype(logits, teacher_logits)
    z, t = logits.to(dtype), teacher_logits.to(dtype)  # (c, V) each
    zero = torch.zeros((), dtype=dtype, device=z.device)
    _zero_masked_rows(t, mask)
    log_p1 = None
    if labels is not None and T != 1.0:
        log_p1 = F.log_softmax(z, dim=1)  # the CE is at T = 1: before z becomes log p_s
    log_p_s = _log_softmax_(z.div_(T) if T != 1.0 else z)  # (c, V), in the chunk's own buffers
    log_p_t = _log_softmax_(t.div_(T) if T != 1.0 else t)
    per_token, w = terms.dense_form(log_p_s, log_p_t, weights is not None)  # (c,), (c, V) or None
    del log_p_t, t
    if terms.scale_by_t2:
        per_token = per_token * T**2
    if mask is not None:
        per_token = torch.where(mask, per_token, zero)
    values = [per_token.sum()]
    labelled = lab_ids = None
    if labels is not None:
        labelled = labels != IGNORE_INDEX
        lab_ids = labels.clamp_min(0).unsqueeze(1)  # (c, 1)
        log_p1 = log_p_s if log_p1 is None else log_p1
        nll = -log_p1.gather(1, lab_ids).squeeze(1)
        values.append(torch.where(labelled, nll, zero).sum())
    if weights is None:
        return values, []

    p_s = log_p_s.exp_()  # in place: log_p_s is not needed any more
    kd = weights.div * (T if terms.scale_by_t2 else 1.0 / T)  # d(T^2 Div)/dz = T (w - p_s sum w)
    kd = kd.expand(z.shape[0], 1) if mask is None else kd * mask.to(dtype).unsqueeze(1)  # (c, 1)
    grad = w.addcmul_(p_s, w.sum(dim=1, keepdim=True), value=-1.0).mul_(kd)
    _zero_masked_rows(grad, mask)
    if labelled is None:
        return values, [grad]
    ce = weights.nll * labelled.to(dtype).unsqueeze(1)  # (c, 1)
    p1 = p_s if T == 1.0 else log_p1.exp_()
    if weights.fused:
        return values, [grad.addcmul_(p1, ce).scatter_add_(1, lab_ids, -ce)]
    return values, [grad, (p1 * ce).scatter_add_(1, lab_ids, -ce)]


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
    terms: _ChunkTerms | _LabelTerms,
    chunks: list[Rows],
    weights: _Weights | None,
    needs: tuple[bool, bool, bool],
) -> tuple[list[Tensor], list[list[Tensor | None]]]:
    """Every term summed over the chunks, and (with `weights`) the gradients w.r.t. hidden, weight, bias.

    hidden: (N, H); weight: (V, H); bias: (V,). Returns the sums [divergence(, nll)] and, per gradient set
    (one when fused or without labels, else one per term), [grad_hidden (N, H) in hidden's dtype,
    grad_weight (V, H) and grad_bias (V,) in float32 or wider].
    """
    device_type = hidden.device.type
    dtype = hidden.dtype
    if torch.is_autocast_enabled(device_type) and dtype == torch.float32:
        # mixed precision: the head matmuls run in autocast's dtype, as the model's own head would. Autocast
        # is switched off below, so that every product here has the dtype chosen explicitly.
        dtype = torch.get_autocast_dtype(device_type)
    with torch.autocast(device_type, enabled=False):
        return _chunk_loop(hidden, weight, bias, terms, chunks, weights, needs, dtype)


def _chunk_loop(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    terms: _ChunkTerms | _LabelTerms,
    chunks: list[Rows],
    weights: _Weights | None,
    needs: tuple[bool, bool, bool],
    dtype: torch.dtype,
) -> tuple[list[Tensor], list[list[Tensor | None]]]:
    """`_chunk_pass` with the matmul dtype decided: logits and their gradients' products in `dtype`."""
    need_h, need_w, need_b = needs
    w = weight.to(dtype)  # a copy only if the dtypes differ
    b = None if bias is None else bias.to(dtype)
    acc = compute_dtype(weight)
    sets = 0 if weights is None else (1 if weights.fused else terms.count)
    grads: list[list[Tensor | None]] = [
        [
            torch.zeros_like(hidden) if need_h else None,
            torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None,
            torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None,
        ]
        for _ in range(sets)
    ]
    sums: list[Tensor | None] = [None] * terms.count
    for rows in chunks:
        h = hidden[rows].to(dtype)  # (c, H)
        logits = F.linear(h, w, b)  # (c, V) in the matmul dtype
        values, chunk_grads = terms.chunk(logits, rows, weights)
        del logits
        for (grad_h, grad_w, grad_b), g in zip(grads, chunk_grads, strict=True):
            if grad_b is not None:
                grad_b.add_(g.sum(dim=0, dtype=acc))
            g = g.to(dtype)  # (c, V) in the matmul dtype (a copy only for low-precision logits)
            if grad_h is not None:
                grad_h[rows] = (g @ w).to(grad_h.dtype)  # (c, V) @ (V, H) -> (c, H)
            if grad_w is not None:
                _accumulate(grad_w, g.t(), h)  # (V, c) @ (c, H) -> (V, H)
        chunk_grads = g = None  # free this chunk's (c, V) tensors before the next
        for term, value in enumerate(values):
            sums[term] = value if sums[term] is None else sums[term] + value
    return sums, grads


class _ChunkedHeadLoss(torch.autograd.Function):
    """(hidden, weight, bias) -> (divergence, nll sum), gradients computed in forward (see module doc)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, terms, chunks, denominator, fused):
        inv = denominator.reciprocal()
        if fused is None:
            weights = _Weights(div=inv, nll=1.0, fused=False)
        else:
            weights = _Weights(div=inv * fused[0], nll=fused[1], fused=True)
        sums, grads = _chunk_pass(hidden, weight, bias, terms, chunks, weights, ctx.needs_input_grad[:3])
        ctx.set_materialize_grads(False)
        ctx.sets, ctx.fused = len(grads), fused
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        # save_for_backward (not ctx attributes): released after backward unless retain_graph
        ctx.save_for_backward(*(g for per_set in grads for g in per_set))
        divergence = sums[0] / denominator.to(sums[0].dtype)
        if terms.count == 1:
            nll = torch.zeros((), dtype=sums[0].dtype, device=sums[0].device)
            ctx.mark_non_differentiable(nll)
            return divergence, nll
        return divergence, sums[1]

    @staticmethod
    def backward(ctx, grad_div, grad_nll):
        saved = ctx.saved_tensors
        per_set = [saved[3 * s : 3 * s + 3] for s in range(ctx.sets)]
        if ctx.fused is None:
            outer = [grad_div, grad_nll][: ctx.sets]
        else:
            outer = [_fused_scale(grad_div, grad_nll, *ctx.fused)]

        def combine(i: int) -> Tensor | None:
            out = None
            for grads, g in zip(per_set, outer, strict=True):
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
        return grad_h, grad_w, grad_b, None, None, None, None


def _fused_scale(
    grad_div: Tensor | None, grad_nll: Tensor | None, kd_weight: float, ce_weight: float
) -> Tensor | None:
    """The factor c of a fused gradient: the incoming gradients must be c * (kd_weight, ce_weight).

    The fused pass stored one gradient of kd_weight * divergence + ce_weight * nll_sum; any other
    combination of the two outputs (say, backward through one of them alone) cannot be formed from it.
    """
    if grad_div is None and grad_nll is None:
        return None
    scale = torch.zeros_like(grad_nll) if grad_div is None else grad_div / kd_weight
    got = torch.zeros_like(scale) if grad_nll is None else grad_nll
    if not torch.isclose(got, scale * ce_weight, rtol=1e-4, atol=0.0).item():
        raise RuntimeError(
            "chunked_distill_loss(kd_weight=..., ce_weight=...) formed one gradient for kd_weight * "
            "divergence + ce_weight * nll_sum: backpropagate that sum (times any factor), or leave the weights "
            "out to get separate gradients"
        )
    return scale


def _check_student(
    student_hidden: Tensor,
    student_head: Tensor,
    student_head_bias: Tensor | None,
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
    _check_student(student_hidden, student_head, student_head_bias, labels, mask, chunk_size)
    lead, vocab = student_hidden.shape[:-1], student_head.shape[0]
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
    divergence: str | Divergence = "forward_kl",
    divergence_kwargs: Mapping[str, Any] | None = None,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    num_tokens: int | Tensor | None = None,
    chunk_size: int = 1024,
    kd_weight: float | None = None,
    ce_weight: float | None = None,
) -> ChunkedLoss:
    """A token divergence (and the student's CE) from hidden states and head weights, chunk by chunk.

        divergence = (1 / D) * sum_{t : mask_t} div(student_logits_t, teacher_t)
        nll_sum    = sum_{t : labels_t != -100} -log softmax(student_logits_t)[labels_t]

    with student_logits = student_hidden @ student_head^T (+ bias), never formed for more than `chunk_size`
    tokens at once; see the module docstring for shapes, dtypes and the memory design.

    divergence: a name of DIVERGENCES, or a `Divergence` record itself; with a dense teacher (teacher_hidden
    + teacher_head, teacher logits formed per chunk the same way) its dense form is computed, with a top-k
    teacher (teacher_ids + teacher_logprobs) its sparse form; divergence_kwargs: its own parameters (e.g.
    {"beta": 0.5}).
    temperature, scale_by_t2: as in the token functions (the CE term always uses T = 1).
    Reduction units: the divergence per token is summed over the vocabulary (or the k + 1 buckets), summed
    over unmasked tokens and divided by D = num_tokens if given, else the number of unmasked tokens, clamped
    at >= 1 (all masked gives exactly 0 with zero gradients): exactly the token functions' "mean".
    nll_sum is a sum over labelled tokens, not a mean. chunk_size: tokens per chunk (the peak memory of
    this loss is a few (chunk_size, V) float32 tensors plus the head gradients).
    kd_weight, ce_weight (both > 0, with labels): form one gradient of kd_weight * divergence + ce_weight *
    nll_sum per chunk instead of one per term (half the head matmuls); the returned terms are the same, but
    backward must then be of that weighted sum (times any factor). Without labels they change nothing.
    """
    check_temperature(temperature)
    check_reduction("mean", num_tokens)
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
    record = divergence if isinstance(divergence, Divergence) else DIVERGENCES.get(divergence)
    kwargs = dict(divergence_kwargs or {})
    clash = sorted(set(kwargs) & set(_RESERVED))
    if clash:
        raise ValueError(f"divergence_kwargs cannot set {clash}: they are arguments of chunked_distill_loss")
    if (kd_weight is None) != (ce_weight is None):
        raise ValueError("give kd_weight and ce_weight together (or neither)")
    if kd_weight is not None and not (kd_weight > 0 and ce_weight > 0):
        raise ValueError(f"kd_weight and ce_weight must be > 0 to fuse, got {kd_weight} and {ce_weight}")
    teacher_side = teacher_hidden if dense else teacher_logprobs
    loss_dtype = compute_dtype(student_hidden, teacher_side)  # the divergence's dtype (float32 or wider)

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
    per_token = record.bind(**kwargs)  # checks the divergence's own parameters, even if every token is masked
    terms = _ChunkTerms(
        divergence=record.dense if dense else record.sparse,
        kwargs=kwargs,
        per_token=None if dense else per_token,
        dense_forward_kl=dense and record.in_place_forward_kl,
        dense_form=record.closed_form(**kwargs) if dense and record.closed_form is not None else None,
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

    device = student_hidden.device
    tokens = torch.tensor(n, device=device) if flat_mask is None else flat_mask.sum()
    count = tokens if num_tokens is None else torch.as_tensor(num_tokens, device=device)
    denominator = count.to(loss_dtype).clamp_min(1)  # D, 0-dim
    inputs = (student_hidden, student_head, student_head_bias)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs):
        fused = None if flat_labels is None or kd_weight is None else (kd_weight, ce_weight)
        divergence, nll_sum = _ChunkedHeadLoss.apply(
            hidden, student_head, student_head_bias, terms, chunks, denominator, fused
        )
    else:
        sums, _ = _chunk_pass(hidden, student_head, student_head_bias, terms, chunks, None, (False,) * 3)
        divergence = sums[0] / denominator.to(sums[0].dtype)
        nll_sum = sums[1] if terms.count == 2 else None
    return ChunkedLoss(
        divergence=divergence,
        nll_sum=None if flat_labels is None else nll_sum,
        tokens=tokens,
        label_tokens=None if flat_labels is None else (flat_labels != IGNORE_INDEX).sum(),
    )


def chunked_cross_entropy(
    hidden: Tensor,
    head: Tensor,
    *,
    labels: Tensor,
    head_bias: Tensor | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """The language-model loss from hidden states and head weights, never forming more than `chunk_size`
    rows of logits: sum over tokens with labels != -100 of -log softmax(hidden @ head^T + bias)[label].

    A 0-dim sum (float32, or float64 for float64 inputs); divide by the label count for a mean. Shapes as
    in `chunked_distill_loss` (hidden (..., H) already shifted so position t predicts labels_t; head (V, H);
    labels the leading shape). Value and gradients equal F.cross_entropy(reduction="sum") on the full
    logits; the gradient, softmax - onehot, is formed in the forward chunk by chunk (one (c, V) buffer),
    so fine-tuning at a 150k vocabulary never holds the (tokens, V) logits or their gradient.
    """
    _check_student(hidden, head, head_bias, labels, None, chunk_size)
    flat = hidden.reshape(-1, hidden.shape[-1])  # (..., H) -> (N, H)
    flat_labels = labels.reshape(-1).to(hidden.device)  # (N,)
    chunks = _chunks(flat.shape[0], flat_labels != IGNORE_INDEX, chunk_size)
    terms = _LabelTerms(flat_labels)
    one = torch.ones((), dtype=compute_dtype(hidden), device=hidden.device)
    inputs = (hidden, head, head_bias)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs):
        # the head loss with one term whose factor is 1: its "divergence" output is the nll sum
        nll_sum, _ = _ChunkedHeadLoss.apply(flat, head, head_bias, terms, chunks, one, None)
        return nll_sum
    sums, _ = _chunk_pass(flat, head, head_bias, terms, chunks, None, (False,) * 3)
    return sums[0]
