"""The calibrated per-text watermark test: the rank formula, its smallest p, and calibration for one fixed key.

The toy "human" language is a random bigram language over 100 tokens with N(0, 3^2) logits, sampled in
numpy: low entropy, so texts share many (context, token) pairs, as texts in one language share common word
pairs. Under one fixed key those shared pairs have fixed green bits, which is what makes per-text verdicts
under one key correlated (the analytic p-value holds over random keys). Texts are 60..160 tokens long.
Watermarked texts are sampled from the same bigram logits through the real `GreenListLogitsProcessor`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kdistill.provenance.calibration import (
    ReferenceNull,
    calibrated_detection,
    reference_null,
    references_needed,
)
from kdistill.provenance.watermark import GreenListWatermark, NothingToScoreError, detect_watermark

V = 100
KEY = b"calibration-test-key-0123456789"


def language(seed: int, sigma: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sigma, (V, V))


def null_texts(
    logits: np.ndarray, n: int, seed: int, lengths: tuple[int, int] = (60, 160)
) -> list[list[int]]:
    """n texts of the bigram language (no key involved), lengths uniform in `lengths`."""
    rng = np.random.default_rng(seed)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    x = rng.integers(0, V, n)
    columns = [x]
    for _ in range(lengths[1] - 1):
        x = np.minimum((cdf[x] < rng.random((n, 1))).sum(axis=1), V - 1)
        columns.append(x)
    tokens = np.stack(columns, axis=1)  # (n, max length)
    sizes = rng.integers(lengths[0], lengths[1] + 1, n)
    return [tokens[i, : sizes[i]].tolist() for i in range(n)]


def watermarked_text(logits: np.ndarray, wm: GreenListWatermark, length: int, seed: int) -> list[int]:
    """One text sampled from the bigram logits after the watermark's logits processor."""
    processor = wm.logits_processor()
    generator = torch.Generator().manual_seed(seed)
    ids = [seed % V]
    for _ in range(length - 1):
        scores = torch.tensor(logits[ids[-1]], dtype=torch.float32)[None]  # (1, V)
        scores = processor(torch.tensor([ids]), scores)
        ids.append(int(torch.multinomial(torch.softmax(scores[0], dim=-1), 1, generator=generator)))
    return ids


# ---------------------------------------------------------------------------------------------- the formula


def test_empirical_p_is_the_rank_among_references_with_ties_against_the_suspect():
    refs = null_texts(language(0), 30, seed=1)
    null = reference_null([[], [5], refs[0][:6], *refs], KEY, min_scored=10)
    z_refs = [detect_watermark(t, KEY).statistic for t in refs]  # scored one by one, independently
    assert null.n == 30 and null.skipped == 3  # empty, one token (no pair), 5 pairs < 10
    assert list(null.z) == sorted(z_refs)

    for suspect in (refs[7], null_texts(language(0), 1, seed=2)[0], [3, 4] * 40):
        report = calibrated_detection(suspect, KEY, null)
        z = detect_watermark(suspect, KEY).statistic
        at_least = sum(r >= z for r in z_refs)  # a suspect equal to a reference ties with it
        assert report.reference_at_least == at_least
        assert report.empirical_p_value == (1 + at_least) / 31
        assert report.analytic.p_value == detect_watermark(suspect, KEY).p_value
    assert calibrated_detection(refs[7], KEY, null).reference_at_least >= 1  # itself


def test_what_cannot_be_calibrated_raises():
    refs = null_texts(language(0), 5, seed=1)
    with pytest.raises(NothingToScoreError, match="all 3 have fewer than 10 distinct"):
        reference_null([[], [1], [1, 2, 3]], KEY)
    null = reference_null(refs, KEY)
    with pytest.raises(ValueError, match="scored under another key"):
        calibrated_detection(refs[0], b"another-key-0123456789", null)
    with pytest.raises(NothingToScoreError, match="no \\(context, token\\) pair"):
        calibrated_detection([7], KEY, null)
    with pytest.raises(NothingToScoreError, match="no text"):
        detect_watermark([], KEY)


def test_the_smallest_attainable_p_is_one_over_n_plus_one_and_noted_below_alpha():
    for alpha in (0.5, 0.1, 0.05, 0.03, 0.01, 0.001):
        n = references_needed(alpha)
        assert 1 / (n + 1) < alpha <= 1 / n  # the fewest references that make p < alpha possible
    assert (references_needed(0.05), references_needed(0.01)) == (20, 100)

    refs = null_texts(language(0), 20, seed=3)
    top = max(refs, key=lambda t: detect_watermark(t, KEY).statistic)
    short = reference_null(refs[:19], KEY)  # 19 references: p >= 1/20 = 0.05 always
    report = calibrated_detection(top, KEY, short, alpha=0.05)
    assert report.smallest_attainable_p == 1 / 20 and not report.significant()
    assert report.notes == (
        "with 19 reference texts the smallest attainable p is 0.05, so p < 0.05 is impossible; "
        "use at least 20",
    )
    assert "note: with 19 reference texts" in report.summary()
    enough = reference_null(refs, KEY)  # 20: 1/21 < 0.05
    assert calibrated_detection(top, KEY, enough, alpha=0.05).notes == ()
    assert calibrated_detection(top, KEY, enough, alpha=0.01).notes[0].endswith("use at least 100")
    tiny = calibrated_detection(refs[0][:8], KEY, enough)  # 7 pairs < min_scored 10 of the references
    assert "fewer than the 10 every reference text" in tiny.notes[0]


def test_report_round_trips_and_summarises_both_p_values():
    refs = null_texts(language(0), 40, seed=4)
    report = calibrated_detection(refs[0], KEY, reference_null(refs[1:], KEY))
    out = json.loads(json.dumps(report.to_dict()))
    assert out["p_value"] == report.empirical_p_value and out["analytic_p_value"] == report.analytic.p_value
    assert out["analytic"] == json.loads(report.analytic.to_json())
    assert (out["n_reference"], out["reference_skipped"], out["scored"]) == (39, 0, report.analytic.scored)
    assert out["p_value_kind"] == "empirical: rank among 39 reference texts under the same key (+1 corrected)"
    assert KEY.decode() not in json.dumps(out)
    line = report.summary()
    assert f"empirical p = {report.empirical_p_value:.3g}" in line
    assert f"analytic p = {report.analytic.p_value:.3g}" in line and "\n" not in line


# ---------------------------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def scored_null_texts():
    """z and analytic p of 1000 reference and 1000 suspect null texts under each of 6 keys."""
    texts = null_texts(language(0), 2000, seed=10)
    keys = [f"fixed-key-{k}-0123456789abcdef".encode() for k in range(6)]
    out = {}
    for key in keys:
        reports = [detect_watermark(t, key) for t in texts]
        out[key] = (np.array([r.statistic for r in reports]), np.array([r.p_value for r in reports]))
    return out


def test_empirical_p_values_are_calibrated_for_every_fixed_key(scored_null_texts):
    """Under one key, suspects like the references get p < alpha at rate alpha; the analytic p does not."""
    n_ref, m = 1000, 1000
    analytic_rates = []
    for key, (z, p_analytic) in scored_null_texts.items():
        null = ReferenceNull(
            z=tuple(sorted(z[:n_ref])),
            skipped=0,
            min_scored=10,
            gamma=0.25,
            context_width=1,
            key_fingerprint="",
        )
        p_emp = np.array([null.p_value(v) for v in z[n_ref:]])
        for alpha in (0.05, 0.1):
            # p < alpha <=> fewer than k references reach the suspect's z, k = ceil(alpha (n+1)) - 1: the
            # suspect beats the k-th largest reference. Given the references that has probability
            # Beta(k, n + 1 - k) (continuous z), mean k / (n + 1); m suspects add binomial noise.
            k = math.ceil(alpha * (n_ref + 1)) - 1
            level = k / (n_ref + 1)
            var_refs = k * (n_ref + 1 - k) / ((n_ref + 1) ** 2 * (n_ref + 2))
            sd = math.sqrt(level * (1 - level) / m + var_refs)
            rate = float(np.mean(p_emp < alpha))
            print(f"\nkey {key[:11]!r} alpha {alpha}: empirical {rate:.3f} (level {level:.3f} +- {sd:.3f})")
            assert abs(rate - level) <= 4 * sd
        analytic_rates.append(float(np.mean(p_analytic[n_ref:] < 0.05)))
    print(f"analytic rate of p < 0.05 by key: {[round(r, 3) for r in analytic_rates]}")
    # the analytic p holds over keys, not for each: its per-key rates spread far beyond binomial noise
    binomial_sd = math.sqrt(0.05 * 0.95 / m)
    assert max(analytic_rates) - min(analytic_rates) > 8 * binomial_sd


def test_a_watermarked_text_ranks_above_every_reference():
    logits = language(0)
    wm = GreenListWatermark(KEY, gamma=0.25, delta=2.0, context_width=1)
    null = reference_null(null_texts(logits, 199, seed=20), KEY)
    for seed in range(3):
        report = calibrated_detection(watermarked_text(logits, wm, 150, seed), KEY, null)
        print(
            f"\nwatermarked text {seed}: z = {report.statistic:.2f}, analytic p = {report.analytic.p_value:.2g}"
        )
        assert report.empirical_p_value == 1 / 200 == report.smallest_attainable_p
        assert report.significant(0.01) and report.analytic.p_value < 1e-3
