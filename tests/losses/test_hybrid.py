"""Hybrid ULD (GOLD; ULD of Boizard et al. 2024 on the unmatched tokens): its limits (every token matched ->
the plain divergence, none -> ULD), a numpy reference for the dense and the top-k form, top-k == dense when
the top-k holds everything, gradients, masking, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdistill.losses import TOKEN_DIVERGENCES, hybrid, hybrid_topk, uld
from kdistill.losses.hybrid import hybrid_topk_parts

torch.set_num_threads(1)


def softmax(x, temp):
    z = x / temp
    e = np.exp(z - z.max())
    return e / e.sum()


def kl(p, q):
    """KL(p || q) with 0 log 0 = 0."""
    keep = p > 0
    return float((p[keep] * (np.log(p[keep]) - np.log(q[keep]))).sum())


DIVS = {"forward_kl": lambda ps, pt: kl(pt, ps), "reverse_kl": lambda ps, pt: kl(ps, pt)}


def sorted_l1(a, b):
    width = max(a.shape[0], b.shape[0])
    a = np.concatenate([np.sort(a)[::-1], np.zeros(width - a.shape[0])])
    b = np.concatenate([np.sort(b)[::-1], np.zeros(width - b.shape[0])])
    return float(np.abs(a - b).sum())


def numpy_hybrid(s, t, mapping, mask, div, ts, tt, wm, wu):
    """The definition written out with loops: the first teacher id claiming a student id is matched."""
    matched_t, matched_s = [], []
    for j, target in enumerate(mapping):
        if target >= 0 and target not in matched_s:
            matched_t.append(j)
            matched_s.append(int(target))
    other_s = [i for i in range(s.shape[-1]) if i not in matched_s]
    other_t = [j for j in range(t.shape[-1]) if j not in matched_t]
    values = []
    for row_s, row_t in zip(s, t, strict=True):
        ps, pt = softmax(row_s, ts), softmax(row_t, tt)
        qs = np.concatenate([ps[matched_s], [ps[other_s].sum()]])
        qt = np.concatenate([pt[matched_t], [pt[other_t].sum()]])
        values.append(wm * DIVS[div](qs, qt) + wu * sorted_l1(ps[other_s], pt[other_t]))
    values = np.array(values)
    return values[mask].sum() / max(mask.sum(), 1)


def numpy_hybrid_topk(s, ids, lp, div, ts, tt):
    """The top-k form per token (no mask): k + 1 tempered teacher categories, the first mapped candidate of a
    student id keeps it, the unmatched part over k entries without a tail."""
    values = []
    for row_s, row_ids, row_lp in zip(s, ids, lp, strict=True):
        k = row_lp.shape[0]
        ps = softmax(row_s, ts)
        known = np.isfinite(row_lp)
        tail = max(1.0 - np.exp(row_lp[known]).sum(), np.finfo(np.float64).tiny)
        logits = np.concatenate([np.where(known, row_lp, -np.inf), [np.log(tail)]]) / tt
        pt = np.exp(logits - logits.max())
        pt /= pt.sum()
        mapped, named = [], []
        for i in range(k):
            if known[i] and row_ids[i] >= 0 and row_ids[i] not in named:
                mapped.append(i)
                named.append(int(row_ids[i]))
        rest = [v for v in range(ps.shape[0]) if v not in named]
        qs = np.concatenate([ps[named], [ps[rest].sum()]])
        qt = np.concatenate([pt[mapped], [1.0 - pt[mapped].sum()]])
        unmapped_t = np.sort([pt[i] for i in range(k) if known[i] and i not in mapped])[::-1]
        top_s = np.sort(ps[rest])[::-1][:k]
        a = np.concatenate([top_s, np.zeros(k - top_s.shape[0])])
        b = np.concatenate([unmapped_t, np.zeros(k - unmapped_t.shape[0])])
        values.append((DIVS[div](qs, qt), float(np.abs(a - b).sum())))
    return np.array(values)


def random_map(gen, v_t, v_s):
    """A teacher -> student map with unmapped ids (-1) and several teacher ids sharing a student id."""
    mapping = torch.randint(0, v_s, (v_t,), generator=gen)
    return torch.where(torch.rand(v_t, generator=gen) < 0.3, -1, mapping)


@pytest.mark.parametrize("div", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize(("v_s", "v_t"), [(7, 11), (11, 6)])
@pytest.mark.parametrize(("ts", "tt", "wm", "wu"), [(1.0, 1.0, 1.0, 1.0), (2.0, 0.5, 0.3, 1.7)])
def test_dense_hybrid_matches_a_numpy_reference(div, v_s, v_t, ts, tt, wm, wu):
    gen = torch.Generator().manual_seed(v_s * 100 + v_t)
    s = torch.randn(9, v_s, generator=gen, dtype=torch.float64) * 2
    t = torch.randn(9, v_t, generator=gen, dtype=torch.float64) * 2
    mapping = random_map(gen, v_t, v_s)
    assert mapping[mapping >= 0].unique().numel() < (mapping >= 0).sum()  # the case has shared student ids
    mask = torch.rand(9, generator=gen) > 0.3
    got = hybrid(
        s,
        t,
        mapping,
        divergence=div,
        mask=mask,
        student_temperature=ts,
        teacher_temperature=tt,
        matched_weight=wm,
        unmatched_weight=wu,
    )
    want = numpy_hybrid(s.numpy(), t.numpy(), mapping.numpy(), mask.numpy(), div, ts, tt, wm, wu)
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("div", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize(("ts", "tt"), [(1.0, 1.0), (1.5, 0.6), (0.8, 2.5)])
def test_hybrid_topk_matches_a_numpy_reference(div, ts, tt):
    gen = torch.Generator().manual_seed(11)
    v_s, k = 8, 5
    s = torch.randn(10, v_s, generator=gen, dtype=torch.float64) * 2
    lp = torch.log_softmax(torch.randn(10, 14, generator=gen, dtype=torch.float64) * 2, -1).topk(k).values
    ids = torch.randint(-1, v_s, (10, k), generator=gen)
    ids[0] = torch.tensor([3, 3, -1, 5, 3])  # a student id named three times
    lp[1, 2] = -math.inf  # an absent candidate
    kw = {"divergence": div, "student_temperature": ts, "teacher_temperature": tt}
    matched, unmatched = hybrid_topk_parts(s, ids, lp, **kw)
    want = numpy_hybrid_topk(s.numpy(), ids.numpy(), lp.numpy(), div, ts, tt)
    np.testing.assert_allclose(matched.numpy(), want[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(unmatched.numpy(), want[:, 1], rtol=1e-10, atol=1e-12)
    total = hybrid_topk(s, ids, lp, matched_weight=0.4, unmatched_weight=2.0, reduction="none", **kw)
    torch.testing.assert_close(total, 0.4 * matched + 2.0 * unmatched, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "kwargs"), [("forward_kl", {}), ("generalized_jsd", {"beta": 0.3})])
def test_identity_map_and_full_vocabulary_is_the_plain_divergence(name, kwargs):
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(2, 4, 9, generator=gen, dtype=torch.float64)
    t = torch.randn(2, 4, 9, generator=gen, dtype=torch.float64) * 2
    identity = torch.arange(9)
    plain = TOKEN_DIVERGENCES.get(name)(s, t, temperature=1.5, **kwargs)
    kw = {
        "divergence": name,
        "divergence_kwargs": kwargs,
        "student_temperature": 1.5,
        "teacher_temperature": 1.5,
    }
    assert hybrid(s, t, identity, **kw).item() == pytest.approx(plain.item(), rel=1e-12)
    assert hybrid(s, t, identity, matched_weight=0.0, **kw).item() == 0.0
    # the same from a teacher known on its whole vocabulary (k = V, ids in shuffled order)
    top = torch.log_softmax(t, -1).topk(9)
    got = hybrid_topk(s, top.indices, top.values, teacher_vocab_size=9, **kw)
    assert got.item() == pytest.approx(plain.item(), rel=1e-10)
    matched, unmatched = hybrid_topk_parts(s, top.indices, top.values, teacher_vocab_size=9, **kw)
    assert unmatched.abs().max().item() < 1e-15


@pytest.mark.parametrize(("ts", "tt"), [(1.0, 1.0), (2.0, 0.5)])
def test_an_empty_map_is_uld(ts, tt):
    gen = torch.Generator().manual_seed(2)
    s = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    t = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    unmapped = torch.full((10,), -1)
    got = hybrid(s, t, unmapped, student_temperature=ts, teacher_temperature=tt)
    assert got.item() == pytest.approx(
        uld(s, t, student_temperature=ts, teacher_temperature=tt).item(), rel=1e-12
    )


@pytest.mark.parametrize("div", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize(("ts", "tt"), [(1.0, 1.0), (1.7, 0.5)])
def test_hybrid_topk_equals_hybrid_when_the_top_k_holds_everything(div, ts, tt):
    """Teacher support = its top-k (every mapped teacher id among them), the student's mass on the matched
    ids plus at most k others: then nothing beyond k is lost on either side."""
    gen = torch.Generator().manual_seed(3)
    v_s, v_t, k, rows = 9, 12, 4, 6
    support = torch.tensor([1, 4, 7, 10])  # the teacher's tokens, also its top-k
    mapping = torch.full((v_t,), -1)
    mapping[support] = torch.tensor([2, -1, 2, 5])  # teacher 1 and 7 share student 2: teacher 1 keeps it
    t = torch.full((rows, v_t), -math.inf, dtype=torch.float64)
    t[:, support] = torch.randn(rows, k, generator=gen, dtype=torch.float64) * 2
    s = torch.full((rows, v_s), -1e4, dtype=torch.float64)
    lives = torch.tensor([2, 5, 0, 3, 6, 8])  # matched ids 2, 5 and four others
    s[:, lives] = torch.randn(rows, lives.numel(), generator=gen, dtype=torch.float64)
    kw = {"divergence": div, "student_temperature": ts, "teacher_temperature": tt, "reduction": "none"}
    dense = hybrid(s, t, mapping, **kw)
    top = torch.log_softmax(t, -1).topk(k)
    order = top.indices.argsort(dim=-1)  # candidates by teacher id: the first of a shared id is the lowest
    teacher_ids = top.indices.gather(-1, order)
    sparse = hybrid_topk(s, mapping[teacher_ids], top.values.gather(-1, order), **kw)
    assert dense.min() > 0.05
    torch.testing.assert_close(sparse, dense, rtol=1e-9, atol=1e-12)


def test_a_duplicated_student_id_counts_once_for_its_first_candidate():
    gen = torch.Generator().manual_seed(4)
    s = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    lp = torch.log_softmax(torch.randn(3, 9, generator=gen, dtype=torch.float64), -1).topk(4).values
    ids = torch.tensor([[1, 4, 1, 0], [2, 2, 2, 2], [5, -1, 3, 5]])
    deduplicated = torch.tensor([[1, 4, -1, 0], [2, -1, -1, -1], [5, -1, 3, -1]])
    torch.testing.assert_close(
        hybrid_topk(s, ids, lp, reduction="none"), hybrid_topk(s, deduplicated, lp, reduction="none")
    )


def test_gradcheck_dense_and_top_k():
    gen = torch.Generator().manual_seed(5)
    s = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    mapping = torch.tensor([0, -1, 3, 3, 5, -1, 1, 2])
    mask = torch.tensor([True, False, True, True])
    assert torch.autograd.gradcheck(
        lambda x: hybrid(
            x,
            t,
            mapping,
            divergence="generalized_jsd",
            divergence_kwargs={"beta": 0.3},
            mask=mask,
            student_temperature=1.3,
            teacher_temperature=0.8,
            matched_weight=0.7,
        ),
        (s,),
    )
    lp = torch.log_softmax(t, -1).topk(4).values
    ids = torch.tensor([[0, -1, 3, 5], [2, 4, -1, 1], [3, 3, 0, -1], [5, 1, 2, 0]])
    assert torch.autograd.gradcheck(
        lambda x: hybrid_topk(
            x, ids, lp, divergence="reverse_kl", mask=mask, student_temperature=0.9, teacher_temperature=1.4
        ),
        (s,),
    )


def test_teacher_gets_no_gradient():
    gen = torch.Generator().manual_seed(6)
    s = torch.randn(3, 5, generator=gen, requires_grad=True)
    t = torch.randn(3, 7, generator=gen, requires_grad=True)
    lp = torch.log_softmax(torch.randn(3, 7, generator=gen), -1).topk(3).values.requires_grad_()
    (
        hybrid(s, t, torch.tensor([0, 1, -1, 2, 4, -1, 3]))
        + hybrid_topk(s, torch.tensor([[0, 1, -1]] * 3), lp)
    ).backward()
    assert t.grad is None and lp.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_masked_rows_may_hold_garbage_and_all_masked_is_zero():
    gen = torch.Generator().manual_seed(7)
    s = torch.randn(2, 3, 6, generator=gen, requires_grad=True)
    t = torch.randn(2, 3, 8, generator=gen)
    lp = torch.log_softmax(t, -1).topk(4).values
    ids = torch.randint(-1, 6, (2, 3, 4), generator=gen)
    mapping = torch.tensor([0, -1, 3, 3, 5, -1, 1, 2])
    mask = torch.tensor([[True, False, True], [False, True, True]])
    bad_s, bad_t, bad_lp, bad_ids = s.detach().clone(), t.clone(), lp.clone(), ids.clone()
    bad_s[~mask], bad_t[~mask], bad_lp[~mask], bad_ids[~mask] = math.nan, math.inf, math.nan, 10**6
    bad_s.requires_grad_()
    for loss, good, bad in [
        (hybrid, (s, t, mapping), (bad_s, bad_t, mapping)),
        (hybrid_topk, (s, ids, lp), (bad_s, bad_ids, bad_lp)),
    ]:
        want, got = loss(*good, mask=mask), loss(*bad, mask=mask)
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
        bad_s.grad = None
        got.backward()
        assert torch.isfinite(bad_s.grad).all() and torch.count_nonzero(bad_s.grad[~mask]) == 0
        s.grad = None
        zero = loss(*good, mask=torch.zeros(2, 3, dtype=torch.bool))
        zero.backward()
        assert zero.item() == 0.0 and torch.count_nonzero(s.grad) == 0


def test_sum_of_micro_batches_with_num_tokens_is_the_full_batch_mean():
    gen = torch.Generator().manual_seed(8)
    s, t = (
        torch.randn(6, 5, generator=gen, dtype=torch.float64),
        torch.randn(6, 7, generator=gen, dtype=torch.float64),
    )
    mapping = torch.tensor([0, 1, -1, 2, 4, -1, 3])
    parts = hybrid(s[:2], t[:2], mapping, num_tokens=6) + hybrid(s[2:], t[2:], mapping, num_tokens=6)
    assert parts.item() == pytest.approx(hybrid(s, t, mapping).item(), rel=1e-12)
    lp = torch.log_softmax(t, -1).topk(3).values
    ids = torch.tensor([[0, 1, -1]] * 6)
    assert hybrid_topk(s, ids, lp, reduction="sum").item() == pytest.approx(
        hybrid_topk(s, ids, lp, reduction="none").sum().item(), rel=1e-12
    )


def test_bad_inputs_are_clear_errors():
    s, t = torch.randn(2, 5), torch.randn(2, 7)
    with pytest.raises(ValueError, match=r"teacher_to_student \(6,\) must be \(7,\)"):
        hybrid(s, t, torch.zeros(6, dtype=torch.int64))
    with pytest.raises(ValueError, match="teacher_to_student values must lie in"):
        hybrid(s, t, torch.full((7,), 5))
    with pytest.raises(ValueError, match="teacher_to_student must be an integer"):
        hybrid(s, t, torch.zeros(7))
    with pytest.raises(ValueError, match="same leading"):
        hybrid(s, torch.randn(3, 7), torch.zeros(7, dtype=torch.int64))
    with pytest.raises(ValueError, match="teacher_student_ids .* differ in shape"):
        hybrid_topk(s, torch.zeros(2, 4, dtype=torch.int64), torch.randn(2, 3))
    with pytest.raises(ValueError, match="teacher_student_ids must be an integer"):
        hybrid_topk(s, torch.zeros(2, 3), torch.randn(2, 3))
    with pytest.raises(TypeError, match="has no parameter"):
        hybrid(s, t, torch.zeros(7, dtype=torch.int64), divergence_kwargs={"beta": 0.5})
    with pytest.raises(KeyError, match="did you mean 'forward_kl'"):
        hybrid_topk(s, torch.zeros(2, 3, dtype=torch.int64), torch.randn(2, 3), divergence="fwd_kl")
