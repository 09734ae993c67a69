"""DAWN-style API watermark on a tabular toy.

The toy: 10 Gaussian blobs in 20 dimensions (unit noise around random centres, so classes overlap a
little) stand for a tabular task; the teacher is a 20-64-10 MLP behind the API. A thief sends 8,000
natural queries, trains a 20-256-10 MLP surrogate on the API's answers (1,000 Adam steps, 16 epochs, as an
extraction attack would), and the owner verifies the surrogate on that client's logged watermarked queries. Clean
surrogates: the same network trained on the same queries labelled by the unwatermarked teacher, and one
trained on true labels of other data.

The API uses fraction 0.4% (within the required 0.5% +- 0.2%): at exactly 0.5% the expected accuracy
drop is 0.5 x accuracy points, and a finite benign set lands above 0.5 points almost as often as below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdistill.provenance.dawn import DawnAPI, DawnWatermark, WatermarkLog, canonical_bytes, verify

D, C = 20, 10
KEY = b"kdistill-test-dawn-key-0001"
FRACTION = 0.004
CENTRES = np.random.default_rng(0).normal(size=(C, D))


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    return (CENTRES[y] + rng.normal(size=(n, D))).astype(np.float32), y


def _fit(hidden: int, x: np.ndarray, y: np.ndarray, steps: int, seed: int, lr: float) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(D, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, C))
    xt, yt = torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        i = torch.randint(0, len(xt), (128,), generator=gen)
        loss = F.cross_entropy(model(xt[i]), yt[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _predictor(model: torch.nn.Module):
    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(np.asarray(x, dtype=np.float32))).argmax(1).numpy()

    return predict


def _surrogate(x: np.ndarray, y: np.ndarray, seed: int):
    return _predictor(_fit(256, x, y, steps=1000, seed=seed, lr=1e-2))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models train faster (and reproducibly) on one thread; the setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def api_setting():
    x_train, y_train = _blobs(3000, 1)
    teacher = _predictor(_fit(64, x_train, y_train, steps=800, seed=0, lr=3e-3))
    api = DawnAPI(teacher, DawnWatermark(KEY, C, FRACTION))
    x_thief, _ = _blobs(8000, 3)
    served = api(x_thief, client="thief")
    return {"teacher": teacher, "api": api, "x_thief": x_thief, "served": served}


def test_changes_the_stated_fraction_and_costs_benign_users_at_most_half_a_point(api_setting):
    teacher, api = api_setting["teacher"], api_setting["api"]
    x, y = _blobs(50_000, 2)
    original = teacher(x)
    served = api(x, client="benign")
    changed = np.mean(served != original)
    assert abs(changed - 0.005) <= 0.002
    drop = 100 * (np.mean(original == y) - np.mean(served == y))
    assert 0 < drop <= 0.5
    log = api.log("benign")
    assert len(log) == int(np.sum(served != original))
    assert np.all(log.served != log.original)


def test_surrogate_trained_on_api_answers_is_caught(api_setting):
    api, x, served = api_setting["api"], api_setting["x_thief"], api_setting["served"]
    log = api.log("thief")
    assert len(log) >= 10
    report = verify(_surrogate(x, served, seed=1), log)
    assert report.p_value < 1e-6
    assert report.scored == report.details["disagreements_with_teacher"]


def test_clean_surrogates_are_not_flagged(api_setting):
    teacher, api, x = api_setting["teacher"], api_setting["api"], api_setting["x_thief"]
    log = api.log("thief")
    on_teacher_labels = verify(_surrogate(x, teacher(x), seed=2), log)
    x_other, y_other = _blobs(4000, 4)
    on_true_labels = verify(_surrogate(x_other, y_other, seed=3), log)
    for report in (on_teacher_labels, on_true_labels):
        assert report.p_value > 0.01
        assert report.details["matches"] <= 1


def test_log_is_rebuilt_from_queries_with_the_key(api_setting):
    teacher, api, x = api_setting["teacher"], api_setting["api"], api_setting["x_thief"]
    rebuilt = DawnWatermark(KEY, C, FRACTION).log_of(x, teacher)
    logged = api.log("thief")
    np.testing.assert_array_equal(rebuilt.served, logged.served)
    np.testing.assert_array_equal(rebuilt.x, logged.x)
    other_key = DawnWatermark(b"another-secret-key-of-the-owner", C, FRACTION).log_of(x, teacher)
    assert not np.array_equal(other_key.x, logged.x)


def test_answers_are_consistent_and_wrong_labels_uniform():
    wm = DawnWatermark(KEY, C, fraction=0.5)
    x, _ = _blobs(4000, 7)
    original = np.zeros(len(x), dtype=np.int64)
    served, mask = wm.apply(x, original)
    again, _ = wm.apply(x.astype(np.float64), original)  # same values, other dtype: same query
    np.testing.assert_array_equal(served, again)
    assert np.all(served[mask] != 0) and np.all(served[~mask] == 0)
    counts = np.bincount(served[mask], minlength=C)[1:]  # wrong labels 1..9
    expected = mask.sum() / (C - 1)
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 26.1  # chi-square(8) 0.999 quantile


def test_p_value_is_the_exact_binomial_tail_conditional_on_disagreements():
    x, _ = _blobs(12, 8)
    original = np.zeros(12, dtype=np.int64)
    served = np.full(12, 3)
    log = WatermarkLog.from_arrays(x, original, served, num_classes=C)
    # suspect: 4 answers equal the teacher's (cannot match), 5 match the served label, 3 other wrong labels
    answers = np.array([0] * 4 + [3] * 5 + [7] * 3)
    report = verify(lambda _: answers, log)
    n, k, q = 8, 5, 1 / (C - 1)
    brute = sum(math.comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(k, n + 1))
    assert report.statistic == k and report.scored == n
    assert report.p_value == pytest.approx(brute, rel=1e-9)


def test_p_values_are_valid_for_suspects_independent_of_the_key():
    """A suspect that never saw served answers: P(p <= alpha) <= alpha over keys (up to sampling noise)."""
    x, _ = _blobs(600, 9)
    teacher = np.zeros(len(x), dtype=np.int64)
    suspect = np.random.default_rng(0).integers(0, C, len(x))  # fixed answers, independent of any key
    p = []
    for k in range(150):
        log = DawnWatermark(b"independent-key-%05d" % k, C, fraction=0.05).log_of(x, lambda _: teacher)
        p.append(verify(lambda xs, log=log: suspect[_rows(x, xs)], log).p_value)
    p = np.array(p)
    assert np.mean(p <= 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 150)
    assert np.mean(p <= 0.5) <= 0.5 + 3 * math.sqrt(0.25 / 150)
    assert np.mean(p <= 0.5) > 0.2  # not all p = 1: the test has something to work with


def _rows(x: np.ndarray, xs: np.ndarray) -> np.ndarray:
    where = {canonical_bytes(row): i for i, row in enumerate(x)}
    return np.array([where[canonical_bytes(row)] for row in xs])


def test_duplicates_count_once_and_bad_settings_fail():
    x = np.ones((3, 4), dtype=np.float32)
    log = WatermarkLog.from_arrays(x, np.zeros(3), np.ones(3), num_classes=C)
    assert len(log) == 1
    with pytest.raises(ValueError, match="at least 3 classes"):
        DawnWatermark(KEY, 2)
    with pytest.raises(ValueError, match="equals the original"):
        WatermarkLog.from_arrays(x, np.zeros(3), np.zeros(3), num_classes=C)
    empty = verify(
        lambda xs: np.zeros(len(xs)), DawnAPI(lambda xs: np.zeros(len(xs)), DawnWatermark(KEY, C)).log()
    )
    assert empty.p_value == 1.0 and empty.scored == 0
