"""Universal Logit Distillation: a vocabulary-free token loss for a teacher and a student with different
tokenizers (Boizard et al., "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss
for LLMs", TMLR 2025, arXiv:2402.12030).

The two vocabularies share no index, so the loss compares the *shapes* of the two next-token distributions:
sort each in decreasing order, zero-pad the shorter to the longer, and take the L1 distance,

    uld_t = sum_i | sort_desc(softmax(s_t / T_s))_i - sort_desc(softmax(t_t / T_t))_i |

per token t, then the masked token reduction of `losses.masking` (default: mean over unmasked tokens). Sorting
both sides minimises the L1 distance over one-to-one matchings, so ULD is at most the L1 distance (2 x total
variation) under any one-to-one matching of the two vocabularies; it is 0 when the two distributions are
permutations of each other, and at most 2. Sorting is piecewise a permutation, so the
gradient flows to the student's softmax through the sorted order (ties have measure zero).

`uld_topk` is the same comparison against a cached teacher known only on its top-k (log-probabilities at
T = 1): both sides coarsened to their k largest entries, sorted, plus one tail bucket for the rest.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.divergence import check_temperature
from kdistill.losses.masking import Reduction, check_mask, check_reduction, reduce_tokens
from kdistill.losses.numerics import compute_dtype, log_softmax_rows, safe_logsumexp
from kdistill.losses.topk import teacher_bucket_log_probs


def sorted_probs(logits: Tensor, temperature: float, width: int) -> Tensor:
    """(..., V) logits -> (..., width) probabilities of softmax(logits / T) in decreasing order, zero-padded."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    probs = F.softmax(logits.to(compute_dtype(logits)) / temperature, dim=-1)
    ordered = probs.sort(dim=-1, descending=True).values
    return F.pad(ordered, (0, width - ordered.shape[-1]))


def uld(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """ULD: L1 distance between the sorted next-token distributions of student (..., V_s) and teacher
    (..., V_t), vocabularies of any two sizes, the shorter sorted vector zero-padded.

    Leading shapes must match ((B, S) or (N,)); `mask` (...) bool, True = the token counts. Reduced over
    tokens as `reduction` says (default: mean over unmasked tokens; see `kdistill.losses.masking`). The
    teacher side carries no gradient.
    """
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "must have the same leading (token) shape; only the vocabulary sizes may differ"
        )
    check_mask(mask, student_logits.shape[:-1], "student_logits", student_logits.shape)
    check_reduction(reduction, num_tokens)
    width = max(student_logits.shape[-1], teacher_logits.shape[-1])
    student = sorted_probs(student_logits, student_temperature, width)
    with torch.no_grad():
        teacher = sorted_probs(teacher_logits.detach(), teacher_temperature, width).to(student.dtype)
    per_token = (student - teacher).abs().sum(dim=-1)
    return reduce_tokens(per_token, mask, reduction, num_tokens)


def top_k_and_tail(log_probs: Tensor, k: int) -> Tensor:
    """(..., V) log-probabilities -> (..., k + 1) probabilities: the k largest in decreasing order
    (zero-padded when k > V), then the mass of every other entry.

    The tail is a logsumexp over the non-top-k log-probabilities (not 1 - sum), so it stays accurate and its
    gradient reaches exactly the tail's entries; an empty tail (k >= V) is 0 with zero gradient.
    """
    width = min(k, log_probs.shape[-1])
    top, index = log_probs.topk(width, dim=-1)  # (..., width), sorted
    rest = log_probs.scatter(-1, index, -math.inf)  # (..., V), the top entries removed
    tail = safe_logsumexp(rest, dim=-1).unsqueeze(-1)  # (..., 1)
    return torch.cat([F.pad(top.exp(), (0, k - width)), tail.exp()], dim=-1)


def check_teacher_vocab_size(teacher_vocab_size: int | None, k: int) -> int:
    """The `vocab` to give `teacher_bucket_log_probs`: the teacher's vocabulary size if known (>= k, else
    ValueError), else k + 1, a count k candidates never reach (the tail is then never declared empty)."""
    if teacher_vocab_size is None:
        return k + 1
    if teacher_vocab_size < max(k, 1):
        raise ValueError(
            f"teacher_vocab_size must be >= the teacher's top-k width {k}, got {teacher_vocab_size}"
        )
    return teacher_vocab_size


def uld_topk(
    student_logits: Tensor,
    teacher_logprobs: Tensor,
    *,
    mask: Tensor | None = None,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    teacher_vocab_size: int | None = None,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """ULD against a teacher known only on its top-k: sorted L1 over k entries plus one tail bucket.

        uld_topk_t = sum_{i <= k} | s_(i) - t_(i) | + | s_tail - t_tail |

    student_logits (..., V); teacher_logprobs (..., k), the teacher's top-k log-probabilities at T = 1
    under its full softmax, -inf = absent entry (any order; its token ids are not needed). The teacher side
    is its k + 1 categories tempered as `kdistill.losses.topk.teacher_bucket_log_probs` does (top-k and
    log(1 - their mass), all over T_t, softmaxed), the k entries sorted in decreasing order; the student side
    is softmax(s / T_s) exactly, its k largest probabilities sorted and its tail = all its other mass.
    teacher_vocab_size: if given, a row whose present entries number that many has an empty teacher tail.

    Why the tail bucket: the teacher's mass beyond its top-k is unknown token by token but known in total.
    Dropping it would compare a distribution of mass < 1 with the student's top-k and reward a student that
    piles onto k tokens; the bucket keeps both sides at mass 1. Coarsening cannot increase an L1 distance of
    sorted vectors (|sum a - sum b| <= sum |a - b|), so when the teacher's entries are its true top-k and
    T_t = 1, uld_topk <= uld (dense), with equality when both sides put all their mass on <= k tokens.

    Masking and reductions as `uld` (default: mean over unmasked tokens of the per-token value); masked
    rows may hold garbage on both sides. The teacher side carries no gradient.
    """
    if student_logits.ndim < 1 or teacher_logprobs.ndim != student_logits.ndim:
        raise ValueError(
            f"teacher_logprobs {tuple(teacher_logprobs.shape)} must be (..., k) with the leading shape of "
            f"student_logits {tuple(student_logits.shape)}"
        )
    if student_logits.shape[:-1] != teacher_logprobs.shape[:-1]:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logprobs {tuple(teacher_logprobs.shape)} "
            "must have the same leading (token) shape"
        )
    if not teacher_logprobs.dtype.is_floating_point:
        raise ValueError(f"teacher_logprobs must be floating point, got dtype {teacher_logprobs.dtype}")
    check_temperature(student_temperature)
    check_temperature(teacher_temperature)
    check_mask(mask, student_logits.shape[:-1], "student_logits", student_logits.shape)
    check_reduction(reduction, num_tokens)
    k = teacher_logprobs.shape[-1]
    vocab = check_teacher_vocab_size(teacher_vocab_size, k)
    dtype = compute_dtype(student_logits, teacher_logprobs)

    log_p_s = log_softmax_rows(student_logits, mask, student_temperature, dtype)  # (..., V)
    student = top_k_and_tail(log_p_s, k)  # (..., k + 1)
    with torch.no_grad():
        logprobs = teacher_logprobs.detach()
        present = logprobs > -math.inf  # NaN counts as absent
        if mask is not None:
            present = present & mask.unsqueeze(-1)
        buckets = teacher_bucket_log_probs(logprobs, present, vocab, teacher_temperature, dtype).exp()
        top = buckets[..., :k].sort(dim=-1, descending=True).values  # absent entries (0) last
        teacher = torch.cat([top, buckets[..., k:]], dim=-1)  # (..., k + 1)
    per_token = (student - teacher).abs().sum(dim=-1)
    return reduce_tokens(per_token, mask, reduction, num_tokens)
