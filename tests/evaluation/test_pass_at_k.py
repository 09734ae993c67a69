"""pass@k against the exact closed form, its properties, and the sampling experiment it estimates."""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kdistill.evaluation.pass_at_k import mean_pass_at_k, pass_at_k


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@st.composite
def problems(draw, max_n: int = 300) -> tuple[int, int, int]:
    n = draw(st.integers(1, max_n))
    return n, draw(st.integers(0, n)), draw(st.integers(1, n))


@given(problems())
def test_equals_the_exact_binomial_closed_form(problem):
    n, c, k = problem
    assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k"), [(10_000, 3, 100), (5_000, 1, 1), (2_000, 1_990, 10), (200, 0, 200)]
)
def test_large_n_where_binomials_exceed_floats(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), rel=1e-12, abs=1e-12)


@given(problems())
def test_pass_at_1_is_the_fraction_correct(problem):
    n, c, _ = problem
    assert pass_at_k(n, c, 1) == pytest.approx(c / n, rel=1e-12, abs=1e-15)


@given(problems(max_n=80))
def test_monotone_in_k_and_in_c(problem):
    n, c, k = problem
    if k < n:
        assert pass_at_k(n, c, k + 1) >= pass_at_k(n, c, k)
    if c < n:
        assert pass_at_k(n, c + 1, k) >= pass_at_k(n, c, k)


def test_exactly_one_when_every_draw_holds_a_correct_sample_and_zero_when_none_is_correct():
    assert pass_at_k(10, 4, 7) == 1.0  # n - c = 6 < k: no 7 samples are all wrong
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 0, 10) == 0.0


def test_stable_product_form_equals_the_naive_form_where_both_are_exact():
    # every binomial up to n = 40 is below 2**53, so the naive quotient is a correctly rounded float too
    for n in range(1, 41):
        for c in range(n + 1):
            for k in range(1, n + 1):
                naive = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(naive, rel=1e-12, abs=1e-12), (n, c, k)


@pytest.mark.parametrize(("n", "c", "k"), [(20, 5, 4), (50, 2, 10), (12, 1, 3)])
def test_monte_carlo_draws_of_k_samples_without_replacement(n, c, k):
    rng = random.Random(1234)
    trials = 20_000
    hits = sum(min(rng.sample(range(n), k)) < c for _ in range(trials))  # samples 0..c-1 are the correct ones
    p = pass_at_k(n, c, k)
    tolerance = 5 * math.sqrt(p * (1 - p) / trials)  # five standard errors of a binomial proportion
    assert abs(hits / trials - p) <= tolerance


def test_mean_over_problems_is_the_mean_of_each_problem():
    counts = [(10, 3), (10, 0), (5, 5), (20, 1)]
    expected = sum(exact_pass_at_k(n, c, 2) for n, c in counts) / len(counts)
    assert mean_pass_at_k(counts, 2) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((5, 2, 6), "k (6) must not exceed the number of samples n (5)"),
        ((5, 6, 1), "c (6) correct samples cannot exceed the n (5) samples"),
        ((5, -1, 1), "c (correct samples) must be >= 0, got -1"),
        ((-3, 0, 1), "n (samples) must be >= 0, got -3"),
        ((5, 2, 0), "k must be >= 1"),
        ((5.0, 2, 1), "n (samples) must be an int, got 5.0"),
        ((5, True, 1), "c (correct samples) must be an int, got True"),
    ],
)
def test_bad_arguments_are_clear_value_errors(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pass_at_k(*args)


def test_mean_names_the_bad_problem_and_rejects_an_empty_benchmark():
    with pytest.raises(ValueError, match=re.escape("correct_counts[1]: k (3) must not exceed")):
        mean_pass_at_k([(5, 1), (2, 1)], 3)
    with pytest.raises(ValueError, match=re.escape("correct_counts[0] must be a pair (n, c)")):
        mean_pass_at_k([(5, 1, 0)], 1)
    with pytest.raises(ValueError, match="at least one problem"):
        mean_pass_at_k([], 1)
