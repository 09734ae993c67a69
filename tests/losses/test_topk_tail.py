"""The sparse teacher's tail bucket: the tempering bracket, over-full rows conditioned on the top-k, repeated
ids refused. References are numpy computations on the dense distributions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.losses import (
    sparse_forward_kl,
    sparse_generalized_jsd,
    sparse_reverse_kl,
    sparse_skew_kl,
    sparse_tvd,
)
from kdistill.losses.topk import present_entries, teacher_bucket_log_probs, tempered_tail_bounds

F64 = torch.float64


def dense_tail(q: np.ndarray, top: np.ndarray, temperature: float) -> float:
    """The tail bucket's probability in softmax(log q / T), summed token by token."""
    w = q ** (1.0 / temperature)
    rest = np.ones(len(q), dtype=bool)
    rest[top] = False
    return float(w[rest].sum() / w.sum())


def bounds(q: np.ndarray, top: np.ndarray, temperature: float, **kw: Any) -> tuple[float, float, float]:
    """(low, high, one-bucket tail probability) from the library, given only the top-k log-probs."""
    logprobs = torch.tensor(np.log(q[top]), dtype=F64).unsqueeze(0)
    present = torch.ones_like(logprobs, dtype=torch.bool)
    low, high = tempered_tail_bounds(logprobs, present, len(q), temperature, F64, **kw)
    one = teacher_bucket_log_probs(logprobs, present, len(q), temperature, F64)[0, -1].exp()
    return float(low[0]), float(high[0]), float(one)


distributions = st.tuples(
    st.integers(3, 60),  # V
    st.integers(0, 10**6),  # seed
    st.floats(0.5, 6.0),  # logit scale
    st.floats(0.2, 0.95),  # k as a fraction of V
    st.sampled_from([0.25, 0.5, 0.8, 1.25, 2.0, 4.0]),  # T
)


@settings(max_examples=200, deadline=None)
@given(distributions)
def test_dense_tempered_tail_lies_in_the_bracket_on_the_stated_side(case: tuple) -> None:
    vocab, seed, scale, fraction, temperature = case
    rng = np.random.default_rng(seed)
    z = scale * rng.standard_normal(vocab)
    q = np.exp(z - z.max())
    q /= q.sum()
    k = max(1, min(vocab - 1, int(fraction * vocab)))
    top = np.argsort(-q)[:k]
    truth = dense_tail(q, top, temperature)
    low, high, one = bounds(q, top, temperature)
    # the tail mass m is 1 - the top-k mass, known to ~1e-16 absolute: a relative 1e-16 / m on the bounds
    m = 1 - q[top].sum()
    tol = 1e-9 + 1e-14 / m
    assert low * (1 - tol) <= truth <= high * (1 + tol)
    # one bucket is the bound on its side: the tail UNDERestimated at T > 1, OVERestimated at T < 1
    if temperature > 1:
        assert one == pytest.approx(low, rel=1e-9) and one <= truth * (1 + tol)
    else:
        assert one == pytest.approx(high, rel=1e-9) and one >= truth * (1 - tol)
    # the ids are the true top-k here, so the capped bracket holds and is inside the plain one
    c_low, c_high = bounds(q, top, temperature, ids_are_top_k=True)[:2]
    assert c_low * (1 - tol) <= truth <= c_high * (1 + tol)
    assert low * (1 - 1e-9) <= c_low and c_high <= high * (1 + 1e-9)


@pytest.mark.parametrize("temperature", [0.5, 3.0])
def test_the_bounds_are_reached_by_a_uniform_and_a_one_token_tail(temperature: float) -> None:
    top = np.array([0, 1])
    uniform = np.array([0.5, 0.3, 0.05, 0.05, 0.05, 0.05])
    low, high, _ = bounds(uniform, top, temperature)
    reached = high if temperature > 1 else low
    assert dense_tail(uniform, top, temperature) == pytest.approx(reached, rel=1e-12)
    # closed form: S = n^(1 - a) m^a with n = 4, m = 0.2, against W = 0.5^a + 0.3^a
    a = 1 / temperature
    s = 4 ** (1 - a) * 0.2**a
    assert reached == pytest.approx(s / (0.5**a + 0.3**a + s), rel=1e-12)

    one_token = np.array([0.5, 0.3, 0.2, 0.0, 0.0, 0.0])
    with np.errstate(divide="ignore"):
        low, high, one = bounds(one_token, top, temperature)
    reached = low if temperature > 1 else high
    assert dense_tail(one_token, top, temperature) == pytest.approx(reached, rel=1e-12) == one


def test_capped_bound_is_floor_m_over_c_tokens_at_c_plus_the_rest() -> None:
    # top-2 = (0.4, 0.25), tail m = 0.35 in 0.25 + 0.1 (the most concentrated tail no token of which
    # outranks 0.25) and the rest spread: at T = 2, S_c = 0.25^0.5 + 0.1^0.5
    q = np.array([0.4, 0.25, 0.25, 0.1] + [0.0] * 4)
    top = np.array([0, 1])
    with np.errstate(divide="ignore"):
        c_low, _, one = bounds(q, top, 2.0, ids_are_top_k=True)
    s_c = 0.25**0.5 + 0.1**0.5
    assert c_low == pytest.approx(s_c / (0.4**0.5 + 0.25**0.5 + s_c), rel=1e-12)
    assert c_low == pytest.approx(dense_tail(q, top, 2.0), rel=1e-12)  # this tail is that extreme
    assert one < c_low


def test_an_empty_tail_has_a_zero_bracket() -> None:
    logprobs = torch.log(torch.tensor([[0.5, 0.3, 0.2]], dtype=F64))
    present = torch.ones_like(logprobs, dtype=torch.bool)
    for kw in ({}, {"ids_are_top_k": True}):
        low, high = tempered_tail_bounds(logprobs, present, 3, 2.0, F64, **kw)
        assert low.item() == 0.0 and high.item() == 0.0


# --- over-full rows: both sides conditioned on the top-k ----------------------------------------------


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0))


REFERENCES = {
    "forward_kl": (sparse_forward_kl, {}, lambda t, s: _kl(t, s)),
    "reverse_kl": (sparse_reverse_kl, {}, lambda t, s: _kl(s, t)),
    "generalized_jsd": (
        sparse_generalized_jsd,
        {"beta": 0.3},
        lambda t, s: 0.3 * _kl(t, 0.3 * t + 0.7 * s) + 0.7 * _kl(s, 0.3 * t + 0.7 * s),
    ),
    "skew_kl": (sparse_skew_kl, {"alpha": 0.2}, lambda t, s: _kl(t, 0.2 * t + 0.8 * s)),
    "tvd": (sparse_tvd, {}, lambda t, s: 0.5 * float(np.abs(t - s).sum())),
}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def one_bucket_reference(
    name: str, s: np.ndarray, ids: list[int], logprobs: list[float], temperature: float
) -> float:
    """The unconditioned k + 1 categories: the tail = 1 - top-k mass, tempered as one category."""
    p = _softmax(s / temperature)
    rest = [i for i in range(len(s)) if i not in ids]
    q = np.exp(np.array(logprobs, dtype=np.float64))
    weights = np.append(q ** (1 / temperature), (1 - q.sum()) ** (1 / temperature))
    return REFERENCES[name][2](weights / weights.sum(), np.append(p[ids], p[rest].sum()))


def conditional_reference(
    name: str, s: np.ndarray, ids: list[int], logprobs: list[float], temperature: float
) -> float:
    """Both sides renormalised over the top-k ids: softmax(logprobs / T) vs softmax(s / T) at the ids."""
    p_t = _softmax(np.array(logprobs, dtype=np.float64) / temperature)
    p_s = _softmax(s / temperature)[ids]
    return REFERENCES[name][2](p_t, p_s / p_s.sum())


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_over_full_rows_compare_the_conditionals_and_others_are_unchanged(
    name: str, temperature: float
) -> None:
    fn, params, _ = REFERENCES[name]
    # row 0: the top-k mass rounds to exactly 1 (0 and -40 nats) with 4 of 6 tokens unlisted;
    # row 1: mass 0.6; row 2: mass 1 - 1e-6, small but not rounded away
    s = torch.tensor(
        [[0.5, 2.0, 1.0, 3.0, 2.5, -1.0], [1.0, 0.0, 2.0, -1.0, 0.5, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]],
        dtype=F64,
        requires_grad=True,
    )
    ids = torch.tensor([[4, 0], [2, 5], [1, 3]])
    rows = [[0.0, -40.0], [math.log(0.4), math.log(0.2)], [math.log(0.5), math.log(0.5 - 1e-6)]]
    logprobs = torch.tensor(rows, dtype=F64)
    got = fn(s, ids, logprobs, temperature=temperature, reduction="none", **params)
    s_np = s.detach().double().numpy()
    assert got[0].item() == pytest.approx(
        conditional_reference(name, s_np[0], [4, 0], rows[0], temperature), rel=1e-10, abs=1e-14
    )
    for r in (1, 2):
        expected = one_bucket_reference(name, s_np[r], ids[r].tolist(), rows[r], temperature)
        assert got[r].item() == pytest.approx(expected, rel=1e-8, abs=1e-14)
    # the over-full row's tail tokens get no gradient: nothing charges the student's tail there
    got.sum().backward()
    assert torch.isfinite(s.grad).all()
    assert s.grad[0, [1, 2, 3, 5]].abs().max() < 1e-15 < 1e-3 < s.grad[0, [0, 4]].abs().min()


def test_a_student_tail_costs_no_87_nats_per_unit_against_a_rounded_away_teacher_tail() -> None:
    # the student keeps ~0.9 of its mass off the teacher's two tokens; a tail floored at float32's tiny
    # (log ~ -87.3) would make reverse KL ~ 0.9 * 87
    s = torch.tensor([[math.log(0.06), math.log(0.04), 0.0, 0.0, 0.0, 0.0, math.log(0.6)]])
    ids = torch.tensor([[0, 1]])
    logprobs = torch.tensor([[math.log(0.7), math.log(0.3)]])  # float32 mass 1.0000000
    assert torch.logsumexp(logprobs, dim=-1).item() >= 0.0
    student_tail = 1 - torch.softmax(s, dim=-1)[0, :2].sum().item()
    assert student_tail > 0.85
    got = sparse_reverse_kl(s, ids, logprobs).item()
    p_s = np.array([0.6, 0.4])
    assert got == pytest.approx(_kl(p_s, np.array([0.7, 0.3])), rel=1e-5)
    assert got < 0.1


def test_an_over_full_row_with_padding_and_a_masked_row_of_garbage() -> None:
    s = torch.tensor([[1.0, 0.0, -1.0, 2.0], [float("nan")] * 4], dtype=F64)
    ids = torch.tensor([[2, -1, 3], [7, 7, 7]])
    logprobs = torch.tensor([[0.0, 5.0, -80.0], [float("inf")] * 3], dtype=F64)  # float64 mass rounds to 1
    mask = torch.tensor([True, False])
    got = sparse_forward_kl(s, ids, logprobs, mask=mask, temperature=2.0, reduction="none")
    expected = conditional_reference("forward_kl", s[0].numpy(), [2, 3], [0.0, -80.0], 2.0)
    assert got[0].item() == pytest.approx(expected, rel=1e-10)
    assert got[1].item() == 0.0


# --- repeated ids ------------------------------------------------------------------------------------


def test_repeated_ids_are_refused_naming_how_many_rows() -> None:
    s = torch.zeros(2, 3, 8)
    ids = torch.tensor([[[0, 1, 2], [3, 3, -1], [4, 5, 6]], [[1, 2, 1], [-1, -1, 0], [7, 6, 5]]])
    logprobs = torch.full((2, 3, 3), -3.0)
    message = (
        "teacher_ids repeat a token id within 2 of 6 rows (first at index (0, 1)): the ids of a row must be "
        "distinct, a repeated id counts the student's probability twice"
    )
    with pytest.raises(ValueError) as err:
        sparse_forward_kl(s, ids, logprobs)
    assert str(err.value) == message


def test_repeated_padding_and_masked_rows_are_not_repeated_ids() -> None:
    s = torch.zeros(3, 8, dtype=F64)
    ids = torch.tensor([[0, -1, -1], [5, 5, 5], [1, 2, 3]])  # row 1 is masked: garbage
    logprobs = torch.tensor([[-0.5, -math.inf, -math.inf], [0.0] * 3, [-2.0, -2.0, -2.0]], dtype=F64)
    mask = torch.tensor([True, False, True])
    got = sparse_tvd(s, ids, logprobs, mask=mask, reduction="none")
    assert got[1].item() == 0.0
    assert got[0].item() == pytest.approx(one_bucket_reference("tvd", s[0].numpy(), [0], [-0.5], 1.0))
    present = present_entries(ids, mask)
    assert present.sum().item() == 4
