"""What every provenance detector returns: a test statistic with an exact p-value and its assumptions.

A detector never reports a bare "confidence". It reports the statistic it computed, the p-value of that
statistic under a stated null hypothesis, how many items (tokens, queries, samples) were scored, the
method, and the assumptions under which the p-value holds; whoever reads it decides what threshold is
evidence. `significant(alpha)` is only a convenience for that comparison.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProvenanceReport:
    """The outcome of one provenance test."""

    method: str  # e.g. "green-list watermark (Kirchenbauer et al. 2023)"
    statistic_name: str  # e.g. "z", "green tokens", "MMD^2", "agreement"
    statistic: float
    p_value: float  # P(statistic at least this extreme | null), exact or permutation, as `p_value_kind` says
    p_value_kind: str  # "exact binomial", "permutation (n=999, +1 corrected)", ...
    null_hypothesis: str  # in words: what p_value is computed under
    scored: int  # items that entered the statistic (after de-duplication)
    assumptions: tuple[str, ...]  # what must hold for the p-value to be valid
    details: dict[str, Any] = field(
        default_factory=dict
    )  # method-specific numbers (counts, gamma, keys, ...)

    def __post_init__(self) -> None:
        if not (0.0 <= self.p_value <= 1.0) or math.isnan(self.p_value):
            raise ValueError(f"p_value must be in [0, 1], got {self.p_value}")
        if self.scored < 0:
            raise ValueError(f"scored must be >= 0, got {self.scored}")

    def significant(self, alpha: float = 0.05) -> bool:
        """p_value < alpha: the null hypothesis is rejected at level alpha (evidence, not proof)."""
        return self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["assumptions"] = list(self.assumptions)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """One line a person can read: method, statistic, p-value, items scored."""
        return (
            f"{self.method}: {self.statistic_name} = {self.statistic:.4g}, p = {self.p_value:.3g} "
            f"({self.p_value_kind}; null: {self.null_hypothesis}), {self.scored} items scored"
        )
