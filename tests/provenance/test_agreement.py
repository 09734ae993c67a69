"""Agreement test on digits: a distilled student is caught, independently trained models are not.

The toy: a 100-100 MLP teacher trained on half of the digits training pool; the suspect student (the
zoo's `mlp_xs`, 64-32-10) is distilled from it with `kdistill.distill` on another half, labels never seen
(an attacker who queries the teacher with its own inputs). Reference models and independent suspects are
`mlp_xs` networks trained on true labels of their own random half of the pool with their own init seed,
with the student's optimizer, learning rate, steps and batch size (they stand for "someone who built the
same kind of model without the teacher"). Probes are 400 held-out digits no model trained on plus 400
mixtures of two of them (weights 0.3-0.7): on clean digits every good model agrees with the teacher, on
ambiguous inputs a copy of the teacher's decision boundaries shows. The pool is trained as stacked
weights (same math as separate runs, no gradient clipping).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from kdistill.api import distill
from kdistill.classic.config import TrainConfig
from kdistill.classic.loop import Batch, train
from kdistill.classic.zoo import build_model
from kdistill.provenance.agreement import agreement_test, agreement_test_models, top1_agreement

STEPS, LR, BATCH = 400, 1e-2, 64
REFERENCES, INDEPENDENT = 100, 20


def _digits() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    bunch = load_digits()
    x = torch.tensor(bunch.data / 16.0, dtype=torch.float32)  # (1797, 64)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = np.random.default_rng(0).permutation(len(x))
    return x, y, order[:400], order[400:]  # held-out, training pool


def _probes(held_out: torch.Tensor) -> torch.Tensor:
    """(800, 64): the held-out digits, then 400 mixtures lam * a + (1 - lam) * b of two of them."""
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, len(held_out), (2, 400))
    lam = torch.tensor(rng.uniform(0.3, 0.7, (400, 1)), dtype=torch.float32)
    return torch.cat([held_out, lam * held_out[a] + (1 - lam) * held_out[b]])


def _half(pool: np.ndarray, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).choice(pool, size=len(pool) // 2, replace=False))


def _train_pool(x: torch.Tensor, y: torch.Tensor, subsets: list[torch.Tensor], seeds: list[int]):
    """Independent `mlp_xs` nets, net m on x[subsets[m]] from init seed seeds[m]; returns (M, N) predict.

    The nets are built by the zoo (so they start exactly like the student) and then trained side by side
    as stacked weights with batched matmuls: net m only ever sees its own data and its own gradient.
    """
    nets = []
    for s in seeds:
        torch.manual_seed(s)
        nets.append(build_model("mlp_xs", (64,), 10))
    stacked, _ = torch.func.stack_module_state(nets)  # name -> (M, *shape)
    names = ("fc1.0.weight", "fc1.0.bias", "head.weight", "head.bias")
    params = [stacked[k].detach().requires_grad_(True) for k in names]

    def forward(xb: torch.Tensor) -> torch.Tensor:  # (M, B, 64) -> (M, B, 10)
        w1, w2 = params[0].transpose(1, 2), params[2].transpose(1, 2)
        return torch.baddbmm(params[3][:, None], torch.relu(torch.baddbmm(params[1][:, None], xb, w1)), w2)

    opt = torch.optim.Adam(params, lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / STEPS)))
    idx = torch.stack(subsets)  # (M, n)
    gen = torch.Generator().manual_seed(seeds[0])
    for _ in range(STEPS):
        pick = torch.gather(idx, 1, torch.randint(0, idx.shape[1], (len(seeds), BATCH), generator=gen))
        logits = forward(x[pick])  # (M, B, 10)
        # sum of per-net mean losses: each net's gradient is that of its own run
        loss = F.cross_entropy(logits.flatten(0, 1), y[pick].flatten(), reduction="sum") / BATCH
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    def predict(xs: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return forward(xs.expand(len(seeds), *xs.shape)).argmax(-1).numpy()

    return predict


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models train faster (and reproducibly) on one thread; the setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setting():
    x, y, held_out, pool = _digits()
    torch.manual_seed(1)
    teacher = build_model("mlp_s", (64,), 10)
    t_idx = _half(pool, 1000)

    def ce(batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(teacher(batch.x), batch.target)}

    cfg = TrainConfig(steps=800, batch_size=BATCH, lr=3e-3)
    train(teacher, ce, x=x[t_idx], target=y[t_idx], cfg=cfg, seed=1)
    for p in teacher.parameters():
        p.requires_grad_(False)

    torch.manual_seed(2000)
    s_idx = _half(pool, 2000)
    student, _ = distill(
        teacher,
        build_model("mlp_xs", (64,), 10),
        x[s_idx],
        torch.full((len(s_idx),), -1),  # the attacker has no labels: teacher soft labels only
        loss=[{"name": "hinton_kd", "params": {"temperature": 4.0}}],
        train_config={"steps": STEPS, "batch_size": BATCH, "lr": LR},
        seed=2000,
    )
    seeds = list(range(REFERENCES + INDEPENDENT))
    pool_predict = _train_pool(x, y, [_half(pool, 10_000 + s) for s in seeds], seeds)
    xp = _probes(x[held_out])
    with torch.no_grad():
        teacher_labels = teacher(xp).argmax(1).numpy()
        student_labels = student(xp).argmax(1).numpy()
    pool_labels = pool_predict(xp)  # (M, 800)
    return {
        "teacher": teacher_labels,
        "student": student_labels,
        "refs": list(pool_labels[:REFERENCES]),
        "independent": list(pool_labels[REFERENCES:]),
        "y_held_out": y[held_out].numpy(),
        "teacher_model": teacher,
        "student_model": student,
        "x_probe": xp,
    }


def test_distilled_student_is_caught(setting):
    report = agreement_test(setting["teacher"], setting["student"], setting["refs"])
    assert report.p_value < 0.01
    assert report.p_value == pytest.approx(1 / (REFERENCES + 1))  # above every reference
    assert report.statistic > report.details["reference_agreement_max"]
    assert report.scored == 800
    # the references are a fair null: as accurate as the student on the held-out digits (not strawmen)
    y = setting["y_held_out"]
    ref_acc = np.mean([np.mean(r[:400] == y) for r in setting["refs"]])
    student_acc = np.mean(setting["student"][:400] == y)
    assert student_acc <= ref_acc + 0.02


def test_independent_models_pass_in_at_least_90_percent_of_seeds(setting):
    p_values = [
        agreement_test(setting["teacher"], m, setting["refs"]).p_value for m in setting["independent"]
    ]
    passed = sum(p > 0.05 for p in p_values)
    assert passed >= 0.9 * INDEPENDENT, p_values


def test_models_api_matches_label_api(setting):
    def labels_of(model):
        return lambda xs: model(xs).detach().numpy()  # logits (N, 10): argmax is taken inside

    by_models = agreement_test_models(
        labels_of(setting["teacher_model"]),
        labels_of(setting["student_model"]),
        [lambda xs, r=r: r for r in setting["refs"][:10]],
        setting["x_probe"],
    )
    by_labels = agreement_test(setting["teacher"], setting["student"], setting["refs"][:10])
    assert by_models.statistic == by_labels.statistic
    assert by_models.p_value == by_labels.p_value == pytest.approx(1 / 11)


def test_rank_p_value_counts_ties_against_the_suspect():
    teacher = np.zeros(10, dtype=np.int64)
    suspect = np.array([0] * 7 + [1] * 3)  # agreement 0.7
    refs = [np.array([0] * k + [1] * (10 - k)) for k in (5, 7, 7, 9)]  # 0.5, 0.7, 0.7, 0.9
    report = agreement_test(teacher, suspect, refs)
    assert report.statistic == pytest.approx(0.7)
    assert report.p_value == pytest.approx((1 + 3) / (1 + 4))
    assert report.details["references_at_least_as_high"] == 3


def test_rank_p_value_is_exact_under_exchangeability():
    """Each of R+1 exchangeable models taken in turn as the suspect: at most alpha(R+1) get p <= alpha."""
    rng = np.random.default_rng(0)
    teacher = rng.integers(0, 10, 500)
    models = [np.where(rng.random(500) < 0.9, teacher, rng.integers(0, 10, 500)) for _ in range(40)]
    p = np.array(
        [agreement_test(teacher, models[i], models[:i] + models[i + 1 :]).p_value for i in range(40)]
    )
    for alpha in (0.025, 0.05, 0.1, 0.5):
        assert np.sum(p <= alpha) <= alpha * 40


def test_top1_agreement_takes_labels_or_scores():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert top1_agreement(scores, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="differ in length"):
        top1_agreement(np.array([1, 0]), np.array([1, 0, 0]))
    with pytest.raises(ValueError, match="at least one reference"):
        agreement_test(np.array([1]), np.array([1]), [])
