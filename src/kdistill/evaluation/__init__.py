"""Judging a student: metrics on tensors and modules, and the run report built from metrics.json."""

from kdistill.evaluation.metrics import (
    accuracy,
    agreement,
    count_parameters,
    latency_ms_per_sample,
    mean_std,
    size_on_disk_bytes,
)
from kdistill.evaluation.report import (
    RESULT_COLUMNS,
    domain_table,
    plot_learning_curves,
    plot_tradeoff,
    results_rows,
    results_table,
    write_report,
)

__all__ = [
    "RESULT_COLUMNS",
    "accuracy",
    "agreement",
    "count_parameters",
    "domain_table",
    "latency_ms_per_sample",
    "mean_std",
    "plot_learning_curves",
    "plot_tradeoff",
    "results_rows",
    "results_table",
    "size_on_disk_bytes",
    "write_report",
]
