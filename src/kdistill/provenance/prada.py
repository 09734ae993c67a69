"""PRADA-style model-extraction monitor: does one client's query stream look like natural traffic?

Juuti et al. 2019, "PRADA: Protecting Against DNN Model Stealing Attacks" (EuroS&P, arXiv:1805.02628).
Extraction attacks that synthesise their queries (Jacobian-based augmentation, small random steps around a
few seed inputs) place each new query at a nearly fixed, small distance from an earlier one, so the
distances between a query and its nearest earlier query pile up at a few values. Natural inputs queried in
random order give nearest-earlier distances that PRADA found close to normally distributed. Per client:

    c        = the class the model answered for x
    d_min(x) = min_{y in G_c} ||x - y||_2            (G_c: the client's growing set for class c)
    D        = D + {d_min(x)};  x joins G_c when d_min(x) > T_c, and then
    T_c      = max(T_c, mean(D_Gc) - std(D_Gc))      (D_Gc: the d_min of the members of G_c)
    W        = Shapiro-Wilk statistic of D after dropping values beyond mean +- 3 std
    alarm    when |D| >= min_distances and W < delta

`delta` is chosen by `calibrate` on benign streams. The alarm rule is a heuristic: the Shapiro-Wilk
p-value that the report carries is exact only under its own null (the trimmed distances are i.i.d.
normal), which benign traffic satisfies only approximately, and the false-alarm rate of the rule is the
empirical one of the calibration streams, not a significance level.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from kdistill.provenance.report import ProvenanceReport

METHOD = "PRADA-style extraction monitor (Juuti et al. 2019)"
ASSUMPTIONS = (
    "the alarm rule W < delta is a heuristic: delta was calibrated on benign streams, so its false-alarm "
    "rate is the empirical rate on those streams and holds only for traffic like them",
    "the Shapiro-Wilk p-value is exact only under its null that the trimmed distances are i.i.d. normal; "
    "successive nearest-earlier distances are dependent and benign ones only roughly normal, so the "
    "p-value describes the shape of the distances and is not the false-alarm probability of the monitor",
    "distances are L2 on the inputs as given (scale features comparably); a client that spreads its "
    "queries over several identities is seen as several short streams",
)


def _trimmed(d: np.ndarray, sigmas: float) -> np.ndarray:
    """Drop distances farther than `sigmas` standard deviations from the mean (PRADA's outlier step)."""
    mean, std = d.mean(), d.std()
    return d[np.abs(d - mean) <= sigmas * std] if std > 0 else d


def shapiro_w(distances: np.ndarray, trim_sigmas: float = 3.0) -> tuple[float, float, int]:
    """(W, Shapiro-Wilk p-value, count) of the trimmed distances; (0, 0, n) when they do not vary at all."""
    d = _trimmed(np.asarray(distances, dtype=np.float64), trim_sigmas)
    if len(d) < 3:
        raise ValueError(f"Shapiro-Wilk needs at least 3 distances, got {len(d)}")
    if np.ptp(d) == 0:
        # identical distances: scipy returns W = 1 with a warning; a constant stream is maximally
        # unnatural, so report W = 0 (alarm) and p = 0 instead of "perfectly normal"
        return 0.0, 0.0, len(d)
    result = stats.shapiro(d)
    return float(result.statistic), float(result.pvalue), len(d)


@dataclass
class _ClassSet:
    """PRADA's growing set G_c of one class, the d_min of its members (D_Gc) and its threshold T_c."""

    buffer: np.ndarray | None = None  # (capacity, F); the first `size` rows are the members
    size: int = 0
    member_dist: list[float] = field(default_factory=list)
    threshold: float = 0.0

    def nearest(self, x: np.ndarray) -> float:
        assert self.buffer is not None and self.size > 0
        return float(np.sqrt(((self.buffer[: self.size] - x) ** 2).sum(axis=1).min()))

    def add(self, x: np.ndarray, d_min: float) -> None:
        if self.buffer is None:
            self.buffer = np.empty((16, len(x)))
        elif self.size == len(self.buffer):  # grow by doubling: O(1) amortised per member
            self.buffer = np.concatenate([self.buffer, np.empty_like(self.buffer)])
        self.buffer[self.size] = x
        self.size += 1
        self.member_dist.append(d_min)
        if self.size > 1:
            dg = np.asarray(self.member_dist)
            self.threshold = max(self.threshold, float(dg.mean() - dg.std()))


@dataclass
class _Client:
    sets: dict[int, _ClassSet] = field(default_factory=dict)
    distances: list[float] = field(default_factory=list)  # D
    queries: int = 0
    alarm_at: int | None = None  # 1-based index of the query that raised the first alarm
    lowest_w: float = 1.0  # lowest W at any check so far


class PradaMonitor:
    """Watches each client's queries and raises an alarm once its distance distribution looks synthetic.

    `observe(client, x, label)` takes one query (any shape; flattened) and the class the protected model
    answered (None: one set for all classes). Once a client has `min_distances` distances, W is computed
    every `check_every` queries; the first W < delta raises the alarm, which stays raised.
    """

    def __init__(
        self, delta: float, *, min_distances: int = 100, trim_sigmas: float = 3.0, check_every: int = 1
    ) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta is a Shapiro-Wilk W threshold in (0, 1), got {delta}")
        if min_distances < 3:
            raise ValueError(f"min_distances must be >= 3, got {min_distances}")
        self.delta = delta
        self.min_distances = min_distances
        self.trim_sigmas = trim_sigmas
        self.check_every = check_every
        self._clients: dict[str, _Client] = {}

    def observe(self, client: str, x: np.ndarray, label: int | None = None) -> bool:
        """Record one query; True when this client's alarm is raised (now or earlier)."""
        state = self._clients.setdefault(client, _Client())
        state.queries += 1
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        group = state.sets.setdefault(-1 if label is None else int(label), _ClassSet())
        if group.size == 0:
            group.add(x, 0.0)  # the first query of a class has no earlier one: no distance
            return state.alarm_at is not None
        d_min = group.nearest(x)
        state.distances.append(d_min)
        if d_min > group.threshold:
            group.add(x, d_min)
        if self._due(state):
            w, _, _ = shapiro_w(np.asarray(state.distances), self.trim_sigmas)
            state.lowest_w = min(state.lowest_w, w)
            if w < self.delta and state.alarm_at is None:
                state.alarm_at = state.queries
        return state.alarm_at is not None

    def observe_stream(
        self, client: str, xs: Iterable[np.ndarray], labels: Iterable[int | None] | None = None
    ) -> int | None:
        """Feed a whole stream; the 1-based index of the query that raised the alarm, or None."""
        xs = list(xs)
        labels = [None] * len(xs) if labels is None else list(labels)
        for x, label in zip(xs, labels, strict=True):
            self.observe(client, x, label)
        return self.alarm_at(client)

    def alarm_at(self, client: str) -> int | None:
        state = self._clients.get(client)
        return None if state is None else state.alarm_at

    def distances(self, client: str) -> np.ndarray:
        """D: the nearest-earlier distances of this client's queries so far, in query order."""
        state = self._clients.get(client)
        return np.asarray([] if state is None else state.distances, dtype=np.float64)

    def lowest_w(self, client: str) -> float:
        """The lowest W seen at any check of this client's stream (1.0 before the first check)."""
        state = self._clients.get(client)
        return 1.0 if state is None else state.lowest_w

    def _due(self, state: _Client) -> bool:
        n = len(state.distances)
        return n >= self.min_distances and (n - self.min_distances) % self.check_every == 0

    def report(self, client: str) -> ProvenanceReport:
        """The client's current W, its Shapiro-Wilk p-value, and whether the (heuristic) alarm is raised."""
        state = self._clients.get(client)
        if state is None or len(state.distances) < 3:
            raise ValueError(f"client {client!r} has fewer than 3 distances; nothing to test yet")
        w, p, n = shapiro_w(np.asarray(state.distances), self.trim_sigmas)
        return ProvenanceReport(
            method=METHOD,
            statistic_name="Shapiro-Wilk W of nearest-earlier-query distances",
            statistic=w,
            p_value=p,
            p_value_kind="Shapiro-Wilk (scipy), valid under its normality null only",
            null_hypothesis="the client's trimmed nearest-earlier distances are i.i.d. normal",
            scored=n,
            assumptions=ASSUMPTIONS,
            details={
                "client": client,
                "queries": state.queries,
                "distances": len(state.distances),
                "alarm": state.alarm_at is not None,
                "alarm_at_query": state.alarm_at,
                "alarm_rule": f"W < delta = {self.delta:.4f} once >= {self.min_distances} distances "
                "(heuristic, calibrated on benign streams)",
                "delta": self.delta,
                "min_distances": self.min_distances,
                "growing_set_sizes": {c: s.size for c, s in state.sets.items()},
            },
        )


def min_w_over_stream(
    stream: np.ndarray,
    labels: Sequence[int] | None = None,
    *,
    min_distances: int = 100,
    trim_sigmas: float = 3.0,
    check_every: int = 1,
) -> float:
    """The lowest W the monitor would see anywhere along one stream (1.0 if it never gets to test)."""
    monitor = PradaMonitor(0.5, min_distances=min_distances, trim_sigmas=trim_sigmas, check_every=check_every)
    monitor.observe_stream("calibration", stream, labels)
    return monitor.lowest_w("calibration")


def calibrate(
    benign_streams: Sequence[np.ndarray],
    labels: Sequence[Sequence[int]] | None = None,
    *,
    margin: float = 0.02,
    min_distances: int = 100,
    trim_sigmas: float = 3.0,
    check_every: int = 1,
) -> float:
    """delta = (lowest W any benign stream reaches at any check) - margin.

    Choosing delta below every benign W seen is PRADA's own rule (no false alarm on the benign data it
    was set on). The margin keeps fresh benign streams, whose lowest W is a new draw, from landing just
    below the calibration minimum; it trades detection delay for fewer false alarms. Calibrate with the
    same min_distances / check_every the monitor will use, on streams at least as long as real ones.
    """
    if not benign_streams:
        raise ValueError("calibrate needs at least one benign stream")
    per_stream = [
        min_w_over_stream(
            s,
            None if labels is None else labels[i],
            min_distances=min_distances,
            trim_sigmas=trim_sigmas,
            check_every=check_every,
        )
        for i, s in enumerate(benign_streams)
    ]
    delta = min(per_stream) - margin
    if not 0.0 < delta < 1.0:
        raise ValueError(f"calibrated delta {delta:.4f} is outside (0, 1); lower the margin")
    return delta
