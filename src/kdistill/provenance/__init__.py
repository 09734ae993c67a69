"""Provenance: mark what a teacher says, and test with calibrated statistics whether a model learned from it.

Every detector returns a `ProvenanceReport` (statistic, p-value, items scored, method, assumptions).
"""

from kdistill.provenance.report import ProvenanceReport

__all__ = ["ProvenanceReport"]
