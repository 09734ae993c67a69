"""What one curation filter removed, as one row of the table a report shows for the whole pipeline.

Every filter (selection, deduplication, decontamination) returns one `FilterCounts`, so a report can
stack them and a reader sees where the training set went: `before - after == removed == sum(reasons)`
is checked here once, not trusted in each filter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FilterCounts:
    """Rows in and out of one filter, and how many were removed for each reason."""

    name: str
    before: int
    after: int
    removed: int
    reasons: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for label in ("before", "after", "removed"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{self.name}: {label} must be a non-negative int, got {value!r}")
        if self.before - self.after != self.removed:
            raise ValueError(
                f"{self.name}: removed ({self.removed}) must equal before - after "
                f"({self.before} - {self.after})"
            )
        if sum(self.reasons.values()) != self.removed:
            raise ValueError(
                f"{self.name}: the reasons {self.reasons} add up to {sum(self.reasons.values())}, "
                f"not to the {self.removed} rows removed"
            )

    @classmethod
    def from_reasons(cls, name: str, before: int, reasons: Mapping[str, int]) -> FilterCounts:
        """The counts of a filter that saw `before` rows and removed `reasons[r]` of them for each reason r."""
        removed = sum(reasons.values())
        return cls(name=name, before=before, after=before - removed, removed=removed, reasons=dict(reasons))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "before": self.before,
            "after": self.after,
            "removed": self.removed,
            "reasons": dict(self.reasons),
        }
