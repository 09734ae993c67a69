"""Radioactivity on toy bigram worlds: detected at 10 % watermarked training text, calibrated on clean students.

What each toy stands for:

- *The language*: a random bigram model over 256 tokens with N(0, 0.5^2) logits (high entropy, like open
  text where many continuations are plausible). Tokens are sampled from it with torch.
- *The teacher*: that language sampled through the real `GreenListLogitsProcessor` (gamma 0.25, delta 2,
  context width 1): watermarked teacher text.
- *A student*: a bigram LM fitted by counting (add-0.1 smoothing) on its corpus: the model that
  cross-entropy training of a bigram LM converges to. Its greedy prediction after a window is a function
  of the window, so across texts the same (window, prediction) tuple recurs many times: the repetition
  that real LMs show on real text, in its purest form, which is what de-duplication must handle.
- *The corpus*: 200k tokens; for the radioactive student 10 % are watermarked teacher texts and 90 %
  unwatermarked text of the same language (the rest of the student's data).
- *The scoring texts*: 100 fresh watermarked teacher texts of 200 tokens, fed teacher-forced to the
  suspect (Sander et al.'s open-model setting).
- *Clean students* for the false-positive rate: each learned its own random bigram language (40k tokens,
  nothing watermarked), so the 50 tests are independent draws of the null.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdistill.provenance.radioactivity import (
    binomial_radioactivity_test,
    green_mass_test,
    radioactivity_test,
    suspect_predictions,
)
from kdistill.provenance.watermark import GreenListWatermark

V = 256
KEY = b"radioactivity-test-key-0123456789"
WM = GreenListWatermark(KEY, gamma=0.25, delta=2.0, context_width=1)


class BigramLM(torch.nn.Module):
    """A causal LM whose next-token logits depend on the last token only: logits = table[token]."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(logits.float(), requires_grad=False)  # (V, V)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])  # (B, T) -> (B, T, V)


class CopyingLM(torch.nn.Module):
    """An induction head caricature: after a token seen before in the text, predict what followed it then;
    otherwise follow a fixed bigram table. Clean (it never saw the key), yet it repeats green choices."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(logits.float(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        logits = self.table[input_ids].clone()  # (B, T, V)
        for b, row in enumerate(input_ids.tolist()):
            last_next: dict[int, int] = {}
            for t, token in enumerate(row):
                if token in last_next:
                    logits[b, t, last_next[token]] = 100.0
                if t + 1 < len(row):
                    last_next[token] = row[t + 1]
        return SimpleNamespace(logits=logits)


def language(seed: int, sigma: float = 0.5) -> torch.Tensor:
    return torch.randn((V, V), generator=torch.Generator().manual_seed(seed)) * sigma


def sample(logits: torch.Tensor, n: int, length: int, seed: int, *, watermark: bool = False) -> torch.Tensor:
    """(n, length) texts from a bigram language (inverse-CDF sampling in numpy), through the real
    watermark processor if asked."""
    rng = np.random.default_rng(seed)
    table = logits.double().numpy()
    probs = np.exp(table - table.max(axis=1, keepdims=True))
    cdf_plain = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)  # (V, V)
    processor = WM.logits_processor() if watermark else None
    x = np.empty((n, length), dtype=np.int64)
    x[:, 0] = rng.integers(0, V, n)
    for t in range(1, length):
        if processor is None:
            cdf = cdf_plain[x[:, t - 1]]  # (n, V)
        else:
            scores = processor(torch.from_numpy(x[:, t - 1 : t].copy()), torch.from_numpy(table[x[:, t - 1]]))
            p = np.exp(scores.numpy() - scores.numpy().max(axis=1, keepdims=True))
            cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
        u = rng.random((n, 1))
        x[:, t] = np.minimum((cdf < u).sum(axis=1), V - 1)
    return torch.from_numpy(x)


def count_student(corpus: torch.Tensor) -> BigramLM:
    """Maximum-likelihood bigram LM (add-0.1 smoothing) of a (N, T) corpus."""
    counts = torch.full((V, V), 0.1)
    pairs = corpus[:, :-1].reshape(-1) * V + corpus[:, 1:].reshape(-1)
    counts += torch.bincount(pairs, minlength=V * V).reshape(V, V).float()
    return BigramLM(torch.log(counts / counts.sum(dim=1, keepdim=True)))


def trained_student(base: torch.Tensor, *, tokens: int, watermarked_fraction: float, seed: int) -> BigramLM:
    texts = tokens // 200
    n_wm = round(texts * watermarked_fraction)
    parts = [sample(base, texts - n_wm, 200, seed)]
    if n_wm:
        parts.append(sample(base, n_wm, 200, seed + 1, watermark=True))
    return count_student(torch.cat(parts))


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tensors are tiny, and two threads on a shared core wait on each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def teacher_language():
    return language(0)


@pytest.fixture(scope="module")
def scoring_texts(teacher_language):
    return sample(teacher_language, 100, 200, seed=1000, watermark=True).tolist()


def test_a_student_of_10_percent_watermarked_text_is_radioactive_one_of_0_percent_is_not(
    teacher_language, scoring_texts
):
    marked = trained_student(teacher_language, tokens=200_000, watermarked_fraction=0.10, seed=1)
    clean = trained_student(teacher_language, tokens=200_000, watermarked_fraction=0.0, seed=1)

    hot = radioactivity_test(marked, scoring_texts, KEY, gamma=0.25, n_wrong_keys=99)
    cold = radioactivity_test(clean, scoring_texts, KEY, gamma=0.25, n_wrong_keys=99)

    assert hot.binomial.statistic >= 4 and hot.binomial.p_value < 1e-4
    assert abs(cold.binomial.statistic) < 3
    # a bigram student's prediction depends on the window only: one tuple per window, at most V
    assert hot.binomial.scored <= V and hot.binomial.details["positions"] == 100 * 200
    # the second statistic: no random key gives the marked student as much green mass as the true key
    assert hot.green_mass is not None and hot.green_mass.p_value == pytest.approx(1 / 100)
    assert hot.green_mass.details["wrong_keys_at_least_as_high"] == 0
    print(
        f"\n10% student: z={hot.binomial.statistic:.2f} p={hot.binomial.p_value:.2g} "
        f"scored={hot.binomial.scored}; mass p={hot.green_mass.p_value:.3g}"
        f"\n 0% student: z={cold.binomial.statistic:.2f} p={cold.binomial.p_value:.2g}; "
        f"mass p={cold.green_mass.p_value:.3g}"
    )


def test_clean_students_false_positive_rate_is_nominal_with_deduplication_and_not_without(scoring_texts):
    alpha, n_students = 0.05, 50
    rejected_dedup = rejected_all = rejected_mass = 0
    for i in range(n_students):
        student = trained_student(language(100 + i), tokens=40_000, watermarked_fraction=0.0, seed=200 + i)
        preds = suspect_predictions(student, scoring_texts, context_width=1, top_k=64)
        rejected_dedup += binomial_radioactivity_test(preds, KEY).significant(alpha)
        rejected_all += binomial_radioactivity_test(preds, KEY, deduplicate=False).significant(alpha)
        rejected_mass += green_mass_test(preds, KEY, n_wrong_keys=39, seed=i).significant(alpha)
    fpr_dedup, fpr_all, fpr_mass = (r / n_students for r in (rejected_dedup, rejected_all, rejected_mass))
    print(f"\nFPR at p<{alpha}, {n_students} clean students: {fpr_dedup=} {fpr_mass=} {fpr_all=}")
    assert fpr_dedup <= 0.10
    assert fpr_mass <= 0.10
    # without de-duplication each window's single coin flip is counted ~54 times: clean models look radioactive
    assert fpr_all >= 0.25 and fpr_all >= 3 * max(fpr_dedup, 1 / n_students)


def test_fresh_windows_stop_a_copying_clean_model_from_looking_radioactive(scoring_texts):
    table = language(7)
    copier = CopyingLM(table)  # never saw the key; copies in-context continuations of watermarked text
    naive = binomial_radioactivity_test(
        suspect_predictions(copier, scoring_texts, fresh_windows_only=False), KEY
    )
    fresh_preds = suspect_predictions(copier, scoring_texts, fresh_windows_only=True)
    fresh = binomial_radioactivity_test(fresh_preds, KEY)
    # without copying, the same table: what the copier's clean predictions alone score
    plain = binomial_radioactivity_test(suspect_predictions(BigramLM(table), scoring_texts), KEY)
    assert naive.statistic > plain.statistic + 5  # copied green tokens: a false "radioactive" verdict
    assert fresh_preds.skipped_repeated > 0
    # on fresh windows the copier has nothing to copy: exactly the plain table's tuples and green count
    assert (fresh.scored, fresh.details["green"]) == (plain.scored, plain.details["green"])


def test_suspect_predictions_positions_windows_and_deduplication():
    table = torch.full((5, 5), -5.0)
    table[torch.arange(5), (torch.arange(5) + 1) % 5] = 5.0  # argmax after token t is t + 1 (mod 5)
    preds = suspect_predictions(BigramLM(table), [[0, 1, 0, 1], [3]], context_width=1, top_k=2)
    # text 1: positions 1..4 with windows 0, 1, 0, 1 (0 and 1 repeat: skipped); text 2: position 1
    assert preds.windows == [(0,), (1,), (3,)] and preds.predictions == [1, 2, 4]
    assert (preds.positions, preds.skipped_repeated) == (5, 2)
    assert preds.top_ids.shape == (3, 2) and preds.top_probs[0, 0] > 0.99
    every = suspect_predictions(BigramLM(table), [[0, 1, 0, 1], [0]], top_k=1, fresh_windows_only=False)
    assert every.windows == [(0,), (1,), (0,), (1,), (0,)]
    assert every.distinct() == [0, 1]  # (window, prediction) tuples: (0,)->1 and (1,)->2


def test_suspect_top_probabilities_are_the_softmax_top_k():
    table = torch.randn(7, 7, generator=torch.Generator().manual_seed(3)) * 3
    preds = suspect_predictions(BigramLM(table), [[2, 5, 1]], context_width=1, top_k=3)
    probs = torch.softmax(table[[2, 5, 1]].double(), dim=-1)  # the rows predicting positions 1, 2, 3
    expected = probs.topk(3, dim=-1)
    np.testing.assert_array_equal(preds.top_ids, expected.indices.numpy())
    np.testing.assert_allclose(preds.top_probs, expected.values.numpy(), rtol=1e-6, atol=1e-7)


def test_binomial_report_matches_a_brute_force_count():
    texts = sample(language(3), 10, 50, seed=5).tolist()
    student = BigramLM(language(4))
    preds = suspect_predictions(student, texts, context_width=1)
    report = binomial_radioactivity_test(preds, KEY, gamma=0.25)
    tuples = {(w, p) for w, p in zip(preds.windows, preds.predictions, strict=True)}
    green = sum(bool(WM.green_mask([list(w)], V)[0, p]) for w, p in tuples)
    assert (report.scored, report.details["green"]) == (len(tuples), green)
    from scipy.stats import binom

    assert report.p_value == pytest.approx(binom.sf(green - 1, len(tuples), 0.25))
    assert report.to_dict()["assumptions"][0].startswith("each distinct (window, predicted token)")


def test_green_mass_of_one_key_is_the_probability_on_its_green_list():
    logits = language(9)
    preds = suspect_predictions(BigramLM(logits), [[1, 2, 3]], top_k=V)  # the whole vocabulary
    probs = torch.softmax(logits, dim=-1)
    mask = WM.green_mask([[1], [2], [3]], V)  # (3, V)
    expected = float(np.mean([(probs[t].numpy() * mask[i]).sum() for i, t in enumerate([1, 2, 3])]))
    report = green_mass_test(preds, KEY, n_wrong_keys=9)
    assert report.statistic == pytest.approx(expected, rel=1e-5)
    assert report.p_value in {k / 10 for k in range(1, 11)}
