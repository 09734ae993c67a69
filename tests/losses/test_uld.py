"""ULD (Boizard et al. 2024) against an independent numpy computation, its bounds and invariances, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.losses import uld


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
