"""Agreement test: does a suspect agree with the teacher more than independently trained models do?

On probe inputs x_1..x_N, the statistic of a model m is its top-1 agreement with the teacher,

    A(m) = (1/N) sum_i [argmax m(x_i) == argmax teacher(x_i)].

A student distilled from the teacher copies its decisions, including its mistakes and the side of each
ambiguous input it falls on, so its A is higher than that of models trained independently for the same task.
The references r_1..r_R are such independent models. Under the null that the suspect is one more of them
(the R + 1 values A(suspect), A(r_1), ..., A(r_R) are exchangeable), the rank p-value

    p = (1 + #{j : A(r_j) >= A(suspect)}) / (1 + R)

satisfies P(p <= alpha) <= alpha for every alpha: exact, with ties counted against the suspect. Its
smallest attainable value is 1/(R + 1): p < 0.01 needs at least 100 references.

Not reported, on purpose: a paired permutation (sign-flip) test over probe items. Swapping suspect and
reference item by item assumes the items are exchangeable *within* each model, but a model's errors are
correlated across items (a slightly better-trained independent model agrees more on many items at once), so
with hundreds of probes such a test rejects for independent models that are merely more accurate. The
model-level rank test above only assumes what the null says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from kdistill.provenance.report import ProvenanceReport

METHOD = "top-1 agreement with the teacher vs independent reference models"


def as_labels(outputs: np.ndarray) -> np.ndarray:
    """(N,) int labels from labels (N,) or scores/logits (N, C)."""
    out = np.asarray(outputs)
    if out.ndim == 2:
        return out.argmax(axis=1).astype(np.int64)
    if out.ndim == 1:
        return out.astype(np.int64)
    raise ValueError(f"expected labels (N,) or scores (N, C), got shape {out.shape}")


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of items where the two label vectors (or score matrices) pick the same class."""
    la, lb = as_labels(a), as_labels(b)
    if la.shape != lb.shape:
        raise ValueError(f"label vectors differ in length: {la.shape} vs {lb.shape}")
    return float(np.mean(la == lb))


def agreement_test(
    teacher: np.ndarray, suspect: np.ndarray, references: Sequence[np.ndarray]
) -> ProvenanceReport:
    """Rank the suspect's agreement with the teacher among the references' agreements.

    teacher, suspect: (N,) labels or (N, C) scores on the same N probe inputs; references: R such arrays,
    one per independently trained reference model. Returns the +1-corrected rank p-value.
    """
    if len(references) == 0:
        raise ValueError("the agreement test needs at least one reference model")
    t = as_labels(teacher)
    a_suspect = top1_agreement(t, suspect)
    a_refs = np.array([top1_agreement(t, r) for r in references])
    r = len(a_refs)
    at_least = int(np.sum(a_refs >= a_suspect))
    p = (1 + at_least) / (1 + r)
    spread = float(a_refs.std(ddof=1)) if r > 1 else float("nan")
    return ProvenanceReport(
        method=METHOD,
        statistic_name="top-1 agreement with the teacher",
        statistic=a_suspect,
        p_value=p,
        p_value_kind=f"rank among {r} reference models (+1 corrected), smallest attainable {1 / (1 + r):.3g}",
        null_hypothesis=(
            "the suspect was trained independently of the teacher, like the references: its agreement and "
            "theirs are exchangeable"
        ),
        scored=len(t),
        assumptions=(
            "the references are exchangeable with the suspect under the null: same kind of architecture, "
            "training recipe, data distribution and budget as an independent model of the suspect's kind "
            "(a more accurate independent model agrees more with the teacher, so weak references make "
            "strong but innocent suspects look guilty)",
            "no reference learned from the teacher, and the probes were chosen without looking at the "
            "suspect's answers",
            "one suspect, one test: the p-value is not corrected for testing several suspects or probe sets",
        ),
        details={
            "references": r,
            "references_at_least_as_high": at_least,
            "reference_agreement_mean": float(a_refs.mean()),
            "reference_agreement_std": spread,
            "reference_agreement_max": float(a_refs.max()),
            "reference_agreements": a_refs.tolist(),
            # descriptive only: how far outside the reference spread the suspect is (not a p-value)
            "z_descriptive": (a_suspect - float(a_refs.mean())) / spread if r > 1 and spread > 0 else None,
        },
    )


def agreement_test_models(
    teacher: Callable[[np.ndarray], np.ndarray],
    suspect: Callable[[np.ndarray], np.ndarray],
    references: Sequence[Callable[[np.ndarray], np.ndarray]],
    probes: np.ndarray,
) -> ProvenanceReport:
    """`agreement_test` on models given as functions from probe inputs to labels or scores."""
    return agreement_test(teacher(probes), suspect(probes), [ref(probes) for ref in references])
