"""CRD, the first "module" loss: its NCE value against the paper's formula, the memory-bank update, where
gradients go, and an exact resume of the bank."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kdistill.classic.config import LossTerm
from kdistill.classic.loop import Batch
from kdistill.classic.methods.base import JobInterrupted
from kdistill.classic.methods.offline import OfflineDistiller
from kdistill.classic.recipe import run
from kdistill.classic.zoo import build_model
from kdistill.config import ConfigError, parse_config
from kdistill.losses.crd import CRDLoss, contrast_indices, contrast_scores, crd_nce_loss, momentum_update


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def nce_reference(anchor, bank, contrast, temperature, z, n):
    """The paper's NCE loss written out per sample: P = exp(<a, m_j>/T) / Z, h = P / (P + K/N)."""
    k = contrast.shape[1] - 1
    total = 0.0
    for b in range(len(anchor)):
        p = np.exp(bank[contrast[b]] @ anchor[b] / temperature) / z
        h = p / (p + k / n)
        total += math.log(h[0]) + np.log(1.0 - h[1:]).sum()
    return -total / len(anchor)


def embed_reference(feature, head):
    e = feature.reshape(len(feature), -1) @ head.weight.detach().numpy().T + head.bias.detach().numpy()
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_nce_loss_matches_the_paper_formula_with_sampled_negatives():
    rng = np.random.default_rng(0)
    anchor, bank = unit_rows(rng, 5, 8), unit_rows(rng, 30, 8)
    contrast = np.concatenate([np.arange(5)[:, None] * 3, rng.integers(0, 30, size=(5, 7))], axis=1)
    scores = contrast_scores(
        torch.from_numpy(anchor), torch.from_numpy(bank), torch.from_numpy(contrast), 0.07
    )
    got = crd_nce_loss(scores, log_z=math.log(40.0), num_samples=30)
    assert got.item() == pytest.approx(nce_reference(anchor, bank, contrast, 0.07, 40.0, 30), abs=1e-6)


def test_crd_module_loss_matches_an_independent_computation_on_a_fixed_bank():
    torch.manual_seed(0)
    n = 12
    crd = CRDLoss((3, 2), (5,), n, dim=4, negatives=4096).double()  # K >= N-1: every other sample
    rng = np.random.default_rng(1)
    s_bank, t_bank = unit_rows(rng, n, 4), unit_rows(rng, n, 4)
    crd.student_bank, crd.teacher_bank = torch.from_numpy(s_bank), torch.from_numpy(t_bank)
    crd.log_z = torch.tensor([2.5, 3.5], dtype=torch.float64)
    fs, ft = rng.normal(size=(4, 3, 2)), rng.normal(size=(4, 5))
    index = np.array([7, 0, 11, 3])
    loss = crd(torch.from_numpy(fs), torch.from_numpy(ft), torch.from_numpy(index))

    s, t = embed_reference(fs, crd.student_head), embed_reference(ft, crd.teacher_head)
    contrast = np.array([[i] + [j for j in range(n) if j != i] for i in index])
    expected = nce_reference(s, t_bank, contrast, 0.07, math.exp(2.5), n)  # student vs teacher memory
    expected += nce_reference(t, s_bank, contrast, 0.07, math.exp(3.5), n)  # teacher vs student memory
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_partition_constant_is_estimated_once_from_the_first_batch():
    torch.manual_seed(0)
    n = 10
    crd = CRDLoss((6,), (6,), n, dim=4, negatives=100).double()
    banks = crd.student_bank.numpy().copy(), crd.teacher_bank.numpy().copy()
    fs, ft = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    index = torch.tensor([2, 5, 9])
    crd(fs, ft, index)
    s, t = embed_reference(fs.numpy(), crd.student_head), embed_reference(ft.numpy(), crd.teacher_head)
    # Z = mean over the batch's B x (1+K) contrast pairs of exp(score / T), times N (official estimate)
    z_s = np.mean(np.exp(s @ banks[1].T / 0.07)) * n
    z_t = np.mean(np.exp(t @ banks[0].T / 0.07)) * n
    np.testing.assert_allclose(crd.log_z.numpy(), np.log([z_s, z_t]), rtol=0, atol=1e-9)
    fixed = crd.log_z.clone()
    crd(
        torch.randn(3, 6, dtype=torch.float64),
        torch.randn(3, 6, dtype=torch.float64),
        torch.tensor([0, 1, 2]),
    )
    assert torch.equal(crd.log_z, fixed)


def test_bank_update_is_momentum_then_renormalise():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    new = momentum_update(bank, torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), 0.5)
    # row 0: (0.5, 0.5) / |.| ; row 2: (0.8, 0.4) / |.| ; row 1 untouched; the old bank is not modified
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[r, r], [0.0, 1.0], [0.8 / math.sqrt(0.8), 0.4 / math.sqrt(0.8)]])
    torch.testing.assert_close(new, expected, rtol=0, atol=1e-7)
    assert torch.equal(bank, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))


def test_forward_moves_the_batch_rows_of_both_banks_and_no_others():
    torch.manual_seed(0)
    crd = CRDLoss((6,), (4,), 20, dim=8, momentum=0.5, negatives=5)
    before_s, before_t = crd.student_bank.clone(), crd.teacher_bank.clone()
    fs, ft, index = torch.randn(3, 6), torch.randn(3, 4), torch.tensor([4, 17, 9])
    s, t = crd.embed(fs, ft)
    crd(fs, ft, index)
    for bank, before, emb in ((crd.student_bank, before_s, s), (crd.teacher_bank, before_t, t)):
        rows = 0.5 * before[index] + 0.5 * emb.detach()
        torch.testing.assert_close(bank[index], rows / rows.norm(dim=1, keepdim=True), rtol=0, atol=1e-6)
        others = torch.ones(20, dtype=torch.bool)
        others[index] = False
        assert torch.equal(bank[others], before[others])


def test_negatives_are_other_samples_and_all_of_them_when_the_set_is_small():
    index = torch.tensor([0, 5, 9])
    torch.manual_seed(0)
    sampled = contrast_indices(index, 10, 6)
    assert sampled.shape == (3, 7) and torch.equal(sampled[:, 0], index)
    assert ((sampled[:, 1:] >= 0) & (sampled[:, 1:] < 10)).all()
    assert not (sampled[:, 1:] == index[:, None]).any()
    many = contrast_indices(index.repeat(500), 10, 8)[:, 1:]  # every other row is drawn, never the own one
    assert set(many[0::3].unique().tolist()) == set(range(1, 10))
    every = contrast_indices(index, 10, 9)
    assert every[1].tolist() == [5, 0, 1, 2, 3, 4, 6, 7, 8, 9]


def test_gradients_reach_both_heads_and_the_student_but_never_the_teacher():
    torch.manual_seed(0)
    teacher, student = build_model("cnn_s", (1, 8, 8), 10), build_model("cnn_xs", (1, 8, 8), 10)
    x = torch.randn(40, 1, 8, 8)
    terms = [LossTerm(name="crd", weight=0.8, student_layer="pool", teacher_layer="pool")]
    distiller = OfflineDistiller(student, teacher, terms, x, cache=False)  # live teacher: grads could leak
    idx = torch.arange(6)
    out = distiller(Batch(index=idx, x=x[idx], target=torch.full((6,), -1)))
    assert list(out) == ["feat/crd@pool"]
    out["feat/crd@pool"].backward()
    crd = distiller.terms.loss_modules["feat__crd_at_pool"]
    for head in (crd.student_head, crd.teacher_head):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert student.block1[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert not crd.student_bank.requires_grad and not crd.teacher_bank.requires_grad
    # heads 16 -> 128 and 32 -> 128 (cnn_xs / cnn_s pooled embeddings) are the extra parameters
    assert distiller.extra_parameters() == (16 * 128 + 128) + (32 * 128 + 128)
    state = distiller.state_dict()
    assert state["terms.loss_modules.feat__crd_at_pool.student_bank"].shape == (40, 128)


def test_crd_config_is_validated_against_its_factory():
    ok = parse_config(
        {
            "loss": [
                {
                    "name": "crd",
                    "weight": 0.8,
                    "student_layer": "pool",
                    "teacher_layer": "pool",
                    "params": {"temperature": 0.1, "negatives": 64, "dim": 32, "momentum": 0.9},
                }
            ]
        }
    )
    assert ok.loss[0].params["negatives"] == 64
    with pytest.raises(
        ConfigError, match="no parameter 'tau'; its parameters: dim, temperature, momentum, negatives"
    ):
        parse_config(
            {
                "loss": [
                    {"name": "crd", "student_layer": "pool", "teacher_layer": "pool", "params": {"tau": 1}}
                ]
            }
        )
    with pytest.raises(ConfigError, match="module loss 'crd' needs student_layer and teacher_layer"):
        parse_config({"loss": [{"name": "crd"}]})
    with pytest.raises(
        ConfigError, match="mutual learning exchanges logits only; loss 'crd' is module-based"
    ):
        parse_config(
            {
                "method": {"name": "mutual"},
                "loss": [{"name": "crd", "student_layer": "pool", "teacher_layer": "pool"}],
            }
        )
    with pytest.raises(ValueError, match="crd: negatives must be a positive integer, got 2.5"):
        CRDLoss((4,), (4,), 10, negatives=2.5)


def test_interrupted_crd_run_resumes_with_the_same_bank_and_weights(tmp_path, tiny_config):
    tiny_config["loss"] = [
        {"name": "cross_entropy"},
        {
            "name": "crd",
            "weight": 0.8,
            "student_layer": "pool",
            "teacher_layer": "pool",
            "params": {"negatives": 50},
        },
    ]
    tiny_config["evaluation"] = {"compare_scratch": False}  # the distilled job is the one interrupted
    cfg = parse_config(tiny_config)
    reference = run(cfg, runs_dir=tmp_path / "reference")
    with pytest.raises(JobInterrupted):
        run(cfg, runs_dir=tmp_path / "killed", stop_after=15)  # last checkpoint at step 10
    resumed = run(cfg, runs_dir=tmp_path / "killed")
    assert resumed.resumed
    a = load_file(str(reference.run_dir / "jobs/distilled-s0/model.safetensors"))
    b = load_file(str(resumed.run_dir / "jobs/distilled-s0/model.safetensors"))
    assert a.keys() == b.keys()
    bank = "terms.loss_modules.feat__crd_at_pool.student_bank"
    assert {bank, bank.replace("student", "teacher"), bank.replace("student_bank", "log_z")} <= a.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    models = {m["name"]: m for m in reference.metrics["models"]}
    assert models["student (distilled)"]["extra_params"] == (16 * 128 + 128) + (32 * 128 + 128)
    assert {k for h in reference.metrics["history"] for k in h["terms"]} == {"ce", "feat/crd@pool"}
