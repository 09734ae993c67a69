"""A divergence is one record: the registries are views of one, every form is derived from it, the chunked
loss picks its path from it, and every registered divergence keeps the contracts of its three forms."""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import (
    DIVERGENCES,
    SPARSE_TOKEN_DIVERGENCES,
    TOKEN_DIVERGENCES,
    Divergence,
    alpha_beta,
    chunked_distill_loss,
    register,
)
from kdistill.losses import chunked as chunked_module
from kdistill.losses import divergence as divergence_module
from kdistill.losses.token import FORWARD_KL, GENERALIZED_JSD, TVD
from kdistill.registry import Registry

torch.set_num_threads(1)
NAMES = DIVERGENCES.names()


def _logits(seed: int, shape: tuple[int, ...], scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64), scale * torch.randn(
        *shape, generator=g, dtype=torch.float64
    )


def _top_k(t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    log_p = torch.log_softmax(t, dim=-1)
    ids = log_p.topk(k, dim=-1).indices.flip(-1)  # any order
    return ids, log_p.gather(-1, ids)


# --- one registry, derived views ---------------------------------------------------------------------------


def test_the_views_are_the_records_forms() -> None:
    assert NAMES == TOKEN_DIVERGENCES.names() == SPARSE_TOKEN_DIVERGENCES.names()
    assert {"forward_kl", "reverse_kl", "generalized_jsd", "skew_kl", "tvd", "alpha_beta"} <= set(NAMES)
    for name in NAMES:
        record = DIVERGENCES.get(name)
        assert record.name == name
        assert TOKEN_DIVERGENCES.get(name) is record.dense
        assert SPARSE_TOKEN_DIVERGENCES.get(name) is record.sparse
        assert TOKEN_DIVERGENCES.summary(name) == DIVERGENCES.summary(name) == record.summary
        assert SPARSE_TOKEN_DIVERGENCES.summary(name).startswith(record.summary)


def test_register_refuses_a_taken_name_and_adds_nothing() -> None:
    sizes = [len(r) for r in (DIVERGENCES, TOKEN_DIVERGENCES, SPARSE_TOKEN_DIVERGENCES)]
    with pytest.raises(ValueError, match="'tvd' is already registered"):
        register(dataclasses.replace(TVD, summary="another tvd"))
    assert [len(r) for r in (DIVERGENCES, TOKEN_DIVERGENCES, SPARSE_TOKEN_DIVERGENCES)] == sizes
    with pytest.raises(KeyError, match="did you mean 'alpha_beta'"):
        DIVERGENCES.get("alpha_bet")


def _squared_hellinger(log_p_s: torch.Tensor, log_p_t: torch.Tensor) -> torch.Tensor:
    return ((log_p_t / 2).exp() - (log_p_s / 2).exp()).pow(2).sum(dim=-1)


HELLINGER = Divergence(
    name="squared_hellinger",
    summary="sum (sqrt p_t - sqrt p_s)^2",
    doc="""Squared Hellinger distance: per token

        sum_v (sqrt p_t,v - sqrt p_s,v)^2
    """,
    per_token=lambda: _squared_hellinger,
)


def test_one_record_gives_every_form_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new divergence is a per-token function and a record: registered, it is selectable by name in the
    dense, sparse and chunked losses (fresh registries here, so the real ones stay as they are)."""
    fresh = {
        "DIVERGENCES": Registry("divergence"),
        "TOKEN_DIVERGENCES": Registry("divergence"),
        "SPARSE_TOKEN_DIVERGENCES": Registry("sparse divergence"),
    }
    for attr, registry in fresh.items():
        monkeypatch.setattr(divergence_module, attr, registry)
    monkeypatch.setattr(chunked_module, "DIVERGENCES", fresh["DIVERGENCES"])
    register(HELLINGER)
    assert [r.names() for r in fresh.values()] == [["squared_hellinger"]] * 3

    # sum (sqrt p - sqrt q)^2 is half the alpha-beta divergence at alpha = beta = 1/2, in every form
    s, t = _logits(1, (2, 3, 6))
    mask = torch.tensor([[True, False, True], [True, True, True]])
    dense = fresh["TOKEN_DIVERGENCES"].get("squared_hellinger")
    torch.testing.assert_close(
        dense(s, t, mask=mask, temperature=1.5), 0.5 * alpha_beta(s, t, mask=mask, temperature=1.5)
    )
    ids, lp = _top_k(t, 3)
    sparse = fresh["SPARSE_TOKEN_DIVERGENCES"].get("squared_hellinger")
    want = 0.5 * DIVERGENCES.get("alpha_beta").sparse(s, ids, lp, mask=mask)
    torch.testing.assert_close(sparse(s, ids, lp, mask=mask), want)
    kw = _chunk_inputs(sparse=False, seed=2)
    out = chunked_distill_loss(**kw, divergence="squared_hellinger", chunk_size=3)  # no closed form: autograd
    want = chunked_distill_loss(**kw, divergence=DIVERGENCES.get("alpha_beta"), chunk_size=3)
    torch.testing.assert_close(out.divergence, 0.5 * want.divergence)
    got = torch.autograd.grad(out.divergence, _student(kw))
    for g, w in zip(got, torch.autograd.grad(0.5 * want.divergence, _student(kw)), strict=True):
        torch.testing.assert_close(g, w)


def test_the_forms_read_like_hand_written_functions() -> None:
    jsd = GENERALIZED_JSD.dense
    assert jsd.__name__ == "generalized_jsd" and GENERALIZED_JSD.sparse.__name__ == "sparse_generalized_jsd"
    params = inspect.signature(jsd).parameters
    assert list(params) == [
        "student_logits",
        "teacher_logits",
        "beta",
        "mask",
        "temperature",
        "scale_by_t2",
        "reduction",
        "num_tokens",
    ]
    assert params["beta"].default == 0.5 and params["beta"].kind is inspect.Parameter.KEYWORD_ONLY
    assert list(inspect.signature(GENERALIZED_JSD.sparse).parameters)[:4] == [
        "student_logits",
        "teacher_ids",
        "teacher_logprobs",
        "beta",
    ]
    assert "JSD_beta = beta * KL(p_t || M)" in jsd.__doc__ and "Reduction units" in jsd.__doc__
    assert FORWARD_KL.parameters == {} and GENERALIZED_JSD.parameters == {"beta": 0.5}
    z = torch.zeros(2, 5)
    with pytest.raises(TypeError, match=r"'forward_kl' has no parameter \['beta'\]; its parameters: none"):
        FORWARD_KL.dense(z, z, beta=0.5)
    with pytest.raises(TypeError, match=r"'generalized_jsd' has no parameter \['alpha'\]"):
        chunked_distill_loss(
            **_chunk_inputs(sparse=True, seed=3), divergence="generalized_jsd", divergence_kwargs={"alpha": 1}
        )


# --- the chunked loss takes its path from the record ------------------------------------------------------------


def _chunk_inputs(*, sparse: bool, seed: int, lead=(2, 5), vocab=9) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    kw: dict[str, Any] = {
        "student_hidden": torch.randn(*lead, 4, generator=g, dtype=torch.float64).requires_grad_(),
        "student_head": (torch.randn(vocab, 4, generator=g, dtype=torch.float64) / 2).requires_grad_(),
        "student_head_bias": torch.randn(vocab, generator=g, dtype=torch.float64).requires_grad_(),
        "mask": torch.rand(lead, generator=g) < 0.7,
    }
    t_hidden = torch.randn(*lead, 3, generator=g, dtype=torch.float64)
    t_head = torch.randn(vocab, 3, generator=g, dtype=torch.float64)
    if sparse:
        ids, lp = _top_k(t_hidden @ t_head.T, 4)
        kw |= {"teacher_ids": ids, "teacher_logprobs": lp}
    else:
        kw |= {"teacher_hidden": t_hidden, "teacher_head": t_head}
    return kw


def _student(kw: dict[str, Any]) -> list[torch.Tensor]:
    return [kw[n] for n in ("student_hidden", "student_head", "student_head_bias")]


@pytest.mark.parametrize(
    ("record", "path"),
    [
        (FORWARD_KL, "_dense_forward_kl_chunk"),
        (dataclasses.replace(FORWARD_KL, in_place_forward_kl=False), "_dense_closed_form_chunk"),
        (GENERALIZED_JSD, "_dense_closed_form_chunk"),
        (dataclasses.replace(GENERALIZED_JSD, closed_form=None), "_autograd_chunk"),
    ],
    ids=["in-place", "closed-form", "jsd-closed-form", "autograd"],
)
def test_the_dense_path_is_read_off_the_record(
    record: Divergence, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for name in ("_dense_forward_kl_chunk", "_dense_closed_form_chunk"):
        original = getattr(chunked_module, name)
        monkeypatch.setattr(
            chunked_module, name, lambda *a, _n=name, _f=original, **k: calls.append(_n) or _f(*a, **k)
        )
    original_autograd = chunked_module._ChunkTerms._autograd_chunk
    monkeypatch.setattr(
        chunked_module._ChunkTerms,
        "_autograd_chunk",
        lambda self, *a: calls.append("_autograd_chunk") or original_autograd(self, *a),
    )
    kw = _chunk_inputs(sparse=False, seed=4)
    out = chunked_distill_loss(**kw, divergence=record, chunk_size=4)
    assert set(calls) == {path}
    plain = record.dense(
        F.linear(*_student(kw)), kw["teacher_hidden"] @ kw["teacher_head"].T, mask=kw["mask"]
    )
    torch.testing.assert_close(out.divergence, plain, rtol=1e-12, atol=1e-14)


# --- contracts every registered divergence keeps (default parameters) ---------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_sparse_at_full_k_equals_dense(name: str) -> None:
    record = DIVERGENCES.get(name)
    s, t = _logits(5, (2, 3, 7))
    ids, lp = _top_k(t, 7)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
    sparse = record.sparse(a, ids, lp, mask=mask, temperature=1.7)
    dense = record.dense(b, t, mask=mask, temperature=1.7)
    torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-13)
    sparse.backward()
    dense.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_values_are_divergences_and_masked_garbage_never_counts(name: str) -> None:
    record = DIVERGENCES.get(name)
    s, t = _logits(6, (2, 4, 6))
    assert (record.dense(s, t, reduction="none") >= 0).all()
    assert record.dense(s, s.clone()).abs().item() <= 1e-12
    mask = torch.tensor([[True, False, True, True], [False, True, False, True]])
    clean = record.dense(s, t, mask=mask)
    bad_s, bad_t = s.clone(), t.clone()
    bad_s[~mask], bad_t[~mask] = float("nan"), float("inf")
    bad_s.requires_grad_()
    loss = record.dense(bad_s, bad_t, mask=mask)
    (grad,) = torch.autograd.grad(loss, bad_s)
    assert loss.item() == pytest.approx(clean.item(), rel=1e-12)
    assert torch.isfinite(grad).all() and (grad[~mask] == 0).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_chunked_equals_plain_and_its_autograd_path(name: str, sparse: bool) -> None:
    record = DIVERGENCES.get(name)
    kw = _chunk_inputs(sparse=sparse, seed=7)
    g = torch.Generator().manual_seed(7)
    kw["labels"] = torch.where(
        torch.rand(2, 5, generator=g) < 0.3, -100, torch.randint(0, 9, (2, 5), generator=g)
    )
    logits = F.linear(*_student(kw))
    options = {"mask": kw["mask"], "temperature": 1.7, "scale_by_t2": True}
    if sparse:
        plain = record.sparse(logits, kw["teacher_ids"], kw["teacher_logprobs"], **options)
    else:
        plain = record.dense(logits, kw["teacher_hidden"] @ kw["teacher_head"].T, **options)
    nll = F.cross_entropy(logits.reshape(-1, 9), kw["labels"].reshape(-1), reduction="sum")
    want = torch.autograd.grad(0.7 * plain + 0.3 * nll, _student(kw))
    bare = dataclasses.replace(record, closed_form=None, in_place_forward_kl=False)
    for variant in (record, bare):
        for fused in ({}, {"kd_weight": 0.7, "ce_weight": 0.3}):
            out = chunked_distill_loss(
                **kw, divergence=variant, temperature=1.7, scale_by_t2=True, chunk_size=3, **fused
            )
            torch.testing.assert_close(out.divergence, plain, rtol=1e-10, atol=1e-12)
            got = torch.autograd.grad(0.7 * out.divergence + 0.3 * out.nll_sum, _student(kw))
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", [n for n in NAMES if DIVERGENCES.get(n).closed_form is not None])
def test_the_closed_form_is_the_gradient_and_leaves_its_inputs(name: str) -> None:
    """value == per_token, and w through the softmax chain rule == autograd's gradient w.r.t. the logits."""
    record = DIVERGENCES.get(name)
    s, t = _logits(9, (4, 6))
    s[:, 5], t[:, 5] = -math.inf, -math.inf  # a vocabulary entry ruled out on both sides
    z = s.clone().requires_grad_()
    log_p_s, log_p_t = torch.log_softmax(z, -1), torch.log_softmax(t, -1)
    value = record.bind()(log_p_s, log_p_t)
    (want,) = torch.autograd.grad(value.sum(), z)
    a, b = log_p_s.detach().clone(), log_p_t.clone()
    got, w = record.closed_form()(a, b, True)
    assert torch.equal(a, log_p_s.detach()) and torch.equal(b, log_p_t)  # the chunk's buffers, intact
    torch.testing.assert_close(got, value.detach(), rtol=1e-12, atol=1e-14)
    grad = w - a.exp() * w.sum(dim=-1, keepdim=True)  # dDiv/dz = w - p_s sum w   (T = 1)
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-13)
    assert record.closed_form()(a, b, False)[1] is None


@pytest.mark.parametrize("name", NAMES)
def test_a_vocabulary_entry_ruled_out_on_both_sides(name: str) -> None:
    record = DIVERGENCES.get(name)
    s, t = _logits(8, (3, 5))
    s[:, 4], t[:, 4] = -math.inf, -math.inf
    s.requires_grad_()
    value = record.dense(s, t, reduction="none")
    (grad,) = torch.autograd.grad(value.sum(), s)
    torch.testing.assert_close(
        value, record.dense(s[:, :4], t[:, :4], reduction="none"), rtol=1e-12, atol=1e-14
    )
    assert torch.isfinite(grad).all()
