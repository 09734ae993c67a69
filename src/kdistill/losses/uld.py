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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.masking import Reduction, check_mask, check_reduction, reduce_tokens
from kdistill.losses.numerics import compute_dtype


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
