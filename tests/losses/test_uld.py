"""ULD (Boizard et al. 2024) against an independent numpy computation, its bounds and invariances, gradients;
uld_topk (a top-k teacher, k sorted entries + a tail bucket) against its own numpy reference and dense ULD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.losses import uld, uld_topk

torch.set_num_threads(1)


def numpy_uld(s, t, mask, ts, tt):
    """The paper's definition written out: softmax, sort descending, zero-pad, L1, mean over kept tokens."""

    def probs(x, temp):
        z = x / temp
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    p, q = probs(s, ts), probs(t, tt)
    width = max(p.shape[-1], q.shape[-1])
    values = []
    for i in range(p.shape[0]):
        a = np.zeros(width)
        b = np.zeros(width)
        a[: p.shape[-1]] = np.sort(p[i])[::-1]
        b[: q.shape[-1]] = np.sort(q[i])[::-1]
        values.append(np.abs(a - b).sum())
    values = np.array(values)
    return values[mask].sum() / max(mask.sum(), 1)


@pytest.mark.parametrize(("v_s", "v_t"), [(7, 11), (11, 7), (9, 9)])
@pytest.mark.parametrize(("ts", "tt"), [(1.0, 1.0), (2.0, 0.5)])
def test_matches_an_independent_numpy_reference(v_s, v_t, ts, tt):
    gen = torch.Generator().manual_seed(v_s * 100 + v_t)
    s = torch.randn(2, 5, v_s, generator=gen, dtype=torch.float64) * 3
    t = torch.randn(2, 5, v_t, generator=gen, dtype=torch.float64) * 3
    mask = torch.rand(2, 5, generator=gen) > 0.3
    got = uld(s, t, mask=mask, student_temperature=ts, teacher_temperature=tt)
    want = numpy_uld(s.reshape(10, v_s).numpy(), t.reshape(10, v_t).numpy(), mask.reshape(10).numpy(), ts, tt)
    assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_a_permuted_teacher_costs_nothing_and_a_wider_vocabulary_with_zero_mass_neither():
    s = torch.randn(4, 6, dtype=torch.float64)
    perm = torch.randperm(6)
    assert uld(s, s[:, perm]).item() == pytest.approx(0.0, abs=1e-15)
    # the teacher has 4 extra vocabulary entries of (numerically) zero probability: padding covers them
    t = torch.cat([s[:, perm], torch.full((4, 4), -1e4, dtype=torch.float64)], dim=-1)
    assert uld(s, t).item() == pytest.approx(0.0, abs=1e-15)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_at_most_the_l1_distance_under_any_one_to_one_matching_and_within_0_2(v, seed):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(3, v, generator=gen, dtype=torch.float64) * 2
    t = torch.randn(3, v, generator=gen, dtype=torch.float64) * 2
    perm = torch.randperm(v, generator=gen)
    per_token = uld(s, t, reduction="none")
    l1 = (s.softmax(-1) - t[:, perm].softmax(-1)).abs().sum(-1)
    assert torch.all(per_token <= l1 + 1e-12)
    assert torch.all(per_token >= 0) and torch.all(per_token <= 2 + 1e-12)


def test_gradcheck_on_the_student_and_no_gradient_to_the_teacher():
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, False, True])
    assert torch.autograd.gradcheck(
        lambda x: uld(x, t, mask=mask, student_temperature=1.5, teacher_temperature=0.7), (s,)
    )
    uld(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_masked_tokens_do_not_count_and_an_all_masked_batch_is_zero():
    s = torch.randn(2, 3, 6, requires_grad=True)
    t = torch.randn(2, 3, 9)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    changed = s.detach().clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 6) * 10
    assert uld(s, t, mask=mask).item() == pytest.approx(uld(changed, t, mask=mask).item(), rel=1e-6)
    none = torch.zeros(2, 3, dtype=torch.bool)
    loss = uld(s, t, mask=none)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(s.grad) == 0


def test_sum_of_micro_batches_with_num_tokens_is_the_full_batch_mean():
    s, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    full = uld(s, t)
    parts = uld(s[:2], t[:2], num_tokens=6) + uld(s[2:], t[2:], num_tokens=6)
    assert parts.item() == pytest.approx(full.item(), rel=1e-12)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="same leading"):
        uld(torch.randn(2, 3, 5), torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        uld(torch.randn(2, 5), torch.randn(2, 5), teacher_temperature=0.0)
    with pytest.raises(ValueError, match="mask"):
        uld(torch.randn(2, 5), torch.randn(2, 7), mask=torch.ones(3, dtype=torch.bool))


# --- uld_topk: a teacher known on its top-k only ------------------------------------------------------------


def numpy_uld_topk(s, lp, mask, ts, tt):
    """k + 1 categories written out: the student's sorted top-k probabilities and 1 - their sum; the teacher's
    top-k log-probs and log(1 - their mass), over T_t, softmaxed, its k entries sorted. L1, mean over kept."""
    values = []
    for row, row_lp in zip(s, lp, strict=True):
        z = row / ts
        p = np.exp(z - z.max())
        p /= p.sum()
        k = row_lp.shape[0]
        top = np.sort(p)[::-1][:k]
        student = np.concatenate([top, np.zeros(k - top.shape[0]), [1.0 - top.sum()]])
        known = np.isfinite(row_lp)
        tail = max(1.0 - np.exp(row_lp[known]).sum(), np.finfo(np.float64).tiny)
        logits = np.concatenate([np.where(known, row_lp, -np.inf), [np.log(tail)]]) / tt
        q = np.exp(logits - logits.max())
        q /= q.sum()
        teacher = np.concatenate([np.sort(q[:k])[::-1], q[k:]])
        values.append(np.abs(student - teacher).sum())
    values = np.array(values)
    return values[mask].sum() / max(mask.sum(), 1)


def teacher_top_k(t: torch.Tensor, k: int) -> torch.Tensor:
    """The teacher's true top-k log-probabilities at T = 1, in a shuffled order (uld_topk needs no order)."""
    top = torch.log_softmax(t, dim=-1).topk(k, dim=-1).values
    return top[..., torch.randperm(k)]


@pytest.mark.parametrize(("v_s", "k"), [(7, 3), (4, 6)])
@pytest.mark.parametrize(("ts", "tt"), [(1.0, 1.0), (2.0, 0.5), (0.7, 3.0)])
def test_uld_topk_matches_a_numpy_reference(v_s, k, ts, tt):
    gen = torch.Generator().manual_seed(v_s * 10 + k)
    s = torch.randn(8, v_s, generator=gen, dtype=torch.float64) * 2
    lp = teacher_top_k(torch.randn(8, 11, generator=gen, dtype=torch.float64) * 2, k)
    lp[0, 1] = -math.inf  # an absent entry
    mask = torch.rand(8, generator=gen) > 0.25
    got = uld_topk(s, lp, mask=mask, student_temperature=ts, teacher_temperature=tt)
    want = numpy_uld_topk(s.numpy(), lp.numpy(), mask.numpy(), ts, tt)
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize(("ts", "tt"), [(1.0, 1.0), (2.0, 0.5)])
def test_uld_topk_equals_dense_uld_when_both_sides_live_on_at_most_k_tokens(ts, tt):
    gen = torch.Generator().manual_seed(5)
    k = 4
    s = torch.full((6, 9), -math.inf, dtype=torch.float64)
    s[:, :3] = torch.randn(6, 3, generator=gen, dtype=torch.float64)  # the student: 3 tokens
    t = torch.full((6, 12), -1e4, dtype=torch.float64)
    t[:, 5:9] = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 2  # the teacher: 4 tokens
    dense = uld(s, t, student_temperature=ts, teacher_temperature=tt, reduction="none")
    sparse = uld_topk(
        s, teacher_top_k(t, k), student_temperature=ts, teacher_temperature=tt, reduction="none"
    )
    assert dense.min() > 0.05  # the two really differ
    torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 10), st.integers(2, 12), st.integers(1, 12), st.floats(0.5, 3.0), st.integers(0, 2**31 - 1)
)
def test_uld_topk_never_exceeds_dense_uld_given_the_true_top_k(v_s, v_t, k, ts, seed):
    k = min(k, v_t)
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(3, v_s, generator=gen, dtype=torch.float64) * 2
    t = torch.randn(3, v_t, generator=gen, dtype=torch.float64) * 2
    dense = uld(s, t, student_temperature=ts, reduction="none")
    sparse = uld_topk(s, teacher_top_k(t, k), student_temperature=ts, reduction="none")
    assert torch.all(sparse <= dense + 1e-12)
    assert torch.all(sparse >= 0)


def test_uld_topk_is_zero_exactly_when_the_sorted_top_k_and_the_tails_agree():
    lp = torch.tensor([[0.4, 0.3, 0.1, 0.1, 0.05, 0.05]], dtype=torch.float64).log()[:, :2]  # top-2, tail 0.3
    same_shape = torch.tensor([[0.3, 0.2, 0.4, 0.1]], dtype=torch.float64).log()  # top-2 {0.4, 0.3}, tail 0.3
    assert uld_topk(same_shape, lp).item() == pytest.approx(0.0, abs=1e-15)
    other = torch.tensor([[0.25, 0.25, 0.4, 0.1]], dtype=torch.float64).log()  # top-2 {0.4, 0.25}, tail 0.35
    assert uld_topk(other, lp).item() == pytest.approx(0.05 + 0.05, rel=1e-12)


def test_uld_topk_gradcheck_and_no_gradient_to_the_teacher():
    gen = torch.Generator().manual_seed(4)
    s = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    lp = teacher_top_k(torch.randn(4, 9, generator=gen, dtype=torch.float64), 3).requires_grad_()
    lp.data[1, 0] = -math.inf
    mask = torch.tensor([True, True, False, True])
    assert torch.autograd.gradcheck(
        lambda x: uld_topk(x, lp, mask=mask, student_temperature=1.5, teacher_temperature=0.7), (s,)
    )
    uld_topk(s, lp).backward()
    assert lp.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_uld_topk_masked_rows_may_hold_garbage_and_all_masked_is_zero():
    gen = torch.Generator().manual_seed(6)
    s = torch.randn(2, 3, 6, generator=gen, requires_grad=True)
    lp = teacher_top_k(torch.randn(2, 3, 8, generator=gen), 4)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    garbage_s, garbage_lp = s.detach().clone(), lp.clone()
    garbage_s[~mask] = math.nan
    garbage_lp[~mask] = math.nan
    want = uld_topk(s, lp, mask=mask)
    got = uld_topk(garbage_s.requires_grad_(), garbage_lp, mask=mask)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    got.backward()
    assert torch.isfinite(garbage_s.grad).all() and torch.count_nonzero(garbage_s.grad[~mask]) == 0
    none = torch.zeros(2, 3, dtype=torch.bool)
    loss = uld_topk(s, lp, mask=none)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(s.grad) == 0


def test_uld_topk_reductions_and_num_tokens():
    gen = torch.Generator().manual_seed(7)
    s = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    lp = teacher_top_k(torch.randn(6, 8, generator=gen, dtype=torch.float64), 3)
    per_token = uld_topk(s, lp, reduction="none")
    assert uld_topk(s, lp, reduction="sum").item() == pytest.approx(per_token.sum().item(), rel=1e-12)
    parts = uld_topk(s[:2], lp[:2], num_tokens=6) + uld_topk(s[2:], lp[2:], num_tokens=6)
    assert parts.item() == pytest.approx(uld_topk(s, lp).item(), rel=1e-12)


def test_uld_topk_a_full_teacher_vocabulary_empties_its_tail():
    """teacher_vocab_size: a row with that many entries has no tail, so a large T_t cannot blow one up."""
    gen = torch.Generator().manual_seed(8)
    s, t = (
        torch.randn(3, 5, generator=gen, dtype=torch.float64),
        torch.randn(3, 4, generator=gen, dtype=torch.float64),
    )
    lp = teacher_top_k(t, 4)
    got = uld_topk(s, lp, teacher_temperature=4.0, teacher_vocab_size=4)
    assert got.item() == pytest.approx(uld(s, t, teacher_temperature=4.0).item(), rel=1e-12)
    with pytest.raises(ValueError, match="teacher_vocab_size must be >= the teacher's top-k width 4"):
        uld_topk(s, lp, teacher_vocab_size=3)


def test_uld_topk_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="same leading"):
        uld_topk(torch.randn(2, 3, 5), torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="floating point"):
        uld_topk(torch.randn(2, 5), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        uld_topk(torch.randn(2, 5), torch.randn(2, 3), student_temperature=0.0)
    with pytest.raises(ValueError, match="mask"):
        uld_topk(torch.randn(2, 5), torch.randn(2, 3), mask=torch.ones(3, dtype=torch.bool))
