"""chunked_distill_loss == the plain computation (full logits -> the token function), values and gradients."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill.losses import SPARSE_TOKEN_DIVERGENCES, TOKEN_DIVERGENCES
from kdistill.losses.chunked import chunked_distill_loss
from kdistill.registry import UnknownNameError

CASES: list[tuple[str, dict[str, Any]]] = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("generalized_jsd", {"beta": 0.5}),
    ("generalized_jsd", {"beta": 0.0}),
    ("generalized_jsd", {"beta": 1.0}),
    ("skew_kl", {"alpha": 0.1}),
    ("skew_kl", {"alpha": 0.3, "reverse": True}),
    ("tvd", {}),
]
CASE_IDS = [f"{name}{params}" for name, params in CASES]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def make_inputs(
    *,
    lead: tuple[int, ...] = (2, 7),
    vocab: int = 13,
    hidden: int = 5,
    teacher_hidden: int = 6,
    top_k: int = 4,
    sparse: bool = False,
    mask_p: float | None = None,
    labels: bool = False,
    bias: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Random student hidden/head (requiring grad), a dense or top-k teacher, optional mask and labels."""
    g = torch.Generator().manual_seed(seed)
    kw: dict[str, Any] = {
        "student_hidden": torch.randn(*lead, hidden, generator=g, dtype=dtype).requires_grad_(),
        "student_head": (torch.randn(vocab, hidden, generator=g, dtype=dtype) / 2).requires_grad_(),
    }
    if bias:
        kw["student_head_bias"] = torch.randn(vocab, generator=g, dtype=dtype).requires_grad_()
    t_hidden = torch.randn(*lead, teacher_hidden, generator=g, dtype=dtype)
    t_head = torch.randn(vocab, teacher_hidden, generator=g, dtype=dtype) / 2
    if sparse:
        log_p = F.log_softmax(t_hidden @ t_head.T, dim=-1)  # (..., V)
        top = log_p.topk(top_k, dim=-1)
        ids = top.indices.clone()
        ids[..., -1] = torch.where(torch.rand(lead, generator=g) < 0.3, -1, ids[..., -1])  # some padding
        kw["teacher_ids"], kw["teacher_logprobs"] = ids, top.values
    else:
        kw["teacher_hidden"], kw["teacher_head"] = t_hidden, t_head
    if mask_p is not None:
        kw["mask"] = torch.rand(lead, generator=g) < mask_p
    if labels:
        y = torch.randint(0, vocab, lead, generator=g)
        kw["labels"] = torch.where(torch.rand(lead, generator=g) < 0.25, -100, y)
    return kw


def plain(
    kw: dict[str, Any],
    *,
    divergence: str = "forward_kl",
    divergence_kwargs: dict | None = None,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    num_tokens: Any = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference: full (.., V) logits, the registry function with reduction="mean", CE summed by torch."""
    logits = F.linear(kw["student_hidden"], kw["student_head"], kw.get("student_head_bias"))  # (..., V)
    options = {
        "mask": kw.get("mask"),
        "temperature": temperature,
        "scale_by_t2": scale_by_t2,
        "num_tokens": num_tokens,
        **(divergence_kwargs or {}),
    }
    if "teacher_ids" in kw:
        teacher = (kw["teacher_ids"], kw["teacher_logprobs"])
        div = SPARSE_TOKEN_DIVERGENCES.get(divergence)(logits, *teacher, **options)
    else:
        with torch.no_grad():
            teacher_logits = kw["teacher_hidden"] @ kw["teacher_head"].T
        div = TOKEN_DIVERGENCES.get(divergence)(logits, teacher_logits, **options)
    nll = None
    if "labels" in kw:
        as_float = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bfloat16 -> float32
        nll = F.cross_entropy(
            as_float.reshape(-1, logits.shape[-1]),
            kw["labels"].reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
    return div, nll


def student_params(kw: dict[str, Any]) -> list[torch.Tensor]:
    return [kw[k] for k in ("student_hidden", "student_head", "student_head_bias") if k in kw]


def assert_same_as_plain(kw: dict[str, Any], chunk_size: int, *, fused: bool = False, **options: Any) -> None:
    """Value and gradients of 0.7 * divergence + 0.3 * nll_sum (different weights test the combination).

    fused: pass the weights to chunked_distill_loss, which then forms one gradient per chunk.
    """
    weights = {"kd_weight": 0.7, "ce_weight": 0.3} if fused else {}
    out = chunked_distill_loss(**kw, chunk_size=chunk_size, **weights, **options)
    ref_div, ref_nll = plain(kw, **options)
    torch.testing.assert_close(out.divergence, ref_div, **TOL)
    loss, ref = 0.7 * out.divergence, 0.7 * ref_div
    if ref_nll is not None:
        torch.testing.assert_close(out.nll_sum, ref_nll, **TOL)
        loss, ref = loss + 0.3 * out.nll_sum, ref + 0.3 * ref_nll
    else:
        assert out.nll_sum is None and out.label_tokens is None
    params = student_params(kw)
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params), strict=True):
        torch.testing.assert_close(got, want, **TOL)


# --- equality with the plain computation --------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_every_divergence_unmasked_matches_plain(name: str, params: dict, sparse: bool) -> None:
    kw = make_inputs(sparse=sparse, seed=1)
    assert_same_as_plain(kw, chunk_size=4, divergence=name, divergence_kwargs=params)  # 14 tokens: 4+4+4+2


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_every_divergence_masked_with_labels_and_temperature_matches_plain(
    name: str, params: dict, sparse: bool
) -> None:
    kw = make_inputs(sparse=sparse, mask_p=0.6, labels=True, seed=2)
    assert_same_as_plain(
        kw, chunk_size=3, divergence=name, divergence_kwargs=params, temperature=1.7, scale_by_t2=True
    )


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_chunk_larger_than_tokens_and_flat_tokens(sparse: bool) -> None:
    assert_same_as_plain(make_inputs(sparse=sparse, mask_p=0.5, labels=True, seed=3), chunk_size=1000)
    assert_same_as_plain(make_inputs(lead=(9,), sparse=sparse, mask_p=0.5, seed=4), chunk_size=2)


def test_one_token_chunks_without_bias() -> None:
    assert_same_as_plain(make_inputs(bias=False, mask_p=0.7, labels=True, seed=5), chunk_size=1)


@pytest.mark.parametrize("num_tokens", [40, torch.tensor(40), 0])
def test_num_tokens_is_the_denominator(num_tokens: Any) -> None:
    kw = make_inputs(mask_p=0.5, seed=6)
    assert_same_as_plain(kw, chunk_size=5, num_tokens=num_tokens)
    out = chunked_distill_loss(**kw, chunk_size=5, num_tokens=num_tokens)
    summed = chunked_distill_loss(**kw, chunk_size=5, num_tokens=1)  # denominator 1: the plain sum
    torch.testing.assert_close(out.divergence, summed.divergence / max(int(num_tokens), 1))
    assert out.tokens.item() == int(kw["mask"].sum())


def test_float64_inputs_stay_float64() -> None:
    kw = make_inputs(mask_p=0.6, labels=True, seed=7, dtype=torch.float64)
    out = chunked_distill_loss(**kw, chunk_size=4)
    assert out.divergence.dtype == torch.float64 and out.nll_sum.dtype == torch.float64
    assert_same_as_plain(kw, chunk_size=4)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_all_masked_gives_zero_with_zero_finite_gradients(sparse: bool) -> None:
    kw = make_inputs(sparse=sparse, labels=True, seed=8)
    kw["mask"] = torch.zeros(2, 7, dtype=torch.bool)
    kw["labels"] = torch.full((2, 7), -100)
    out = chunked_distill_loss(**kw, chunk_size=3)
    assert out.divergence.item() == 0.0 and out.nll_sum.item() == 0.0
    assert out.tokens.item() == 0 and out.label_tokens.item() == 0
    for grad in torch.autograd.grad(out.divergence + out.nll_sum, student_params(kw)):
        assert torch.equal(grad, torch.zeros_like(grad))


def test_masked_garbage_does_not_leak() -> None:
    kw = make_inputs(mask_p=0.5, seed=9)
    with torch.no_grad():
        kw["student_hidden"][~kw["mask"]] = float("nan")
        kw["teacher_hidden"][~kw["mask"]] = float("inf")
    out = chunked_distill_loss(**kw, chunk_size=3)
    grads = torch.autograd.grad(out.divergence, student_params(kw))
    assert torch.isfinite(out.divergence) and all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(grads[0][~kw["mask"]], torch.zeros_like(grads[0][~kw["mask"]]))


# --- gradients flow where they should -------------------------------------------------------------------


def test_teacher_gets_no_gradient_even_if_it_requires_grad() -> None:
    kw = make_inputs(seed=10)
    kw["teacher_hidden"].requires_grad_()
    kw["teacher_head"].requires_grad_()
    out = chunked_distill_loss(**kw, chunk_size=4)
    out.divergence.backward()
    assert kw["teacher_hidden"].grad is None and kw["teacher_head"].grad is None
    assert kw["student_head"].grad is not None and kw["student_head"].grad.abs().sum() > 0


def test_frozen_head_only_hidden_gets_gradient() -> None:
    kw = make_inputs(seed=11, labels=True)
    kw["student_head"].requires_grad_(False)
    kw["student_head_bias"].requires_grad_(False)
    out = chunked_distill_loss(**kw, chunk_size=4)
    ref_div, ref_nll = plain(kw)
    (got,) = torch.autograd.grad(out.divergence - out.nll_sum, [kw["student_hidden"]])
    (want,) = torch.autograd.grad(ref_div - ref_nll, [kw["student_hidden"]])
    torch.testing.assert_close(got, want, **TOL)


def test_no_grad_gives_the_same_values_without_a_graph() -> None:
    kw = make_inputs(mask_p=0.6, labels=True, seed=12)
    with torch.no_grad():
        out = chunked_distill_loss(**kw, chunk_size=3)
    ref_div, ref_nll = plain(kw)
    assert out.divergence.grad_fn is None and out.nll_sum.grad_fn is None
    torch.testing.assert_close(out.divergence, ref_div.detach(), **TOL)
    torch.testing.assert_close(out.nll_sum, ref_nll.detach(), **TOL)


def test_backward_twice_with_retain_graph_accumulates_correctly() -> None:
    kw = make_inputs(seed=13, labels=True)
    out = chunked_distill_loss(**kw, chunk_size=4)
    loss = out.divergence + 0.1 * out.nll_sum
    loss.backward(retain_graph=True)
    once = kw["student_head"].grad.clone()
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(kw["student_head"].grad, 3 * once)


def test_low_precision_logits_float32_divergence() -> None:
    kw = make_inputs(mask_p=0.7, labels=True, seed=14)
    low = {
        k: (v.detach().to(torch.bfloat16).requires_grad_(v.requires_grad) if v.is_floating_point() else v)
        for k, v in kw.items()
    }
    out = chunked_distill_loss(**low, chunk_size=4)
    assert out.divergence.dtype == torch.float32 and out.nll_sum.dtype == torch.float32
    ref_div, ref_nll = plain(low)  # the plain path in bfloat16: same matmuls, so close but not bitwise
    torch.testing.assert_close(out.divergence, ref_div, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out.nll_sum, ref_nll, rtol=1e-3, atol=1e-2)
    grads = torch.autograd.grad(out.divergence + out.nll_sum, student_params(low))
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3
    # float32 master weights with bfloat16 activations: logits in bfloat16, weight gradient in float32
    mixed = dict(low, student_head=kw["student_head"], student_head_bias=kw["student_head_bias"])
    out = chunked_distill_loss(**mixed, chunk_size=4)
    grad_w, grad_b = torch.autograd.grad(out.divergence, [kw["student_head"], kw["student_head_bias"]])
    assert grad_w.dtype == torch.float32 and grad_b.dtype == torch.float32
    (want_w,) = torch.autograd.grad(plain(kw)[0], [kw["student_head"]])
    torch.testing.assert_close(grad_w, want_w, rtol=0.05, atol=0.02)


# --- memory: nothing of size tokens x vocab is kept for backward -----------------------------------------


def saved_numels(fn: Any) -> tuple[list[int], torch.Tensor]:
    """Run fn() recording the number of elements of every tensor autograd saves for backward."""
    numels: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        numels.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    return numels, loss


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize(("name", "params"), [("forward_kl", {}), ("generalized_jsd", {"beta": 0.5})])
def test_chunked_forward_saves_no_full_logits(sparse: bool, name: str, params: dict) -> None:
    kw = make_inputs(lead=(4, 8), vocab=37, hidden=3, sparse=sparse, labels=True, seed=15)
    tokens_x_vocab = 32 * 37  # more than any head-sized tensor (37 x 3) or chunk (8 x 37)
    numels, out = saved_numels(
        lambda: chunked_distill_loss(**kw, chunk_size=8, divergence=name, divergence_kwargs=params)
    )
    assert numels and max(numels) <= 8 * 37
    out.divergence.backward()  # and it still differentiates
    plain_numels, _ = saved_numels(lambda: plain(kw)[0])
    assert max(plain_numels) >= tokens_x_vocab


# --- fused KD + CE: one gradient per chunk ------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_fused_gradient_is_the_weighted_sum_of_the_separate_ones(
    name: str, params: dict, sparse: bool, temperature: float
) -> None:
    kw = make_inputs(sparse=sparse, mask_p=0.6, labels=True, seed=20)
    options = {"divergence": name, "divergence_kwargs": params, "temperature": temperature}
    assert_same_as_plain(kw, chunk_size=3, fused=True, scale_by_t2=True, **options)
    fused = chunked_distill_loss(**kw, chunk_size=3, kd_weight=0.7, ce_weight=0.3, **options)
    separate = chunked_distill_loss(**kw, chunk_size=3, **options)
    assert torch.equal(fused.divergence.detach(), separate.divergence.detach())
    assert torch.equal(fused.nll_sum.detach(), separate.nll_sum.detach())
    # any common factor of the two weights, e.g. the training loop's 1 / tokens, is fine
    params_ = student_params(kw)
    got = torch.autograd.grad(2.5 * (0.7 * fused.divergence + 0.3 * fused.nll_sum), params_)
    want = torch.autograd.grad(2.5 * (0.7 * separate.divergence + 0.3 * separate.nll_sum), params_)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_fused_gradient_refuses_other_combinations() -> None:
    kw = make_inputs(sparse=True, labels=True, seed=21)
    for loss in (
        lambda out: out.divergence,
        lambda out: out.nll_sum,
        lambda out: 0.3 * out.divergence + 0.7 * out.nll_sum,
    ):
        out = chunked_distill_loss(**kw, chunk_size=4, kd_weight=0.7, ce_weight=0.3)
        with pytest.raises(RuntimeError, match="one gradient for kd_weight"):
            loss(out).backward()
    with pytest.raises(ValueError, match="together"):
        chunked_distill_loss(**kw, kd_weight=0.7)
    with pytest.raises(ValueError, match="> 0"):
        chunked_distill_loss(**kw, kd_weight=0.7, ce_weight=0.0)


def test_fused_weights_without_labels_are_the_plain_divergence() -> None:
    kw = make_inputs(sparse=True, mask_p=0.6, seed=22)
    out = chunked_distill_loss(**kw, chunk_size=4, kd_weight=0.7, ce_weight=0.3)
    assert out.nll_sum is None
    (got,) = torch.autograd.grad(out.divergence, [kw["student_head"]])
    (want,) = torch.autograd.grad(plain(kw)[0], [kw["student_head"]])
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_float64_gradcheck(sparse: bool, fused: bool, temperature: float) -> None:
    kw = make_inputs(lead=(2, 3), vocab=7, hidden=3, top_k=3, sparse=sparse, mask_p=0.7, labels=True, seed=23)
    kw = {
        k: (v.detach().double().requires_grad_(v.requires_grad) if v.is_floating_point() else v)
        for k, v in kw.items()
    }
    names = ("student_hidden", "student_head", "student_head_bias")
    weights = {"kd_weight": 0.7, "ce_weight": 0.3} if fused else {}

    def loss(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        args = dict(kw, student_hidden=h, student_head=w, student_head_bias=b)
        out = chunked_distill_loss(**args, chunk_size=2, temperature=temperature, **weights)
        return 0.7 * out.divergence + 0.3 * out.nll_sum

    assert torch.autograd.gradcheck(loss, tuple(kw[n] for n in names))


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_float64_gradcheck_of_every_dense_closed_form(
    name: str, params: dict, fused: bool, temperature: float
) -> None:
    """The hand-derived gradients of every dense divergence (DENSE_CLOSED_FORMS) against finite differences."""
    kw = make_inputs(lead=(2, 3), vocab=7, hidden=3, mask_p=0.7, labels=True, seed=31, dtype=torch.float64)
    weights = {"kd_weight": 0.7, "ce_weight": 0.3} if fused else {}

    def loss(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        args = dict(kw, student_hidden=h, student_head=w, student_head_bias=b)
        out = chunked_distill_loss(
            **args,
            chunk_size=2,
            divergence=name,
            divergence_kwargs=params,
            temperature=temperature,
            **weights,
        )
        return 0.7 * out.divergence + 0.3 * out.nll_sum

    names = ("student_hidden", "student_head", "student_head_bias")
    assert torch.autograd.gradcheck(loss, tuple(kw[n] for n in names))


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_vocabulary_entries_both_sides_rule_out_match_plain(name: str, params: dict) -> None:
    """Padding entries of a vocabulary (-inf for student and teacher): 0 * log 0 = 0 on both sides, so every
    divergence and gradient stays finite and equals the plain computation (the closed forms' p_s = 0 rows)."""
    kw = make_inputs(labels=True, mask_p=0.5, seed=26)
    with torch.no_grad():
        kw["student_head_bias"][-3:] = -math.inf
    kw["teacher_hidden"] = torch.cat([kw["teacher_hidden"], torch.ones(2, 7, 1)], dim=-1)
    blocked = torch.zeros(13, 1)
    blocked[-3:] = -math.inf
    kw["teacher_head"] = torch.cat([kw["teacher_head"], blocked], dim=-1)
    kw["labels"] = kw["labels"].clamp_max(9)  # no label on a blocked entry (its CE would be infinite)
    out = chunked_distill_loss(**kw, chunk_size=4, divergence=name, divergence_kwargs=params)
    assert torch.isfinite(out.divergence)
    grads = torch.autograd.grad(out.divergence + out.nll_sum, [kw["student_hidden"], kw["student_head"]])
    assert all(torch.isfinite(g).all() for g in grads)
    for fused in (False, True):
        assert_same_as_plain(
            kw, chunk_size=4, fused=fused, temperature=1.3, divergence=name, divergence_kwargs=params
        )


def test_sparse_edge_rows_match_plain() -> None:
    """Top-k covering the vocabulary (empty tail), rows without any teacher entry, a tail of mass ~0."""
    kw = make_inputs(lead=(3, 4), vocab=6, top_k=6, sparse=True, labels=True, seed=24)
    ids = kw["teacher_ids"].clone()
    ids[0, 1] = -1  # a row with no teacher entry at all
    ids[1, :2, 3:] = -1  # rows whose top-k no longer covers the vocabulary
    kw["teacher_ids"] = ids
    with torch.no_grad():
        kw["student_hidden"][2, 0] *= 200.0  # a very peaked student row: its tail mass underflows
    for fused in (False, True):
        for temperature in (1.0, 2.0):
            assert_same_as_plain(kw, chunk_size=5, fused=fused, temperature=temperature)


def test_dense_teacher_with_minus_inf_logits_matches_plain() -> None:
    """A teacher that rules out part of the vocabulary (-inf logits): 0 * log 0 = 0, finite gradients."""
    kw = make_inputs(labels=True, mask_p=0.8, seed=25)
    kw["teacher_hidden"] = torch.cat([kw["teacher_hidden"], torch.ones(2, 7, 1)], dim=-1)
    blocked = torch.zeros(13, 1)
    blocked[:3] = -math.inf
    kw["teacher_head"] = torch.cat([kw["teacher_head"], blocked], dim=-1)
    out = chunked_distill_loss(**kw, chunk_size=4)
    assert torch.isfinite(out.divergence)
    for fused in (False, True):
        assert_same_as_plain(kw, chunk_size=4, fused=fused, temperature=1.3)


# --- property: chunked == plain for random shapes and chunk sizes ---------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    seq=st.integers(1, 6),
    vocab=st.integers(2, 12),
    hidden=st.integers(1, 4),
    chunk_size=st.integers(1, 20),
    case=st.sampled_from(CASES),
    sparse=st.booleans(),
    masked=st.booleans(),
    labels=st.booleans(),
    temperature=st.sampled_from([0.5, 1.0, 2.5]),
    fused=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_chunked_equals_plain(
    batch: int,
    seq: int,
    vocab: int,
    hidden: int,
    chunk_size: int,
    case: tuple,
    sparse: bool,
    masked: bool,
    labels: bool,
    temperature: float,
    fused: bool,
    seed: int,
) -> None:
    name, params = case
    kw = make_inputs(
        lead=(batch, seq),
        vocab=vocab,
        hidden=hidden,
        teacher_hidden=hidden + 1,
        top_k=min(3, vocab),
        sparse=sparse,
        mask_p=0.6 if masked else None,
        labels=labels,
        seed=seed,
    )
    assert_same_as_plain(
        kw,
        chunk_size,
        fused=fused and labels,
        divergence=name,
        divergence_kwargs=params,
        temperature=temperature,
    )


# --- input errors ---------------------------------------------------------------------------------------


def test_errors_name_the_problem() -> None:
    kw = make_inputs(seed=16)
    sparse = make_inputs(sparse=True, seed=16)
    with pytest.raises(ValueError, match="exactly one teacher"):
        chunked_distill_loss(
            **kw, teacher_ids=sparse["teacher_ids"], teacher_logprobs=sparse["teacher_logprobs"]
        )
    with pytest.raises(ValueError, match="exactly one teacher"):
        chunked_distill_loss(kw["student_hidden"], kw["student_head"])
    with pytest.raises(UnknownNameError, match="did you mean 'forward_kl'"):
        chunked_distill_loss(**kw, divergence="forward_k")
    with pytest.raises(ValueError, match="divergence_kwargs cannot set"):
        chunked_distill_loss(**kw, divergence_kwargs={"temperature": 2.0})
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_distill_loss(**kw, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        chunked_distill_loss(**kw, temperature=0.0)
    with pytest.raises(ValueError, match="beta"):  # checked even when every token is masked
        chunked_distill_loss(
            **kw,
            divergence="generalized_jsd",
            divergence_kwargs={"beta": 2.0},
            mask=torch.zeros(2, 7, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="teacher_head must be"):
        chunked_distill_loss(**dict(kw, teacher_head=kw["teacher_head"][:-1]))
    with pytest.raises(ValueError, match="mask"):
        chunked_distill_loss(**kw, mask=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels"):
        chunked_distill_loss(**kw, labels=torch.zeros(2, 7))
