"""DAWN-style API watermark: a keyed hash of each query decides whether its answer is changed.

Szyller et al. 2021, "DAWN: Dynamic Adversarial Watermarking of Neural Networks" (ACM MM, arXiv:1906.00830).
The owner of a classifier behind an API changes the answer to a small keyed fraction of queries; a surrogate
trained on the API's answers learns those changed answers along with the rest, a model built without the
API has no way to know them. For a query x with the teacher's answer y (C classes):

    u(x)      = HMAC-SHA256(key, "select" || bytes(x)) / 2^256           uniform on [0, 1)
    marked(x) = u(x) < fraction
    served(x) = (y + 1 + HMAC-SHA256(key, "label" || bytes(x)) mod (C - 1)) mod C   if marked, else y

so a marked query gets one of the C - 1 wrong labels, chosen by the key, and the same query always gets the
same answer (asking again reveals nothing). `bytes(x)` is the canonical encoding below: the shape, then the
float32 little-endian values in C order, so the same input gives the same bytes whatever array type it came in.

Verification (`verify`): for each distinct marked query the owner logged, ask the suspect. Let n be the
number of marked queries where the suspect does not give the teacher's original answer y, and k the number
where it gives exactly the served wrong label. If the suspect is independent of the key, then given the
suspect's answers each served label is uniform over the C - 1 wrong labels, independently across distinct
queries (HMAC-SHA256 as a pseudo-random function), so

    k | n ~ Binomial(n, 1 / (C - 1))   and   p = P(Binomial(n, 1/(C-1)) >= k)

exactly. Conditioning on n removes the dependence on how often the suspect agrees with the teacher: a
model that copies the teacher's ordinary answers (or a clean model just as accurate) gains nothing, only
reproducing the changed answers counts.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from kdistill.provenance.report import ProvenanceReport

Predict = Callable[[np.ndarray], np.ndarray]  # (N, ...) inputs -> (N,) int labels

METHOD = "DAWN-style API watermark (Szyller et al. 2021)"


def canonical_bytes(x: np.ndarray) -> bytes:
    """One input as bytes: its shape (int64 LE), then its values as float32 LE in C order."""
    arr = np.ascontiguousarray(np.asarray(x, dtype="<f4"))
    return np.asarray(arr.shape, dtype="<i8").tobytes() + arr.tobytes()


class DawnWatermark:
    """The keyed rule: which inputs are marked and which wrong label each marked input is answered with."""

    # 0.4 %: inside the usual 0.5 % +- 0.2 %, and the accuracy cost (~fraction x accuracy) stays under 0.5
    # points; at 0.5 % a finite benign set loses more than 0.5 points about half the time.
    def __init__(self, key: bytes, num_classes: int, fraction: float = 0.004) -> None:
        if num_classes < 3:
            # with 2 classes the only wrong label is determined by the right one: chance rate 1, no test
            raise ValueError(f"DAWN needs at least 3 classes to key the wrong label, got {num_classes}")
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        if len(key) < 16:
            raise ValueError("use a secret key of at least 16 bytes")
        self._key = key
        self.num_classes = num_classes
        self.fraction = fraction

    def _digest(self, tag: bytes, x: np.ndarray) -> int:
        return int.from_bytes(hmac.new(self._key, tag + canonical_bytes(x), hashlib.sha256).digest(), "big")

    def marked(self, xs: np.ndarray) -> np.ndarray:
        """(N,) bool: which of the inputs xs (N, ...) are in the watermark fraction."""
        threshold = int(self.fraction * 2**256)
        return np.array([self._digest(b"select", x) < threshold for x in xs], dtype=bool)

    def wrong_label(self, x: np.ndarray, original: int) -> int:
        """The keyed wrong label for input x whose true answer is `original` (uniform over C - 1 labels)."""
        # modulo bias: (2^256 mod (C-1)) / 2^256, far below anything a test can resolve
        shift = 1 + self._digest(b"label", x) % (self.num_classes - 1)
        return (int(original) + shift) % self.num_classes

    def apply(self, xs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(served labels, marked mask) for inputs xs answered `labels` by the unmarked model."""
        mask = self.marked(xs)
        served = np.asarray(labels).astype(np.int64).copy()
        for i in np.flatnonzero(mask):
            served[i] = self.wrong_label(xs[i], served[i])
        return served, mask

    def log_of(self, xs: np.ndarray, teacher_predict: Predict) -> WatermarkLog:
        """Rebuild a client's watermark log from its queries alone (the key and the teacher redo the rest)."""
        xs = np.asarray(xs)
        original = np.asarray(teacher_predict(xs)).astype(np.int64)
        served, mask = self.apply(xs, original)
        return WatermarkLog.from_arrays(xs[mask], original[mask], served[mask], self.num_classes)


@dataclass(frozen=True)
class WatermarkLog:
    """The distinct marked queries of one client: input, the teacher's answer, and the changed answer served."""

    x: np.ndarray  # (K, ...)
    original: np.ndarray  # (K,) int64
    served: np.ndarray  # (K,) int64, != original everywhere
    num_classes: int

    @classmethod
    def from_arrays(
        cls, x: np.ndarray, original: np.ndarray, served: np.ndarray, num_classes: int
    ) -> WatermarkLog:
        """De-duplicate by canonical bytes: a query asked twice is one piece of evidence, not two."""
        seen: set[bytes] = set()
        keep = []
        for i, xi in enumerate(x):
            h = hashlib.sha256(canonical_bytes(xi)).digest()
            if h not in seen:
                seen.add(h)
                keep.append(i)
        idx = np.asarray(keep, dtype=np.int64)
        x = np.asarray(x)
        original = np.asarray(original, dtype=np.int64)
        served = np.asarray(served, dtype=np.int64)
        if np.any(original[idx] == served[idx]):
            raise ValueError("a logged served label equals the original answer: not a watermark log")
        return cls(x[idx], original[idx], served[idx], num_classes)

    def __len__(self) -> int:
        return len(self.original)


class DawnAPI:
    """A classifier behind an API that watermarks its answers and logs each client's marked queries.

    `predict` maps a batch of inputs (N, ...) to labels (N,); `api(xs, client=...)` returns the served
    labels. Benign users lose accuracy only on the marked fraction of their queries.
    """

    def __init__(self, predict: Predict, watermark: DawnWatermark) -> None:
        self.predict = predict
        self.watermark = watermark
        self._logs: dict[str, list[tuple[np.ndarray, int, int]]] = {}

    def __call__(self, xs: np.ndarray, client: str = "anonymous") -> np.ndarray:
        xs = np.asarray(xs)
        original = np.asarray(self.predict(xs)).astype(np.int64)
        served, mask = self.watermark.apply(xs, original)
        log = self._logs.setdefault(client, [])
        log.extend((xs[i], int(original[i]), int(served[i])) for i in np.flatnonzero(mask))
        return served

    def log(self, client: str = "anonymous") -> WatermarkLog:
        entries = self._logs.get(client, [])
        if not entries:
            return WatermarkLog(np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64), self.num_classes)
        x = np.stack([e[0] for e in entries])
        return WatermarkLog.from_arrays(
            x, np.array([e[1] for e in entries]), np.array([e[2] for e in entries]), self.num_classes
        )

    @property
    def num_classes(self) -> int:
        return self.watermark.num_classes


def verify(suspect_predict: Predict, log: WatermarkLog) -> ProvenanceReport:
    """Does the suspect reproduce the changed answers of a client's marked queries beyond chance?

    Statistic: k = marked queries where the suspect answers the served (wrong) label. p-value: exact
    binomial tail P(Binomial(n, 1/(C-1)) >= k), n = marked queries where the suspect's answer differs from
    the teacher's original answer (the only ones where it can match a changed label).
    """
    chance = 1.0 / (log.num_classes - 1)
    if len(log) == 0:
        answers = np.empty(0, dtype=np.int64)
    else:
        answers = np.asarray(suspect_predict(log.x)).astype(np.int64)
    matches = int(np.sum(answers == log.served))
    differs = int(np.sum(answers != log.original))
    p = float(stats.binom.sf(matches - 1, differs, chance)) if differs else 1.0
    return ProvenanceReport(
        method=METHOD,
        statistic_name="marked queries answered with the served wrong label",
        statistic=float(matches),
        p_value=min(1.0, max(0.0, p)),
        p_value_kind="exact binomial (one-sided), conditional on the suspect's disagreements",
        null_hypothesis=(
            f"the suspect is independent of the watermark key: on each marked query where it does not give "
            f"the teacher's answer, it gives the served wrong label with probability 1/(C-1) = {chance:.4g}"
        ),
        scored=differs,
        assumptions=(
            "HMAC-SHA256 under the secret key behaves as a random function: given the suspect's answers, "
            "each served label is uniform over the C-1 wrong labels and independent across distinct queries",
            "the suspect never saw answers served under this key (to any client) and the key never leaked; "
            "a model trained on another client's watermarked answers is, correctly, also flagged",
            "queries are de-duplicated by canonical bytes (shape + float32 values); an input changed in any "
            "float32 value is a different query with its own keyed coin",
            "the log's original answers are the unmarked model's answers to exactly these inputs",
        ),
        details={
            "marked_queries": len(log),
            "matches": matches,
            "disagreements_with_teacher": differs,
            "agreements_with_teacher": len(log) - differs,
            "chance_rate": chance,
            "num_classes": log.num_classes,
            "watermark_accuracy": matches / len(log) if len(log) else None,
        },
    )
