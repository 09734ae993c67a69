"""PRADA-style extraction monitor on digits.

The toy: the protected model is a logistic regression on half of the digits (its answers give PRADA's
class-wise growing sets). Benign clients send 500 natural digits in random order: calibration streams come
from that half, the benign streams under test from the other half (images the calibration never saw).
Extraction clients follow the two synthetic-query attacks of PRADA's evaluation, each starting from 10
natural seed digits and doubling its set every round for 500 queries:
  - JBDA (Papernot et al. 2017): x + 0.1 * sign(gradient of the attacker's substitute for the API's
    label); the substitute is a nearest-centroid softmax fitted to the answers so far (it stands in for the
    attacker's network; what PRADA sees is a fixed-size step from an earlier query, whatever the sign);
  - T-RND: the same step in a random sign direction.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from kdistill.provenance.prada import PradaMonitor, calibrate, min_w_over_stream, shapiro_w

STREAM, CHECK_EVERY = 500, 5


@pytest.fixture(scope="module")
def digits():
    bunch = load_digits()
    x = bunch.data / 16.0  # (1797, 64) in [0, 1]
    order = np.random.default_rng(0).permutation(len(x))
    calib, held_out = order[:898], order[898:]
    model = LogisticRegression(max_iter=300).fit(x[calib], bunch.target[calib])
    return x, calib, held_out, model


def _natural(x: np.ndarray, pool: np.ndarray, seed: int) -> np.ndarray:
    return x[np.random.default_rng(seed).permutation(pool)[:STREAM]]


def _synthetic(x: np.ndarray, pool: np.ndarray, model, seed: int, jacobian: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    current = x[rng.choice(pool, 10, replace=False)]
    queries = list(current)
    while len(queries) < STREAM:
        if jacobian:
            y = model.predict(current)  # the API's answers
            classes = np.unique(y)
            mu = np.stack([current[y == c].mean(0) for c in classes])  # substitute: logits 2 mu.x - |mu|^2
            logits = 2 * current @ mu.T - (mu**2).sum(1)
            prob = np.exp(logits - logits.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            k = np.searchsorted(classes, y)
            # d p_k / d x = p_k (w_k - sum_j p_j w_j) with w = 2 mu
            direction = prob[np.arange(len(k)), k][:, None] * (2 * mu[k] - prob @ (2 * mu))
        else:
            direction = rng.normal(size=current.shape)
        new = np.clip(current + 0.1 * np.sign(direction), 0.0, 1.0)
        queries.extend(new)
        current = np.concatenate([current, new])
    return np.array(queries[:STREAM])


@pytest.mark.parametrize("class_wise", [True, False], ids=["class-wise", "one-set"])
def test_benign_streams_are_quiet_and_extraction_streams_are_caught(digits, class_wise):
    x, calib, held_out, model = digits

    def labels(stream):
        return model.predict(stream) if class_wise else None

    cal = [_natural(x, calib, 100 + i) for i in range(20)]
    delta = calibrate(cal, [labels(s) for s in cal] if class_wise else None, check_every=CHECK_EVERY)
    monitor = PradaMonitor(delta, check_every=CHECK_EVERY)

    benign = [_natural(x, held_out, i) for i in range(20)]
    benign_alarms = [monitor.observe_stream(f"benign-{i}", s, labels(s)) for i, s in enumerate(benign)]
    assert benign_alarms == [None] * 20

    attacks = [_synthetic(x, held_out, model, i, jacobian=i < 10) for i in range(20)]
    alarm_at = [monitor.observe_stream(f"attack-{i}", s, labels(s)) for i, s in enumerate(attacks)]
    caught = [a is not None and a <= STREAM for a in alarm_at]
    assert all(caught[:10]), alarm_at  # JBDA
    if class_wise:
        # measured 18/20 (2 T-RND streams end with W just above the benign minimum): at the bar, so
        # assert a little below it rather than let a library update flip the test
        assert sum(caught) >= 16, alarm_at
    else:
        assert sum(caught) >= 18, alarm_at  # the must-hold; measured 20/20, each at the first check

    report = monitor.report("attack-0")
    assert report.details["alarm_at_query"] == alarm_at[0]
    assert report.details["delta"] == delta
    assert any("heuristic" in a for a in report.assumptions)


def test_distances_follow_the_prada_algorithm():
    """Against a direct transcription of PRADA's Algorithm 1 on a small random stream."""
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(60, 5))
    labels = rng.integers(0, 3, 60)
    sets: dict[int, list[np.ndarray]] = {}
    member_d: dict[int, list[float]] = {}
    thresholds: dict[int, float] = {}
    expected = []
    for x, c in zip(xs, labels, strict=True):
        if c not in sets:
            sets[c], member_d[c], thresholds[c] = [x], [0.0], 0.0
            continue
        d = min(float(np.linalg.norm(x - g)) for g in sets[c])
        expected.append(d)
        if d > thresholds[c]:
            sets[c].append(x)
            member_d[c].append(d)
            thresholds[c] = max(thresholds[c], float(np.mean(member_d[c]) - np.std(member_d[c])))
    monitor = PradaMonitor(0.5, min_distances=10)
    monitor.observe_stream("c", xs, labels)
    np.testing.assert_allclose(monitor.distances("c"), expected)
    report = monitor.report("c")
    assert report.details["growing_set_sizes"] == {c: len(v) for c, v in sets.items()}
    w, p, n = shapiro_w(np.asarray(expected))
    assert report.statistic == pytest.approx(w) and report.p_value == pytest.approx(p) and report.scored == n


def test_shapiro_statistic_and_calibration_rule():
    rng = np.random.default_rng(0)
    w_normal, p_normal, _ = shapiro_w(rng.normal(size=300))
    w_two_spikes, _, _ = shapiro_w(np.r_[np.full(150, 1.0), np.full(150, 2.0)] + rng.normal(0, 0.01, 300))
    assert w_normal > 0.98 and p_normal > 0.01 and w_two_spikes < 0.8
    assert shapiro_w(np.ones(50)) == (0.0, 0.0, 50)  # constant distances: maximally unnatural
    # trimming at 3 std drops a far outlier before the test
    assert shapiro_w(np.r_[rng.normal(size=200), 100.0])[2] == 200

    streams = [rng.normal(size=(150, 4)) for _ in range(3)]
    lowest = min(min_w_over_stream(s) for s in streams)
    assert calibrate(streams, margin=0.03) == pytest.approx(lowest - 0.03)


def test_no_alarm_before_min_distances_and_bad_settings_fail():
    monitor = PradaMonitor(0.99, min_distances=50)
    stream = np.repeat(np.eye(3), 20, axis=0)  # three points asked 20 times each: nearly all distances 0
    for i, q in enumerate(stream, start=1):
        alarm = monitor.observe("c", q)
        assert alarm == (i > 50)  # first check once 50 distances (query 51)
    with pytest.raises(ValueError, match="delta"):
        PradaMonitor(1.5)
    with pytest.raises(ValueError, match="nothing to test"):
        monitor.report("unknown")
