"""chunked_cross_entropy == F.cross_entropy(reduction="sum") on the full logits, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.losses import chunked_cross_entropy


def _inputs(lead, vocab, hidden, *, bias, ignore_p, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(*lead, hidden, generator=g, dtype=dtype) * 2).requires_grad_()
    w = torch.randn(vocab, hidden, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(vocab, generator=g, dtype=dtype).requires_grad_() if bias else None
    labels = torch.randint(0, vocab, lead, generator=g)
    labels[torch.rand(lead, generator=g) < ignore_p] = -100
    return h, w, b, labels


def _plain(h, w, b, labels):
    logits = F.linear(h, w, b)  # (..., V)
    return F.cross_entropy(
        logits.reshape(-1, w.shape[0]), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    seq=st.integers(1, 9),
    vocab=st.integers(2, 17),
    chunk=st.integers(1, 12),
    bias=st.booleans(),
    ignore_p=st.sampled_from([0.0, 0.4, 1.0]),
    seed=st.integers(0, 1000),
)
def test_value_and_gradients_equal_the_full_logits_cross_entropy(
    batch, seq, vocab, chunk, bias, ignore_p, seed
):
    h, w, b, labels = _inputs((batch, seq), vocab, 5, bias=bias, ignore_p=ignore_p, seed=seed)
    expected = _plain(h, w, b, labels)
    got = chunked_cross_entropy(h, w, head_bias=b, labels=labels, chunk_size=chunk)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # a factor on the output (the loop divides by the window's token count) reaches every gradient
    for want, have in zip(_grads(expected * 0.37, (h, w, b)), _grads(got * 0.37, (h, w, b)), strict=True):
        torch.testing.assert_close(have, want, rtol=1e-10, atol=1e-10)


def test_float32_matches_within_1e5_and_extreme_logits_stay_finite():
    h, w, b, labels = _inputs((4, 33), 50, 8, bias=True, ignore_p=0.2, seed=3, dtype=torch.float32)
    with torch.no_grad():
        h.mul_(40.0)  # logits in the hundreds: a naive exp would overflow
    expected, got = (
        _plain(h, w, b, labels),
        chunked_cross_entropy(h, w, head_bias=b, labels=labels, chunk_size=16),
    )
    assert torch.isfinite(got)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for want, have in zip(_grads(expected, (h, w, b)), _grads(got, (h, w, b)), strict=True):
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)


def test_all_ignored_gives_zero_with_zero_gradients_and_no_grad_gives_the_value():
    h, w, b, labels = _inputs((2, 5), 7, 3, bias=True, ignore_p=1.0, seed=0)
    loss = chunked_cross_entropy(h, w, head_bias=b, labels=labels, chunk_size=4)
    assert loss.item() == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in _grads(loss, (h, w, b)))
    h, w, b, labels = _inputs((2, 5), 7, 3, bias=False, ignore_p=0.3, seed=1)
    with torch.no_grad():
        value = chunked_cross_entropy(h, w, labels=labels, chunk_size=3)
    assert value.item() == pytest.approx(_plain(h, w, None, labels).item(), rel=1e-12)


def test_float64_gradcheck():
    h, w, b, labels = _inputs((2, 3), 6, 4, bias=True, ignore_p=0.3, seed=5)
    assert torch.autograd.gradcheck(
        lambda h, w, b: chunked_cross_entropy(h, w, head_bias=b, labels=labels, chunk_size=2), (h, w, b)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": torch.zeros(2, 5)}, "labels must be an integer tensor"),
        ({"labels": torch.zeros(2, 4, dtype=torch.long)}, "does not match the leading shape"),
        (
            {"labels": torch.zeros(2, 5, dtype=torch.long), "chunk_size": 0},
            "chunk_size must be a positive int",
        ),
        (
            {"labels": torch.zeros(2, 5, dtype=torch.long), "head_bias": torch.zeros(3)},
            r"student_head_bias must be \(7,\)",
        ),
    ],
)
def test_bad_inputs_name_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        chunked_cross_entropy(torch.zeros(2, 5, 3), torch.zeros(7, 3), **kwargs)


def test_under_bf16_autocast_the_head_runs_in_bf16_and_gradients_keep_the_parameters_dtype():
    """Mixed precision (accelerate wraps forward in autocast): the chunk logits are bf16 like the model's
    own head output, the loss matches the full-logits loss under the same autocast, and the gradients come
    back in the float32 dtypes of hidden/weight/bias."""
    from kdistill.losses import chunked_distill_loss

    h, w, b, labels = _inputs((3, 10), 40, 16, bias=True, ignore_p=0.2, seed=7, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(h, w, b)
        assert logits.dtype == torch.bfloat16
        expected = F.cross_entropy(logits.float().reshape(-1, 40), labels.reshape(-1), reduction="sum")
        got = chunked_cross_entropy(h, w, head_bias=b, labels=labels, chunk_size=8)
        teacher = torch.randn(3, 10, 16)
        kd = chunked_distill_loss(
            h, w, student_head_bias=b, teacher_hidden=teacher, teacher_head=w.detach(), chunk_size=8
        ).divergence
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    want = _grads(expected, (h, w, b))
    for have, ref in zip(_grads(got, (h, w, b)), want, strict=True):
        assert have.dtype == torch.float32
        torch.testing.assert_close(have, ref, rtol=0.05, atol=0.05)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in _grads(kd, (h, w, b)))
