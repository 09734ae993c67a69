"""Radioactivity (Sander et al. 2024, https://arxiv.org/abs/2402.14904): did a suspect model learn from watermarked text?

A model fine-tuned on text sampled with a green-list watermark inherits a slight preference for the green
tokens of the key. With the suspect's weights ("open model"), feed it texts teacher-forced and look at what
it predicts next; under the null hypothesis (the suspect never learned from text watermarked with this
key) its predictions are independent of the key, so each distinct (watermark window, predicted token)
tuple is green with probability gamma.

Two statistics, each a `ProvenanceReport`:

1. **Binomial test on greedy predictions** (as Sander et al.): at every scored position, the suspect's
   argmax next token and the `context_width` tokens before it (the watermark window); green count among
   *distinct* tuples vs Binomial(T, gamma), exact upper tail, z alongside.
2. **Green probability mass vs wrong keys**: the mean, over the same positions, of the probability the
   suspect puts on the key's green list (over its `top_k` most likely tokens), compared with the same
   statistic for `n_wrong_keys` random keys; p = (1 + #{wrong keys scoring >= the true key}) / (1 + n).
   Under the null the true key is just one more random key (exchangeable with them), so the rank p-value
   holds whatever the dependence between positions; its smallest value is 1 / (1 + n).

**Why de-duplication matters.** A model's prediction after a given window repeats whenever the window
repeats (for an n-gram model it is a function of the window; for a transformer nearly so). Counting every
position scores the same coin flip many times: the count's variance grows by the average repetition,
the binomial p-value is far too small, and clean models look "radioactive" (the tests show a false-positive
rate several times the nominal level without de-duplication). Each distinct tuple is therefore scored
once, which restores independent Bernoulli(gamma) draws.

**Why only fresh windows** (`fresh_windows_only`, on by default). Texts that carry the watermark (the
most sensitive choice of texts, as in the paper) hold green tokens chosen after their windows; a suspect
that copies from its context (an induction head: "after this window came that token last time") would
predict those green tokens without ever having trained on them. A position is therefore scored only if its
window has not occurred earlier in the same text, so the suspect has not seen the green choice for that
window. With texts that do not depend on the key the p-values are exact; with watermarked texts this
removes the direct dependence, and what is left (a prediction in one text depending on green choices at
*other* windows) is second order; the tests measure the false-positive rate in that setting.

Assumptions (also in every report): the suspect uses the watermarking model's tokenizer; the suspect was
trained on *sampled* watermarked text (logits distillation or a paraphrase does not carry the watermark);
results are statistical evidence, not proof.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdistill.provenance.report import ProvenanceReport
from kdistill.provenance.watermark import (
    binomial_z_and_p,
    context_seed,
    green_bits,
    key_bytes,
    key_fingerprint,
)

METHOD = "radioactivity, open model (Sander et al. 2024)"

ASSUMPTIONS = (
    "under the null the suspect never trained on text watermarked with this key, so its predictions are "
    "independent of the key's green lists",
    "the suspect uses the tokenizer of the watermarking model (token ids mean the same)",
    "detectable only if the suspect trained on sampled watermarked tokens: paraphrased text or logits "
    "distillation does not carry the watermark",
    "statistical evidence, not proof",
)


@dataclass
class SuspectPredictions:
    """What a suspect predicted at the scored positions of some texts (inputs of the two tests).

    windows[i] is the watermark window (the `context_width` text tokens before position i), predictions[i]
    the suspect's argmax there, top_ids / top_probs its `top_k` most likely tokens and their probabilities
    (float32 softmax of the logits). `positions` counts every position with a full window; `skipped_repeated`
    those left out because their window occurred earlier in the same text.
    """

    windows: list[tuple[int, ...]]
    predictions: list[int]
    top_ids: np.ndarray  # (P, k) int64
    top_probs: np.ndarray  # (P, k) float32
    context_width: int
    positions: int
    skipped_repeated: int

    def distinct(self) -> list[int]:
        """Indices of the first occurrence of each distinct (window, prediction) tuple."""
        seen: set[tuple[tuple[int, ...], int]] = set()
        keep = []
        for i, pair in enumerate(zip(self.windows, self.predictions, strict=True)):
            if pair not in seen:
                seen.add(pair)
                keep.append(i)
        return keep


def suspect_predictions(
    model: Any,
    texts: Sequence[Sequence[int]],
    *,
    context_width: int = 1,
    top_k: int = 64,
    fresh_windows_only: bool = True,
    batch_size: int = 8,
    max_length: int | None = None,
) -> SuspectPredictions:
    """Run `model` teacher-forced on token-id texts and collect its next-token predictions.

    `model(input_ids=(B, T), attention_mask=(B, T))` must return an object with `.logits` (B, T, V), like a
    Hugging Face causal LM. Position i (1 <= i <= len) is predicted from the logits at i - 1; it is scored
    when i >= context_width, its window being tokens i - context_width .. i - 1.
    """
    import torch

    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = param.device if param is not None else torch.device("cpu")
    windows: list[tuple[int, ...]] = []
    top_ids: list[np.ndarray] = []
    top_probs: list[np.ndarray] = []
    positions = skipped = 0
    texts = [[int(t) for t in x][:max_length] for x in texts]
    h = context_width
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        width = max((len(x) for x in batch), default=0)
        if width == 0:
            continue
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, x in enumerate(batch):  # right padding: position t of the text is column t
            ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[row, : len(x)] = 1
        with torch.inference_mode():
            z = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()  # (B, T, V)
            k = min(top_k, z.shape[-1])
            # the top-k of the logits are those of the softmax; only k probabilities are formed, not (B, T, V)
            z_top, i_top = z.topk(k, dim=-1)  # (B, T, k), sorted: [..., 0] is the argmax
            p_top = (z_top - torch.logsumexp(z, dim=-1, keepdim=True)).exp_()
            del z
        p_top, i_top = p_top.cpu().numpy(), i_top.cpu().numpy()
        rows, cols = [], []  # scored positions i of each text: its logits are at column i - 1
        for row, x in enumerate(batch):
            seen: set[tuple[int, ...]] = set()
            for i in range(h, len(x) + 1):
                window = tuple(x[i - h : i])
                positions += 1
                if fresh_windows_only:
                    if window in seen:
                        skipped += 1
                        continue
                    seen.add(window)
                windows.append(window)
                rows.append(row)
                cols.append(i - 1)
        top_ids.append(i_top[rows, cols])  # (P_batch, k)
        top_probs.append(p_top[rows, cols])
    k = top_ids[0].shape[1] if top_ids else 0
    ids = np.concatenate(top_ids).astype(np.int64) if top_ids else np.zeros((0, k), dtype=np.int64)
    probs = np.concatenate(top_probs).astype(np.float32) if top_probs else np.zeros((0, k), np.float32)
    return SuspectPredictions(
        windows=windows,
        predictions=ids[:, 0].tolist() if len(ids) else [],
        top_ids=ids,
        top_probs=probs,
        context_width=h,
        positions=positions,
        skipped_repeated=skipped,
    )


def _seeds(key: bytes, windows: Sequence[tuple[int, ...]]) -> np.ndarray:
    cache: dict[tuple[int, ...], int] = {}
    out = np.empty(len(windows), dtype=np.uint64)
    for i, w in enumerate(windows):
        seed = cache.get(w)
        if seed is None:
            seed = cache[w] = context_seed(key, w)
        out[i] = seed
    return out


def binomial_radioactivity_test(
    preds: SuspectPredictions, key: str | bytes, *, gamma: float = 0.25, deduplicate: bool = True
) -> ProvenanceReport:
    """Green count of the suspect's greedy predictions among distinct (window, prediction) tuples.

    `deduplicate=False` counts every scored position; its p-value is NOT valid (see the module docstring)
    and exists to show why.
    """
    idx = preds.distinct() if deduplicate else list(range(len(preds.predictions)))
    windows = [preds.windows[i] for i in idx]
    tokens = np.array([preds.predictions[i] for i in idx], dtype=np.uint64)
    green = int(green_bits(_seeds(key_bytes(key), windows), tokens, gamma).sum()) if idx else 0
    z, p = binomial_z_and_p(green, len(idx), gamma)
    assumptions = (
        "each distinct (window, predicted token) tuple is scored once; then under the null the tuples are "
        "green independently with probability gamma",
        *ASSUMPTIONS,
    )
    if not deduplicate:
        assumptions = ("NOT VALID: repeated tuples counted every time (comparison only)", *assumptions)
    return ProvenanceReport(
        method=f"{METHOD}: greedy predictions, binomial test",
        statistic_name="z",
        statistic=z,
        p_value=p,
        p_value_kind="exact binomial upper tail",
        null_hypothesis=f"green tuples ~ Binomial(scored, gamma={gamma}) (suspect independent of the key)",
        scored=len(idx),
        assumptions=assumptions,
        details={
            "green": green,
            "green_fraction": green / len(idx) if idx else 0.0,
            "gamma": gamma,
            "context_width": preds.context_width,
            "positions": preds.positions,
            "skipped_repeated_windows": preds.skipped_repeated,
            "deduplicated": deduplicate,
            "key_fingerprint": key_fingerprint(key),
        },
    )


def green_mass(preds: SuspectPredictions, key: bytes, gamma: float, rows: Sequence[int]) -> float:
    """Mean over `rows` of the suspect's probability on the key's green tokens (among its top k)."""
    seeds = _seeds(key, [preds.windows[i] for i in rows])  # (P,)
    ids = preds.top_ids[list(rows)].astype(np.uint64)  # (P, k)
    green = green_bits(seeds[:, None], ids, gamma)  # (P, k)
    return float((preds.top_probs[list(rows)] * green).sum(axis=1).mean())


def green_mass_test(
    preds: SuspectPredictions,
    key: str | bytes,
    *,
    gamma: float = 0.25,
    n_wrong_keys: int = 100,
    seed: int = 0,
) -> ProvenanceReport:
    """The suspect's green probability mass with the true key, ranked among `n_wrong_keys` random keys.

    Positions: the first occurrence of each distinct (window, prediction) tuple, as in the binomial test.
    Cost: (n_wrong_keys + 1) x positions HMACs and x top_k mixes.
    """
    rows = preds.distinct()
    if not rows:
        return _empty_mass_report(gamma, n_wrong_keys, key)
    true = green_mass(preds, key_bytes(key), gamma, rows)
    rng = np.random.default_rng(seed)
    wrong = np.array([green_mass(preds, rng.bytes(32), gamma, rows) for _ in range(n_wrong_keys)])
    at_least = int((wrong >= true).sum())
    p = (1 + at_least) / (1 + n_wrong_keys)
    spread = float(wrong.std(ddof=1)) if n_wrong_keys > 1 else 0.0
    return ProvenanceReport(
        method=f"{METHOD}: green probability mass vs random keys",
        statistic_name="green mass",
        statistic=true,
        p_value=p,
        p_value_kind=f"rank among {n_wrong_keys} random keys (+1 corrected)",
        null_hypothesis="the true key is exchangeable with random keys (suspect independent of the key)",
        scored=len(rows),
        assumptions=(
            "random keys are drawn independently of the suspect; the smallest attainable p is "
            f"1/{n_wrong_keys + 1}",
            f"mass over the suspect's {preds.top_ids.shape[1]} most likely tokens per position",
            *ASSUMPTIONS,
        ),
        details={
            "gamma": gamma,
            "wrong_keys": n_wrong_keys,
            "wrong_keys_at_least_as_high": at_least,
            "wrong_key_mean": float(wrong.mean()),
            "wrong_key_std": spread,
            "standardised": (true - float(wrong.mean())) / spread if spread > 0 else None,
            "top_k": int(preds.top_ids.shape[1]),
            "key_fingerprint": key_fingerprint(key),
        },
    )


def _empty_mass_report(gamma: float, n_wrong_keys: int, key: str | bytes) -> ProvenanceReport:
    return ProvenanceReport(
        method=f"{METHOD}: green probability mass vs random keys",
        statistic_name="green mass",
        statistic=0.0,
        p_value=1.0,
        p_value_kind=f"rank among {n_wrong_keys} random keys (+1 corrected)",
        null_hypothesis="the true key is exchangeable with random keys (suspect independent of the key)",
        scored=0,
        assumptions=ASSUMPTIONS,
        details={"gamma": gamma, "wrong_keys": n_wrong_keys, "key_fingerprint": key_fingerprint(key)},
    )


@dataclass(frozen=True)
class RadioactivityReports:
    binomial: ProvenanceReport
    green_mass: ProvenanceReport | None  # None when n_wrong_keys == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "binomial": self.binomial.to_dict(),
            "green_mass": None if self.green_mass is None else self.green_mass.to_dict(),
        }


def radioactivity_test(
    model: Any,
    texts: Sequence[Sequence[int]],
    key: str | bytes,
    *,
    gamma: float = 0.25,
    context_width: int = 1,
    n_wrong_keys: int = 100,
    top_k: int = 64,
    fresh_windows_only: bool = True,
    batch_size: int = 8,
    max_length: int | None = None,
    seed: int = 0,
) -> RadioactivityReports:
    """Both tests on a suspect causal LM and token-id texts (ideally text watermarked with `key`)."""
    preds = suspect_predictions(
        model,
        texts,
        context_width=context_width,
        top_k=top_k,
        fresh_windows_only=fresh_windows_only,
        batch_size=batch_size,
        max_length=max_length,
    )
    binomial = binomial_radioactivity_test(preds, key, gamma=gamma)
    mass = (
        green_mass_test(preds, key, gamma=gamma, n_wrong_keys=n_wrong_keys, seed=seed)
        if n_wrong_keys > 0
        else None
    )
    return RadioactivityReports(binomial=binomial, green_mass=mass)


__all__ = [
    "RadioactivityReports",
    "SuspectPredictions",
    "binomial_radioactivity_test",
    "green_mass",
    "green_mass_test",
    "radioactivity_test",
    "suspect_predictions",
]
