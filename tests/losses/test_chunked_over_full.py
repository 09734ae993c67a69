"""The chunked sparse loss on rows whose top-k mass rounds to 1: it must compare the conditionals over the
top-k, as the plain sparse loss does (tests/losses/test_topk_tail.py), not charge ~87 nats per unit of tail."""

from __future__ import annotations

import math

import pytest
import torch
from tests.losses.test_chunked import CASE_IDS, CASES, assert_same_as_plain, make_inputs


def over_full_inputs(seed: int) -> dict:
    """make_inputs' sparse teacher, with every other row replaced by a top-k whose mass is 1 in float32."""
    kw = make_inputs(sparse=True, seed=seed, top_k=3)
    ids, logprobs = kw["teacher_ids"].clone(), kw["teacher_logprobs"].clone()
    full = torch.tensor([math.log(0.7), math.log(0.3), -40.0])  # sums to 1.0 once rounded
    assert torch.logsumexp(full, dim=0).item() >= 0.0
    logprobs[..., ::2, :] = full
    ids[..., ::2, :] = torch.tensor([5, 0, 9])  # 3 of 13 tokens listed: the tail is not really empty
    kw["teacher_ids"], kw["teacher_logprobs"] = ids, logprobs
    return kw


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_chunked_equals_plain_sparse_on_over_full_rows(name: str, params: dict, temperature: float) -> None:
    kw = over_full_inputs(seed=3)
    options = {"divergence": name, "divergence_kwargs": params, "temperature": temperature}
    assert_same_as_plain(kw, chunk_size=4, **options)


def test_a_student_tail_is_not_charged_87_nats_in_the_chunked_loss() -> None:
    from kdistill.losses.chunked import chunked_distill_loss

    kw = over_full_inputs(seed=4)
    out = chunked_distill_loss(**kw, chunk_size=5, divergence="reverse_kl")
    # every row's student keeps most mass off the 3 listed tokens; a floored teacher tail (log ~ -87)
    # would cost tens of nats per token
    assert out.divergence.item() < 10.0
