"""Choosing and cleaning verified teacher answers before a student trains on them.

Pure functions over rows (dicts with `record_id`, `prompt_id`, `sample_index`, `completion`, and after
verification `ok`, `score`, `prompt`); each returns the kept rows and a `FilterCounts` of what it removed.
"""

from kdistill.curate.counts import FilterCounts
from kdistill.curate.decontaminate import DecontaminationResult, Overlap, decontaminate
from kdistill.curate.dedup import DedupResult, DuplicateMatch, drop_duplicates
from kdistill.curate.select import KEEP_POLICIES, SelectionResult, select_answers

__all__ = [
    "KEEP_POLICIES",
    "DecontaminationResult",
    "DedupResult",
    "DuplicateMatch",
    "FilterCounts",
    "Overlap",
    "SelectionResult",
    "decontaminate",
    "drop_duplicates",
    "select_answers",
]
