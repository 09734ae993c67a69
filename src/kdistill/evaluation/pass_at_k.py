"""pass@k: the chance that at least one of k sampled answers to a problem is correct.

Drawing k of n generated samples (c of them correct) without replacement, all k are wrong with
probability C(n-c, k) / C(n, k), so pass@k = 1 - C(n-c, k) / C(n, k): the unbiased estimator of Chen
et al. 2021 (https://arxiv.org/abs/2107.03374, section 2.1). The binomials overflow floats for the n of
real evaluations, so, as in the paper, the ratio is the product prod_{i=n-c+1}^{n} (1 - k/i); and when
n - c < k every draw of k holds a correct sample, so pass@k is exactly 1.0.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence


def _count(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    try:
        count = operator.index(value)  # ints, numpy ints; not floats
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None
    if count < 0:
        raise ValueError(f"{name} must be >= 0, got {count}")
    return count


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `n` samples of which `c` are correct (1 <= k <= n, c <= n)."""
    n, c, k = _count("n (samples)", n), _count("c (correct samples)", c), _count("k", k)
    if k < 1:
        raise ValueError("k must be >= 1")
    if k > n:
        raise ValueError(f"k ({k}) must not exceed the number of samples n ({n})")
    if c > n:
        raise ValueError(f"c ({c}) correct samples cannot exceed the n ({n}) samples")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(correct_counts: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k of a benchmark: the mean over problems, each given as (n samples, c correct)."""
    if len(correct_counts) == 0:
        raise ValueError("correct_counts is empty: pass@k needs at least one problem")
    total = 0.0
    for index, pair in enumerate(correct_counts):
        if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"correct_counts[{index}] must be a pair (n, c), got {pair!r}")
        try:
            total += pass_at_k(pair[0], pair[1], k)
        except ValueError as error:
            raise ValueError(f"correct_counts[{index}]: {error}") from None
    return total / len(correct_counts)
