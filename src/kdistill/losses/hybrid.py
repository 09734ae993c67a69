"""Hybrid ULD: an exact divergence on the tokens the two vocabularies share, ULD on the rest.

ULD (Boizard et al., "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for LLMs",
arXiv:2402.12030) compares only the sorted shapes of the two next-token distributions, so it cannot tell the
student *which* token the teacher prefers. Most tokens of two modern vocabularies spell the same bytes
(`kdistill.lm.vocab_map`): on those the teacher's probabilities can be matched token by token. GOLD's hybrid
loss (TRL `GOLDTrainer`, `uld_use_hybrid_loss`) splits each distribution that way:

    matched   = Div( (p_s[sigma(j)])_{j in M} + bucket,  (p_t[j])_{j in M} + bucket )
    unmatched = sum_i | sort_desc(p_s on student ids outside sigma(M))_i - sort_desc(p_t on teacher ids outside M)_i |
    hybrid    = matched_weight * matched + unmatched_weight * unmatched

per token, with p_s = softmax(s / T_s), p_t = softmax(t / T_t), sigma the teacher -> student map and M the
matched teacher ids. Div is any registered divergence (`kdistill.losses.divergence`, e.g. forward_kl) on the
two distributions coarsened to the matched entries plus one bucket holding all other mass (so both sides sum
to 1 and Div is a divergence of two categorical distributions). The unmatched part is ULD's sorted L1 on the
remaining, unnormalised mass, the shorter side zero-padded. With every token matched (identity map, same
vocabulary) it is the plain divergence; with nothing matched it is ULD.

`hybrid` takes dense teacher logits and a vocabulary map; `hybrid_topk` a cached top-k teacher whose
candidates carry their student ids (the map applied already). Masking and reductions as the token losses
(`kdistill.losses.masking`, default: mean over unmasked tokens of the per-token hybrid). The teacher side
carries no gradient.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.losses.divergence import DIVERGENCES, Divergence, PerToken, check_temperature
from kdistill.losses.masking import Reduction, check_mask, check_reduction, reduce_tokens
from kdistill.losses.numerics import compute_dtype, log_softmax_rows, safe_logsumexp
from kdistill.losses.topk import ABSENT, scatter_ids, teacher_bucket_log_probs
from kdistill.losses.uld import check_teacher_vocab_size


def bind_divergence(divergence: str | Divergence, divergence_kwargs: dict[str, Any] | None) -> PerToken:
    """The per-token function of a registered divergence (by name or record) with its own parameters."""
    record = divergence if isinstance(divergence, Divergence) else DIVERGENCES.get(divergence)
    return record.bind(**dict(divergence_kwargs or {}))


def matched_teacher_ids(teacher_to_student: Tensor, student_vocab: int) -> Tensor:
    """(V_t,) bool: the teacher ids of the one-to-one matched set.

    A teacher id is matched when it maps to a student id (>= 0) and no lower teacher id maps to the same
    student id (several teacher spellings of one student token: the lowest id keeps it, the rest count as
    unmatched).
    """
    mapped = teacher_to_student >= 0
    target = teacher_to_student.clamp_min(0)  # (V_t,)
    ids = torch.arange(teacher_to_student.shape[0], device=teacher_to_student.device)
    lowest = torch.full((student_vocab,), teacher_to_student.shape[0], dtype=ids.dtype, device=ids.device)
    lowest = lowest.scatter_reduce(0, target[mapped], ids[mapped], reduce="amin")  # (V_s,)
    return mapped & (lowest[target] == ids)


def check_teacher_to_student(teacher_to_student: Tensor, teacher_vocab: int, student_vocab: int) -> None:
    """Raise ValueError unless the map is (V_t,) integer with values in [-1, V_s)."""
    if teacher_to_student.dtype.is_floating_point or teacher_to_student.dtype == torch.bool:
        raise ValueError(
            f"teacher_to_student must be an integer tensor, got dtype {teacher_to_student.dtype}"
        )
    if teacher_to_student.shape != (teacher_vocab,):
        raise ValueError(
            f"teacher_to_student {tuple(teacher_to_student.shape)} must be ({teacher_vocab},): one student id "
            "(or -1) per teacher vocabulary entry"
        )
    if teacher_vocab and (teacher_to_student.min() < ABSENT or teacher_to_student.max() >= student_vocab):
        raise ValueError(
            f"teacher_to_student values must lie in [-1, {student_vocab}) (student vocabulary {student_vocab}), "
            f"got [{int(teacher_to_student.min())}, {int(teacher_to_student.max())}]"
        )


def _check_common(
    student_logits: Tensor,
    teacher: Tensor,
    teacher_name: str,
    mask: Tensor | None,
    student_temperature: float,
    teacher_temperature: float,
    reduction: str,
    num_tokens: int | Tensor | None,
) -> None:
    if student_logits.ndim < 1 or teacher.ndim != student_logits.ndim:
        raise ValueError(
            f"{teacher_name} {tuple(teacher.shape)} must have the leading shape of student_logits "
            f"{tuple(student_logits.shape)} and one last dim"
        )
    if student_logits.shape[:-1] != teacher.shape[:-1]:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and {teacher_name} {tuple(teacher.shape)} must have "
            "the same leading (token) shape"
        )
    if not teacher.dtype.is_floating_point:
        raise ValueError(f"{teacher_name} must be floating point, got dtype {teacher.dtype}")
    check_temperature(student_temperature)
    check_temperature(teacher_temperature)
    check_mask(mask, student_logits.shape[:-1], "student_logits", student_logits.shape)
    check_reduction(reduction, num_tokens)


def hybrid(
    student_logits: Tensor,
    teacher_logits: Tensor,
    teacher_to_student: Tensor,
    *,
    divergence: str | Divergence = "forward_kl",
    divergence_kwargs: dict[str, Any] | None = None,
    mask: Tensor | None = None,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    matched_weight: float = 1.0,
    unmatched_weight: float = 1.0,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """Hybrid ULD against a dense teacher (the reference form; see the module docstring).

    student_logits (..., V_s); teacher_logits (..., V_t), the same leading shape; teacher_to_student (V_t,)
    int64, the student id spelling the same bytes as each teacher id, -1 = none (`kdistill.lm.vocab_map`).
    divergence: a registered name (or record), divergence_kwargs its own parameters (e.g. {"beta": 0.5}).
    Per token: matched_weight * Div(matched entries + bucket) + unmatched_weight * sorted L1 of the rest,
    then reduced over unmasked tokens as `reduction` says (default: mean).
    """
    _check_common(
        student_logits,
        teacher_logits,
        "teacher_logits",
        mask,
        student_temperature,
        teacher_temperature,
        reduction,
        num_tokens,
    )
    student_vocab, teacher_vocab = student_logits.shape[-1], teacher_logits.shape[-1]
    check_teacher_to_student(teacher_to_student, teacher_vocab, student_vocab)
    per_token_div = bind_divergence(divergence, divergence_kwargs)
    dtype = compute_dtype(student_logits, teacher_logits)
    device = student_logits.device

    matched = matched_teacher_ids(teacher_to_student.to(device), student_vocab)  # (V_t,)
    teacher_idx = matched.nonzero().squeeze(1)  # (m,)
    student_idx = teacher_to_student.to(device)[teacher_idx]  # (m,)
    student_matched = torch.zeros(student_vocab, dtype=torch.bool, device=device).index_fill(
        0, student_idx, True
    )

    log_p_s = log_softmax_rows(student_logits, mask, student_temperature, dtype)  # (..., V_s)
    log_q_s = torch.cat(
        [
            log_p_s[..., student_idx],
            safe_logsumexp(log_p_s.masked_fill(student_matched, -math.inf), -1)[..., None],
        ],
        dim=-1,
    )  # (..., m + 1)
    with torch.no_grad():
        log_p_t = log_softmax_rows(teacher_logits.detach(), mask, teacher_temperature, dtype)  # (..., V_t)
        log_q_t = torch.cat(
            [
                log_p_t[..., teacher_idx],
                safe_logsumexp(log_p_t.masked_fill(matched, -math.inf), -1)[..., None],
            ],
            dim=-1,
        )  # (..., m + 1)
        width = max(student_vocab, teacher_vocab)
        unmatched_t = log_p_t.exp().masked_fill(matched, 0.0).sort(dim=-1, descending=True).values
        unmatched_t = F.pad(unmatched_t, (0, width - teacher_vocab))  # (..., width)
    unmatched_s = log_p_s.exp().masked_fill(student_matched, 0.0).sort(dim=-1, descending=True).values
    unmatched_s = F.pad(unmatched_s, (0, width - student_vocab))  # (..., width)

    matched_part = per_token_div(log_q_s, log_q_t)  # (...)
    unmatched_part = (unmatched_s - unmatched_t).abs().sum(dim=-1)  # (...)
    per_token = matched_weight * matched_part + unmatched_weight * unmatched_part
    return reduce_tokens(per_token, mask, reduction, num_tokens)


def hybrid_topk_parts(
    student_logits: Tensor,
    teacher_student_ids: Tensor,
    teacher_logprobs: Tensor,
    *,
    divergence: str | Divergence = "forward_kl",
    divergence_kwargs: dict[str, Any] | None = None,
    mask: Tensor | None = None,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    teacher_vocab_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The matched and the unmatched part of `hybrid_topk` per token, unweighted: two (...) tensors,
    exactly 0 at masked positions (for callers that log or weight them apart)."""
    _check_common(
        student_logits,
        teacher_logprobs,
        "teacher_logprobs",
        mask,
        student_temperature,
        teacher_temperature,
        "none",
        None,
    )
    if teacher_student_ids.dtype.is_floating_point or teacher_student_ids.dtype == torch.bool:
        raise ValueError(
            f"teacher_student_ids must be an integer tensor, got dtype {teacher_student_ids.dtype}"
        )
    if teacher_student_ids.shape != teacher_logprobs.shape:
        raise ValueError(
            f"teacher_student_ids {tuple(teacher_student_ids.shape)} and teacher_logprobs "
            f"{tuple(teacher_logprobs.shape)} differ in shape"
        )
    per_token_div = bind_divergence(divergence, divergence_kwargs)
    k = teacher_logprobs.shape[-1]
    vocab = check_teacher_vocab_size(teacher_vocab_size, k)
    dtype = compute_dtype(student_logits, teacher_logprobs)
    neg_inf = torch.full((), -math.inf, dtype=dtype, device=student_logits.device)

    with torch.no_grad():
        logprobs = teacher_logprobs.detach()
        present = logprobs > -math.inf  # (..., k); NaN counts as absent
        if mask is not None:
            present = present & mask.unsqueeze(-1)  # masked rows: no candidate, garbage never read
        mapped = present & (teacher_student_ids >= 0)
        # one-to-one: a student id named by several candidates is kept by the first of them
        same = teacher_student_ids.unsqueeze(-1) == teacher_student_ids.unsqueeze(-2)  # (..., k, k) [i, j]
        earlier = torch.ones(k, k, dtype=torch.bool, device=same.device).tril(-1)  # j < i
        mapped = mapped & ~(same & mapped.unsqueeze(-2) & earlier).any(dim=-1)
        ids, any_mapped = scatter_ids(teacher_student_ids, mapped)  # (..., k), (..., 1)
        # teacher: k + 1 tempered categories (candidates, top-k tail), then coarsened to (mapped, bucket)
        log_b = teacher_bucket_log_probs(logprobs, present, vocab, teacher_temperature, dtype)  # (..., k + 1)
        others = torch.cat([log_b[..., :k].masked_fill(mapped, -math.inf), log_b[..., k:]], dim=-1)
        log_q_t = torch.cat(
            [torch.where(mapped, log_b[..., :k], neg_inf), safe_logsumexp(others, -1)[..., None]], dim=-1
        )  # (..., k + 1)
        unmatched_t = log_b[..., :k].masked_fill(~(present & ~mapped), -math.inf).exp()
        unmatched_t = unmatched_t.sort(dim=-1, descending=True).values  # (..., k), zero-padded at the end

    # student: softmax(s / T_s) at the mapped ids, the rest of its mass in the bucket
    log_p_s = log_softmax_rows(student_logits, mask, student_temperature, dtype)  # (..., V_s)
    is_mapped_id = torch.zeros_like(log_p_s, dtype=torch.bool).scatter(-1, ids, mapped | any_mapped)
    rest = log_p_s.masked_fill(is_mapped_id, -math.inf)  # (..., V_s): ids no mapped candidate names
    log_q_s = torch.cat(
        [torch.where(mapped, log_p_s.gather(-1, ids), neg_inf), safe_logsumexp(rest, -1)[..., None]], dim=-1
    )  # (..., k + 1)
    width = min(k, rest.shape[-1])
    unmatched_s = F.pad(rest.topk(width, dim=-1).values.exp(), (0, k - width))  # (..., k), sorted

    matched_part = per_token_div(log_q_s, log_q_t)  # (...)
    unmatched_part = (unmatched_s - unmatched_t).abs().sum(dim=-1)  # (...)
    return reduce_tokens(matched_part, mask, "none", None), reduce_tokens(unmatched_part, mask, "none", None)


def hybrid_topk(
    student_logits: Tensor,
    teacher_student_ids: Tensor,
    teacher_logprobs: Tensor,
    *,
    divergence: str | Divergence = "forward_kl",
    divergence_kwargs: dict[str, Any] | None = None,
    mask: Tensor | None = None,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    teacher_vocab_size: int | None = None,
    matched_weight: float = 1.0,
    unmatched_weight: float = 1.0,
    reduction: Reduction = "mean",
    num_tokens: int | Tensor | None = None,
) -> Tensor:
    """Hybrid ULD against a cached top-k teacher whose candidates carry their student ids.

    student_logits (..., V_s); teacher_student_ids (..., k) int, the student id of each teacher candidate,
    -1 = no student token (unmapped), values < V_s; teacher_logprobs (..., k), log-probabilities at T = 1
    under the teacher's full softmax, -inf = absent candidate. A student id named by several mapped
    candidates is kept by the first of them in the row; the others count as unmapped.

    Teacher temperature: the k candidates and the teacher's tail (its mass beyond the top-k, one category)
    are tempered together as `kdistill.losses.topk.teacher_bucket_log_probs` does (exact when the tail is
    empty, an approximation otherwise); only then are the unmapped candidates moved into the matched part's
    bucket. (The registry's sparse form would temper that merged bucket as one category and use one
    temperature for both sides, so the matched part is composed here from the same primitives.) The student
    is softmax(s / T_s), exact. teacher_vocab_size: if given, a row with that many present candidates has an
    empty tail.

    Per token: matched_weight * Div over (mapped candidates, bucket = the rest: unmapped candidates + tail
    on the teacher's side, every other student id on the student's) + unmatched_weight * sum_{i <= k}
    |s^u_(i) - t^u_(i)|, with t^u the unmapped candidates' tempered probabilities sorted and zero-padded to k,
    s^u the student's k largest probabilities among ids no mapped candidate names. No tail term in the
    unmatched part: the matched part's bucket already accounts for that mass. At T_t = 1, with the
    teacher's support within its top-k and the student's unmatched support within k, this equals `hybrid`.
    Reduced over unmasked tokens as `reduction` says (default: mean).
    """
    check_reduction(reduction, num_tokens)
    matched_part, unmatched_part = hybrid_topk_parts(
        student_logits,
        teacher_student_ids,
        teacher_logprobs,
        divergence=divergence,
        divergence_kwargs=divergence_kwargs,
        mask=mask,
        student_temperature=student_temperature,
        teacher_temperature=teacher_temperature,
        teacher_vocab_size=teacher_vocab_size,
    )
    per_token = matched_weight * matched_part + unmatched_weight * unmatched_part
    return reduce_tokens(per_token, mask, reduction, num_tokens)
