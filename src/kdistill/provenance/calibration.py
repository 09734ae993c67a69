"""A per-text watermark test calibrated for the key in hand: rank a text's z among human reference texts.

The analytic p-value of `detect_watermark` holds over random keys (each distinct (context, token) pair is
green with probability gamma). For one fixed key, texts that share common pairs share those pairs' green
bits, so one key can flag human texts more (or less) often than alpha. This module builds the null of
the key in hand instead: the owner scores their own human-written reference texts under the same key,
gamma and context width, with the per-text statistic `detect_watermark` reports (z of the green count among
the text's distinct pairs), and a suspect text's z is ranked among theirs::

    p_empirical = (1 + #{reference z >= observed z}) / (n_reference + 1)

If the suspect was written without the key the way the references were (exchangeable with them), then
P(p_empirical <= a) <= a for every a and for this key: ties count against the suspect, and the +1 counts
the suspect itself. The price is resolution: p_empirical is never below 1 / (n_reference + 1), so a test
at level alpha needs more than 1/alpha - 1 references (20 for p < 0.05, 100 for p < 0.01). Reference texts
with fewer than `min_scored` distinct pairs are skipped (their z takes a handful of values and would
spread the null's tail with short-text noise) and counted in the report.

The analytic p-value is reported beside the empirical one: a large gap between them shows this key's
green lists treating text like the references differently from an average key's.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kdistill.provenance.report import ProvenanceReport
from kdistill.provenance.watermark import NothingToScoreError, detect_watermark, key_fingerprint

DEFAULT_MIN_SCORED = 10
_TIE = 1e-9  # z values this close count as ties (against the suspect): equal counts, rounded differently


def references_needed(alpha: float) -> int:
    """The fewest reference texts whose smallest attainable p, 1 / (n + 1), is below `alpha`."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n = max(0, math.ceil(1.0 / alpha) - 2)
    while 1.0 / (n + 1) >= alpha:
        n += 1
    return n


@dataclass(frozen=True)
class ReferenceNull:
    """The per-text z of the owner's human-written reference texts under one key: an empirical null."""

    z: tuple[float, ...]  # sorted ascending, one per reference text that was scored
    skipped: int  # reference texts with fewer than `min_scored` distinct pairs
    min_scored: int
    gamma: float
    context_width: int
    key_fingerprint: str  # which key the references were scored under (never the key)

    @property
    def n(self) -> int:
        return len(self.z)

    @property
    def smallest_p(self) -> float:
        return 1.0 / (self.n + 1)

    def at_least(self, z: float) -> int:
        """How many reference texts scored z or more (ties included)."""
        return self.n - bisect.bisect_left(self.z, z - _TIE)

    def p_value(self, z: float) -> float:
        """(1 + #{reference z >= z}) / (n + 1)."""
        return (1 + self.at_least(z)) / (self.n + 1)


def reference_null(
    reference_ids: Iterable[Sequence[int]],
    key: str | bytes,
    *,
    gamma: float = 0.25,
    context_width: int = 1,
    min_scored: int = DEFAULT_MIN_SCORED,
) -> ReferenceNull:
    """Score each reference text (token ids) on its own under `key`; texts with < `min_scored` pairs are skipped.

    Raises `NothingToScoreError` when no reference text has `min_scored` distinct pairs.
    """
    if min_scored < 1:
        raise ValueError(f"min_scored must be >= 1, got {min_scored}")
    z, skipped = [], 0
    for ids in reference_ids:
        try:
            report = detect_watermark(list(ids), key, gamma=gamma, context_width=context_width)
        except NothingToScoreError:
            skipped += 1
            continue
        if report.scored < min_scored:
            skipped += 1
            continue
        z.append(report.statistic)
    if not z:
        raise NothingToScoreError(
            f"no reference text to calibrate with: all {skipped} have fewer than {min_scored} distinct "
            "(context, token) pairs"
        )
    return ReferenceNull(
        z=tuple(sorted(z)),
        skipped=skipped,
        min_scored=min_scored,
        gamma=gamma,
        context_width=context_width,
        key_fingerprint=key_fingerprint(key),
    )


ASSUMPTIONS = (
    "the reference texts are human-written texts like the suspect (genre, length, language) that never "
    "passed through the watermarked teacher",
    "references and suspect are scored under the same key, gamma, context width and tokenizer",
    "then, if the suspect was written without the key, it is exchangeable with the references and "
    "P(empirical p <= a) <= a for this key; the empirical p is never below 1/(n_reference + 1)",
    "statistical evidence, not proof: a small p says the text is unlikely to be human-written like the "
    "references, not who wrote it",
)


@dataclass(frozen=True)
class CalibratedReport:
    """One text's watermark test with two p-values: empirical (reference texts, this key) and analytic."""

    analytic: ProvenanceReport  # `detect_watermark` on this text alone: z, exact binomial p, counts
    empirical_p_value: float  # (1 + reference_at_least) / (n_reference + 1)
    n_reference: int  # reference texts in the null
    reference_at_least: int  # of them, those with z >= this text's z
    reference_skipped: int  # reference texts left out (fewer than min_scored pairs)
    alpha: float  # the level the notes check against (p < alpha is attainable?)
    notes: tuple[str, ...]  # what limits this result (too few references, a text shorter than them)

    @property
    def statistic(self) -> float:
        return self.analytic.statistic

    @property
    def smallest_attainable_p(self) -> float:
        return 1.0 / (self.n_reference + 1)

    def significant(self, alpha: float | None = None) -> bool:
        """empirical p < alpha (default: the report's alpha)."""
        return self.empirical_p_value < (self.alpha if alpha is None else alpha)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": f"{self.analytic.method}, calibrated on reference texts",
            "statistic_name": self.analytic.statistic_name,
            "statistic": self.statistic,
            "p_value": self.empirical_p_value,
            "p_value_kind": f"empirical: rank among {self.n_reference} reference texts under the same key "
            "(+1 corrected)",
            "null_hypothesis": "the text was written without the key, like the reference texts",
            "analytic_p_value": self.analytic.p_value,
            "analytic_p_value_kind": self.analytic.p_value_kind,
            "scored": self.analytic.scored,
            "n_reference": self.n_reference,
            "reference_at_least": self.reference_at_least,
            "reference_skipped": self.reference_skipped,
            "smallest_attainable_p": self.smallest_attainable_p,
            "alpha": self.alpha,
            "notes": list(self.notes),
            "assumptions": list(ASSUMPTIONS),
            "analytic": self.analytic.to_dict(),
        }

    def summary(self) -> str:
        """One line: z, empirical p (with n and its floor), analytic p, items scored, notes."""
        line = (
            f"{self.analytic.method}, calibrated: z = {self.statistic:.4g}, empirical p = "
            f"{self.empirical_p_value:.3g} (rank among {self.n_reference} reference texts under the same key, "
            f"+1 corrected; smallest attainable {self.smallest_attainable_p:.3g}), analytic p = "
            f"{self.analytic.p_value:.3g} ({self.analytic.p_value_kind}, per-pair null), "
            f"{self.analytic.scored} items scored"
        )
        return line + "".join(f"; note: {note}" for note in self.notes)


def calibrated_detection(
    token_ids: Sequence[int],
    key: str | bytes,
    null: ReferenceNull,
    *,
    alpha: float = 0.05,
    vocab_size: int | None = None,
) -> CalibratedReport:
    """Test one text (token ids) for the watermark of `key`, ranking its z among the reference null's.

    `null` must have been scored under the same key (checked by fingerprint); gamma and context width are
    the null's. Raises `NothingToScoreError` for a text with no pair to score.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if key_fingerprint(key) != null.key_fingerprint:
        raise ValueError(
            f"the reference texts were scored under another key (fingerprint {null.key_fingerprint}, "
            f"this key {key_fingerprint(key)}); score them under the key being tested"
        )
    analytic = detect_watermark(
        token_ids, key, gamma=null.gamma, context_width=null.context_width, vocab_size=vocab_size
    )
    at_least = null.at_least(analytic.statistic)
    notes = []
    if null.smallest_p >= alpha:
        notes.append(
            f"with {null.n} reference texts the smallest attainable p is {null.smallest_p:.3g}, so p < {alpha:g} "
            f"is impossible; use at least {references_needed(alpha)}"
        )
    if analytic.scored < null.min_scored:
        notes.append(
            f"this text has {analytic.scored} distinct pairs, fewer than the {null.min_scored} every "
            "reference text was required to have: it is not like the references"
        )
    return CalibratedReport(
        analytic=analytic,
        empirical_p_value=(1 + at_least) / (null.n + 1),
        n_reference=null.n,
        reference_at_least=at_least,
        reference_skipped=null.skipped,
        alpha=alpha,
        notes=tuple(notes),
    )


__all__ = [
    "CalibratedReport",
    "ReferenceNull",
    "calibrated_detection",
    "reference_null",
    "references_needed",
]
