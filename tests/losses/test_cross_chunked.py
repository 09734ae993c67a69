"""chunked_cross_tokenizer_loss == the dense composition (whole logits -> uld_topk / hybrid_topk, reduction
"sum"), values and gradients, for any chunk size; nothing of vocabulary width is kept for backward."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from kdistill.losses import CrossTokenizerLoss, chunked_cross_tokenizer_loss, hybrid_topk, uld_topk

torch.set_num_threads(1)

ROWS, HIDDEN, VOCAB, K = 7, 5, 11, 3


def make_inputs(seed: int = 0, bias: bool = True) -> dict[str, Any]:
    """Student hidden/head (float32, requiring grad) and a top-k teacher over 13 tokens, some candidates
    unmapped (-1) or absent (-inf), a few rows exact, a few masked."""
    g = torch.Generator().manual_seed(seed)
    logprobs = torch.log_softmax(torch.randn(ROWS, 13, generator=g) * 2, -1).topk(K).values
    logprobs[2, 1] = -math.inf
    ids = torch.stack([torch.randperm(VOCAB, generator=g)[:K] for _ in range(ROWS)])
    ids = torch.where(torch.rand(ROWS, K, generator=g) < 0.3, -1, ids)
    inputs = {
        "hidden": torch.randn(ROWS, HIDDEN, generator=g).requires_grad_(),
        "head_weight": (torch.randn(VOCAB, HIDDEN, generator=g) / 2).requires_grad_(),
        "head_bias": torch.randn(VOCAB, generator=g).requires_grad_() if bias else None,
        "teacher_student_ids": ids,
        "teacher_logprobs": logprobs,
        "exact": torch.tensor([True, False, True, True, False, True, False]),
        "mask": torch.tensor([True, True, False, True, True, True, False]),
    }
    return inputs


def dense_composition(inputs: dict[str, Any], loss: str, kw: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """(total, matched, unmatched) from the whole logits at once."""
    logits = inputs["hidden"] @ inputs["head_weight"].T
    if inputs["head_bias"] is not None:
        logits = logits + inputs["head_bias"]
    ids, lp, mask = inputs["teacher_student_ids"], inputs["teacher_logprobs"], inputs["mask"]
    temps = {k: kw[k] for k in ("student_temperature", "teacher_temperature") if k in kw}
    wm, wu = kw.get("matched_weight", 1.0), kw.get("unmatched_weight", 1.0)
    if loss == "uld":
        unmatched = uld_topk(logits, lp, mask=mask, reduction="sum", **temps)
        return wu * unmatched, torch.zeros(()), unmatched
    div = {k: kw[k] for k in ("divergence", "divergence_kwargs") if k in kw}
    exact = mask & inputs["exact"]
    part = {"mask": exact, "reduction": "sum", **temps, **div}
    matched = hybrid_topk(logits, ids, lp, matched_weight=1.0, unmatched_weight=0.0, **part)
    unmatched = hybrid_topk(logits, ids, lp, matched_weight=0.0, unmatched_weight=1.0, **part)
    unmatched = unmatched + uld_topk(logits, lp, mask=mask & ~inputs["exact"], reduction="sum", **temps)
    return wm * matched + wu * unmatched, matched, unmatched


def grads(outputs: tuple[torch.Tensor, ...], inputs: dict[str, Any]) -> list[torch.Tensor]:
    """Gradients of a mix of the three outputs (each gets its own factor: all three must be right)."""
    total, matched, unmatched = outputs
    mix = total + 0.3 * unmatched + (0.7 * matched if matched.requires_grad else 0.0)
    params = [inputs[n] for n in ("hidden", "head_weight", "head_bias") if inputs[n] is not None]
    return list(torch.autograd.grad(mix, params))


CASES = [
    ("uld", {}),
    ("uld", {"student_temperature": 1.7, "teacher_temperature": 0.6, "unmatched_weight": 0.5}),
    ("hybrid", {}),
    (
        "hybrid",
        {
            "divergence": "generalized_jsd",
            "divergence_kwargs": {"beta": 0.3},
            "student_temperature": 0.8,
            "teacher_temperature": 1.5,
            "matched_weight": 0.4,
            "unmatched_weight": 2.0,
        },
    ),
]


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
@pytest.mark.parametrize(("loss", "kw"), CASES, ids=[f"{loss}-{i}" for i, (loss, _) in enumerate(CASES)])
def test_equals_the_dense_composition_in_value_and_gradients(loss, kw, chunk_size):
    inputs = make_inputs(seed=chunk_size, bias=chunk_size != 3)
    got = chunked_cross_tokenizer_loss(**inputs, loss=loss, chunk_size=chunk_size, **kw)
    assert isinstance(got, CrossTokenizerLoss)
    want = dense_composition(inputs, loss, kw)
    for a, b in zip((got.total, got.matched, got.unmatched), want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert got.unmatched.item() > 0.1 and (loss == "uld" or got.matched.item() > 0.01)
    for a, b in zip(grads((got.total, got.matched, got.unmatched), inputs), grads(want, inputs), strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_without_grad_the_value_is_the_same():
    inputs = make_inputs(seed=4)
    with_grad = chunked_cross_tokenizer_loss(**inputs, loss="hybrid", chunk_size=2)
    with torch.no_grad():
        without = chunked_cross_tokenizer_loss(**inputs, loss="hybrid", chunk_size=2)
    assert without.total.grad_fn is None
    torch.testing.assert_close(without.total, with_grad.total.detach())


@pytest.mark.parametrize("loss", ["uld", "hybrid"])
def test_all_masked_is_zero_with_zero_gradients(loss):
    inputs = make_inputs(seed=5)
    inputs["mask"] = torch.zeros(ROWS, dtype=torch.bool)
    inputs["teacher_logprobs"] = torch.full((ROWS, K), math.nan)  # never read
    got = chunked_cross_tokenizer_loss(**inputs, loss=loss, chunk_size=3)
    assert got.total.item() == got.matched.item() == got.unmatched.item() == 0.0
    got.total.backward()
    for name in ("hidden", "head_weight", "head_bias"):
        assert torch.count_nonzero(inputs[name].grad) == 0, name


def test_masked_rows_may_hold_garbage():
    inputs = make_inputs(seed=6)
    want = chunked_cross_tokenizer_loss(**inputs, loss="hybrid", chunk_size=2).total
    dropped = ~inputs["mask"]
    inputs["hidden"] = inputs["hidden"].detach().clone()
    inputs["hidden"][dropped] = math.nan
    inputs["teacher_logprobs"] = inputs["teacher_logprobs"].clone()
    inputs["teacher_logprobs"][dropped] = math.nan
    inputs["teacher_student_ids"] = inputs["teacher_student_ids"].clone()
    inputs["teacher_student_ids"][dropped] = 10**6
    got = chunked_cross_tokenizer_loss(**inputs, loss="hybrid", chunk_size=2).total
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("loss", ["uld", "hybrid"])
def test_the_forward_keeps_nothing_of_vocabulary_width_for_backward(loss):
    """Only each chunk's inputs are saved; its (chunk, V) logits are recomputed in backward."""
    inputs = make_inputs(seed=7)
    saved: list[tuple[int, ...]] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        got = chunked_cross_tokenizer_loss(**inputs, loss=loss, chunk_size=2)
    assert saved, "the hook saw nothing: the test would prove nothing"
    assert [s for s in saved if len(s) == 2 and s[-1] == VOCAB] == []
    got.total.backward()
    assert inputs["head_weight"].grad.abs().sum() > 0


def test_bad_inputs_are_clear_errors():
    inputs = make_inputs()
    with pytest.raises(ValueError, match="loss must be 'uld' or 'hybrid'"):
        chunked_cross_tokenizer_loss(**inputs, loss="gold")
    with pytest.raises(ValueError, match="needs teacher_student_ids and exact"):
        chunked_cross_tokenizer_loss(**{**inputs, "exact": None}, loss="hybrid")
    with pytest.raises(ValueError, match=r"head_weight \(11, 4\) must be \(V, 5\)"):
        chunked_cross_tokenizer_loss(**{**inputs, "head_weight": torch.randn(VOCAB, 4)}, loss="uld")
    with pytest.raises(ValueError, match=r"exact must be a \(7,\) bool tensor"):
        chunked_cross_tokenizer_loss(**{**inputs, "exact": torch.ones(ROWS)}, loss="hybrid")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        chunked_cross_tokenizer_loss(**inputs, loss="uld", chunk_size=0)
    with pytest.raises(TypeError, match="has no parameter"):  # even though every row is masked
        all_masked = {**inputs, "mask": torch.zeros(ROWS, dtype=torch.bool)}
        chunked_cross_tokenizer_loss(**all_masked, loss="hybrid", divergence_kwargs={"beta": 0.5})


# ---------------------------------------------------------------- the fused training form


@pytest.mark.parametrize("loss", ["uld", "hybrid"])
@pytest.mark.parametrize("chunk_size", [1, 3, 100])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_loss_equals_ce_plus_the_chunked_cross_loss(loss, chunk_size, with_bias):
    """One pass forming the gradients in forward == the CE on every row + the checkpointed cross loss on
    the chosen rows, in value and in the gradients w.r.t. hidden, weight and bias."""
    import torch.nn.functional as F

    from kdistill.losses.cross_chunked import fused_cross_tokenizer_loss

    gen = torch.Generator().manual_seed(7)
    rows, width, vocab, k = 9, 6, 13, 4
    hidden = torch.randn(rows, width, generator=gen, dtype=torch.float64)
    weight = torch.randn(vocab, width, generator=gen, dtype=torch.float64)
    bias = torch.randn(vocab, generator=gen, dtype=torch.float64) if with_bias else None
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    labels[2] = -100
    cross_rows = torch.tensor([0, 3, 4, 8])
    ids = torch.randint(-1, vocab, (4, k), generator=gen)
    logprobs = torch.log_softmax(torch.randn(4, k + 3, generator=gen, dtype=torch.float64), -1)[:, :k]
    exact = torch.tensor([True, False, True, True])
    kwargs = dict(teacher_logprobs=logprobs, loss=loss, teacher_student_ids=ids, exact=exact)
    weights = dict(matched_weight=0.7, unmatched_weight=1.3)

    def reference(h, w, b):
        ce = F.cross_entropy(F.linear(h, w, b), labels, ignore_index=-100, reduction="sum")
        cross = chunked_cross_tokenizer_loss(h[cross_rows], w, b, chunk_size=2, **kwargs, **weights)
        return 0.5 * ce + 2.0 * cross.total

    leaves = [t.clone().requires_grad_() for t in (hidden, weight) + ((bias,) if bias is not None else ())]
    expected = reference(leaves[0], leaves[1], leaves[2] if bias is not None else None)
    expected_grads = torch.autograd.grad(expected, leaves)

    fused_leaves = [t.clone().requires_grad_() for t in leaves]
    got = fused_cross_tokenizer_loss(
        fused_leaves[0],
        fused_leaves[1],
        fused_leaves[2] if bias is not None else None,
        labels=labels,
        cross_rows=cross_rows,
        kd_weight=2.0,
        ce_weight=0.5,
        chunk_size=chunk_size,
        **kwargs,
        **weights,
    )
    torch.testing.assert_close(got.total, expected)
    for a, b in zip(torch.autograd.grad(got.total * 3.0, fused_leaves), expected_grads, strict=True):
        torch.testing.assert_close(a, 3.0 * b)
    assert not got.ce.requires_grad and got.ce > 0
    torch.testing.assert_close(got.total, 0.5 * got.ce + 2.0 * (0.7 * got.matched + 1.3 * got.unmatched))


def test_fused_loss_rejects_labels_of_another_length():
    from kdistill.losses.cross_chunked import fused_cross_tokenizer_loss

    with pytest.raises(ValueError, match=r"labels \(3,\) must be \(4,\)"):
        fused_cross_tokenizer_loss(
            torch.zeros(4, 2),
            torch.zeros(5, 2),
            labels=torch.zeros(3, dtype=torch.long),
            cross_rows=torch.tensor([0]),
            teacher_logprobs=torch.zeros(1, 2),
            loss="uld",
        )
