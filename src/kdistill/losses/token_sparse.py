"""Token-level divergences against a sparse top-k teacher (an API's top_logprobs, or a capture cache).

The teacher is known only on its k most likely tokens per position: teacher_ids (..., k), id -1 = padding,
and teacher_logprobs (..., k) at temperature 1 (-inf at padding by convention). The vocabulary is collapsed
into k + 1 categories, the k teacher tokens and one tail bucket with the remaining mass of each side, and
the divergence's per-token formula (its record in `kdistill.losses.token`) is applied to those; how the
buckets and the tempered teacher tail are formed is in `kdistill.losses.topk` (and docs/topk_tail.md): at
T != 1 the teacher's tail is tempered as one category, which underestimates it for T > 1 and overestimates
it for T < 1; a row whose top-k mass rounds to >= 1 is compared conditioned on its top-k ids; a row that
repeats an id is a ValueError.

Every divergence has this sparse form, derived from its record: `SPARSE_TOKEN_DIVERGENCES.get(name)`, or
`DIVERGENCES.get(name).sparse`; the built-in ones keep their names here (`sparse_forward_kl`, ...).

Shapes, mask, temperature, scale_by_t2 and the reductions ("mean" over unmasked tokens by default, with
`num_tokens` for gradient accumulation; "sum"; "none") are those of `kdistill.losses.token`, and the same
reduction helper is used. At T = 1 the bucketing is exact on both sides, and merging categories never
increases an f-divergence (forward and reverse KL, JSD, skew KL, TVD, and alpha-beta when alpha + beta = 1),
so each of those sparse values is then a lower bound of the dense one. With k = V (the full log_softmax and
a permutation of the vocabulary as ids) every sparse form equals its dense counterpart. The teacher
log-probabilities are not detached here.
"""

from __future__ import annotations

from kdistill.losses.divergence import SPARSE_TOKEN_DIVERGENCES
from kdistill.losses.token import FORWARD_KL, GENERALIZED_JSD, REVERSE_KL, SKEW_KL, TVD
from kdistill.losses.topk import ABSENT

__all__ = [
    "ABSENT",
    "SPARSE_TOKEN_DIVERGENCES",
    "sparse_forward_kl",
    "sparse_generalized_jsd",
    "sparse_reverse_kl",
    "sparse_skew_kl",
    "sparse_tvd",
]

sparse_forward_kl = FORWARD_KL.sparse
sparse_reverse_kl = REVERSE_KL.sparse
sparse_generalized_jsd = GENERALIZED_JSD.sparse
sparse_skew_kl = SKEW_KL.sparse
sparse_tvd = TVD.sparse
