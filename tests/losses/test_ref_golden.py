"""The golden loss values themselves against independent references on the golden inputs.

tests/losses/test_golden.py only checks that the losses still give the values tests/golden/record.py wrote
(change detectors: a value recorded from a wrong loss would pass there). Here every value in
tests/golden/losses.json is recomputed from its paper's formula, densely in numpy float64 and without
kdistill, so a golden file recorded from a wrong loss fails. (tests/losses/test_response.py,
test_feature.py and test_relation.py check the same losses against loop references on other inputs.)
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

GOLDEN_DIR = Path(__file__).parent.parent / "golden"


def _golden_inputs() -> dict[str, np.ndarray]:
    spec = importlib.util.spec_from_file_location("golden_record", GOLDEN_DIR / "record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {k: v.numpy() for k, v in module.golden_inputs().items()}


def _log_softmax(z: np.ndarray) -> np.ndarray:
    # (N, C) -> (N, C), stable: log sum exp with the row maximum taken out
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row of probabilities: (N, C) -> (N,); 0 log 0 = 0."""
    safe = np.where(p > 0, p, 1.0)
    return np.where(p > 0, p * (np.log(safe) - np.log(np.where(p > 0, q, 1.0))), 0.0).sum(axis=-1)


def _huber(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 1.0, 0.5 * x * x, np.abs(x) - 0.5)


def cross_entropy_ref(s, target):
    """mean over labeled rows (target != -1) of -log softmax(s)[target]."""
    labeled = target != -1
    return -_log_softmax(s[labeled])[np.arange(labeled.sum()), target[labeled]].mean()


def hinton_ref(s, t, temperature):
    """T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T))."""
    p_t = np.exp(_log_softmax(t / temperature))
    p_s = np.exp(_log_softmax(s / temperature))
    return temperature**2 * _kl_rows(p_t, p_s).mean()


def dkd_ref(s, t, target, alpha=1.0, beta=8.0, temperature=4.0):
    """T^2 * (alpha * TCKD + beta * NCKD): KL of the (target, rest) split and of the renormalised rest."""
    rows = np.arange(len(target))
    p_s, p_t = np.exp(_log_softmax(s / temperature)), np.exp(_log_softmax(t / temperature))
    b_s = np.stack([p_s[rows, target], 1 - p_s[rows, target]], axis=1)
    b_t = np.stack([p_t[rows, target], 1 - p_t[rows, target]], axis=1)
    rest = np.ones_like(p_s, dtype=bool)
    rest[rows, target] = False
    hat_s = p_s[rest].reshape(len(rows), -1) / b_s[:, 1:]
    hat_t = p_t[rest].reshape(len(rows), -1) / b_t[:, 1:]
    return temperature**2 * (alpha * _kl_rows(b_t, b_s).mean() + beta * _kl_rows(hat_t, hat_s).mean())


def fitnet_ref(s, t):
    return ((s - t) ** 2).mean()


def attention_transfer_ref(s, t):
    """mean over samples and positions of (q_s - q_t)^2, q = unit-norm channel mean of A^2 (same H, W)."""

    def q(a):
        m = (a**2).mean(axis=1).reshape(len(a), -1)
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    return ((q(s) - q(t)) ** 2).mean()


def rkd_distance_ref(s, t):
    """mean over all B^2 pairs of huber(d_S / mean d_S - d_T / mean d_T), means over pairs i != j."""

    def normalised(e):
        d = np.linalg.norm(e[:, None, :] - e[None, :, :], axis=-1)
        b = len(e)
        return d / (d.sum() / (b * (b - 1)))

    return _huber(normalised(s) - normalised(t)).mean()


def rkd_angle_ref(s, t):
    """mean over all B^3 triplets of huber(cos_S - cos_T), cos of the angle at i between e_j and e_k; 0
    where j == i or k == i."""

    def cosines(e):
        diff = e[None, :, :] - e[:, None, :]  # [i, j] = e_j - e_i
        norm = np.linalg.norm(diff, axis=-1, keepdims=True)
        unit = np.divide(diff, norm, out=np.zeros_like(diff), where=norm > 0)
        return np.einsum("ijd,ikd->ijk", unit, unit)

    return _huber(cosines(s) - cosines(t)).mean()


def similarity_preserving_ref(s, t):
    """||G_S - G_T||_F^2 / B^2, G = F F^T of the flattened features with unit-norm rows."""

    def gram(f):
        f = f.reshape(len(f), -1)
        g = f @ f.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    return ((gram(s) - gram(t)) ** 2).sum() / len(s) ** 2


def _references(x: dict[str, np.ndarray]) -> dict[str, float]:
    s, t = x["s_logits"], x["t_logits"]
    return {
        "cross_entropy": cross_entropy_ref(s, x["partial_target"]),
        "hinton_kd": hinton_ref(s, t, 4.0),
        "hinton_kd@T=1": hinton_ref(s, t, 1.0),
        "dkd": dkd_ref(s, t, x["target"]),
        "fitnet_hint": fitnet_ref(x["s_map"], x["t_map"][:, :3]),
        "attention_transfer": attention_transfer_ref(x["s_map"], x["t_map"]),
        "rkd_distance": rkd_distance_ref(x["s_emb"], x["t_emb"]),
        "rkd_angle": rkd_angle_ref(x["s_emb"], x["t_emb"]),
        "similarity_preserving": similarity_preserving_ref(x["s_map"], x["t_map"]),
    }


GOLDEN = json.loads((GOLDEN_DIR / "losses.json").read_text())
REFERENCES = _references(_golden_inputs())


def test_every_golden_value_has_a_reference():
    assert set(REFERENCES) == set(GOLDEN)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_value_equals_its_reference(name):
    assert GOLDEN[name] == pytest.approx(float(REFERENCES[name]), rel=1e-10, abs=1e-12)
