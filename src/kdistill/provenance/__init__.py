"""Provenance: mark what a teacher says, and test with calibrated statistics whether a model learned from it.

Every detector returns a `ProvenanceReport` (statistic, p-value, items scored, method, null, assumptions)
or a report with the same fields; none reports a bare "confidence". Language models: green-list watermark
(pooled, or per text calibrated on reference texts), radioactivity (open weights, or a suspect behind an
API), model equality.
Classifiers: DAWN API watermark, PRADA extraction monitor, agreement test. See docs/provenance.md.
"""

from kdistill.provenance.agreement import agreement_test, agreement_test_models, top1_agreement
from kdistill.provenance.calibration import CalibratedReport, calibrated_detection, reference_null
from kdistill.provenance.closed_model import (
    ClosedModelReport,
    closed_model_test,
    query_suspect,
    reference_pool,
    tokens_needed,
)
from kdistill.provenance.dawn import DawnAPI, DawnWatermark, WatermarkLog
from kdistill.provenance.dawn import verify as verify_dawn
from kdistill.provenance.model_equality import UntestableComparisonError, mmd_hamming_test
from kdistill.provenance.prada import PradaMonitor
from kdistill.provenance.prada import calibrate as calibrate_prada
from kdistill.provenance.radioactivity import radioactivity_test
from kdistill.provenance.report import ProvenanceReport
from kdistill.provenance.watermark import GreenListWatermark, NothingToScoreError, detect_watermark

__all__ = [
    "CalibratedReport",
    "ClosedModelReport",
    "DawnAPI",
    "DawnWatermark",
    "GreenListWatermark",
    "NothingToScoreError",
    "PradaMonitor",
    "ProvenanceReport",
    "UntestableComparisonError",
    "WatermarkLog",
    "agreement_test",
    "agreement_test_models",
    "calibrate_prada",
    "calibrated_detection",
    "closed_model_test",
    "detect_watermark",
    "mmd_hamming_test",
    "query_suspect",
    "radioactivity_test",
    "reference_null",
    "reference_pool",
    "tokens_needed",
    "top1_agreement",
    "verify_dawn",
]
