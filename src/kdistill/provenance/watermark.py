"""Green-list watermark (Kirchenbauer et al. 2023, https://arxiv.org/abs/2301.10226): mark while sampling, test by counting.

**Marking.** Before each sampled token, a secret key and the previous `context_width` token ids (the
*context*) pick a pseudo-random `gamma` fraction of the vocabulary, the *green list*; `delta` is added to
the green tokens' logits. A text sampled this way holds more green tokens than chance.

**Testing.** Recompute, for every token of a text, whether it is green for its context, and count. Under the
null hypothesis the text was written without knowledge of the key, so every *distinct* (context, token)
pair is green with probability gamma, independently (the green lists come from a keyed pseudo-random
function). The number of green pairs G among T distinct pairs is then Binomial(T, gamma): the p-value is
the exact upper tail P(X >= G), and z = (G - gamma T) / sqrt(T gamma (1 - gamma)) is reported alongside.
A repeated (context, token) pair is scored once: its second occurrence is not a new coin flip (it is
green iff the first was), and counting repeats would inflate z for any repetitive text, watermarked or not
(Kirchenbauer et al. 2023b, "On the Reliability of Watermarks", https://arxiv.org/abs/2306.04634).

**What the p-value promises.** The green bits are random over the *key*: the exact binomial p-value holds
for a text independent of a randomly drawn key. For one fixed key, a (context, token) pair that many
texts share (a common word pair) has one fixed green bit, so the verdicts of different texts under that
key are correlated: a key whose common pairs happen to be green flags more human texts than alpha, another
fewer (a user study measured 0-7.8 % at p < 0.05 over keys on 257 human texts, 12 % on man pages alone
with one key). Pooling texts into one test counts each distinct pair once, so a common pair weighs once
instead of once per text; for one text, rank its z among human reference texts scored under the same key
(`kdistill.provenance.calibration`): that p-value holds for the key in hand.

**The green list, made cheap.** Kirchenbauer et al. seed a random permutation of the vocabulary with a
hash of the context: O(V) work per token, for detection too. Here membership of one (context, token)
pair is computed on its own, in O(1)::

    seed(context) = first 8 bytes of HMAC-SHA256(key, context token ids as int64 little-endian)
    u(context, t) = SplitMix64(seed(context) + (t + 1) * 0x9E3779B97F4A7C15)     # a 64-bit integer
    green(context, t)  <=>  (u >> 11) / 2**53 < gamma

i.e. token t's green bit is the t-th output of a SplitMix64 stream seeded by the keyed hash of its context
(random access to that stream is one multiply-add and three xor-shift-multiplies). HMAC-SHA256 makes the
seeds unpredictable without the key; SplitMix64 (Steele et al. 2014; passes BigCrush) spreads one seed
over the vocabulary. Generation evaluates the mix vectorised over the whole vocabulary (numpy, one HMAC
per sequence and step); detection costs one HMAC and one mix per scored token. Over random keys every
token is green with probability gamma; for one context the green list holds about gamma V tokens (a
Binomial(V, gamma) count, not exactly floor(gamma V) as with a permutation), which changes nothing for the
test: the null distribution is per scored token.

**Where delta is added.** `GreenListLogitsProcessor` is a `transformers.LogitsProcessor`; `generate` runs
custom processors before its temperature and top-p warpers, so delta is added to the raw logits and the
bias at temperature T is delta / T, as in the reference implementation.

**Keys** are read from an environment variable (`key_from_env`), never from a file or a config, and never
written anywhere: a run records only `key_fingerprint(key)` (an HMAC of a fixed label, which identifies
the key without revealing it; a short key could be guessed from it, hence the 16-character minimum).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformers import LogitsProcessor

from kdistill.provenance.report import ProvenanceReport

SCHEME = "green-list/hmac-sha256+splitmix64/v1"
METHOD = "green-list watermark (Kirchenbauer et al. 2023)"
MIN_KEY_LENGTH = 16
DEFAULT_KEY_ENV = "KDISTILL_WATERMARK_KEY"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


class WatermarkKeyError(ValueError):
    """The watermark key is missing or too short (the message names the environment variable)."""


class NothingToScoreError(ValueError):
    """No (context, token) pair to score: no text, or no text longer than the context width.

    Raised instead of reporting z = 0, p = 1 for an empty input: that would read as "tested, nothing
    found" when no test took place.
    """


# ---------------------------------------------------------------------------------------------- keys


def key_from_env(name: str = DEFAULT_KEY_ENV) -> bytes:
    """The watermark key held by the environment variable `name` (at least 16 characters)."""
    value = os.environ.get(name)
    if not value:
        raise WatermarkKeyError(
            f"the environment variable {name} is not set; it must hold the watermark key "
            f"(at least {MIN_KEY_LENGTH} characters, e.g. from `python -c 'import secrets; "
            "print(secrets.token_hex(32))'`)"
        )
    if len(value) < MIN_KEY_LENGTH:
        raise WatermarkKeyError(
            f"the watermark key in {name} has {len(value)} characters; use at least {MIN_KEY_LENGTH}"
        )
    return value.encode()


def key_bytes(key: str | bytes) -> bytes:
    """A key as bytes (a str key is UTF-8 encoded, as `key_from_env` does)."""
    return key.encode() if isinstance(key, str) else bytes(key)


def key_fingerprint(key: str | bytes) -> str:
    """16 hex characters that identify a key (for records and reports) without revealing it."""
    return hmac.new(key_bytes(key), b"kdistill watermark key fingerprint", hashlib.sha256).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- green lists


def context_seed(key: bytes, context: Sequence[int]) -> int:
    """The 64-bit seed of a context's green list: HMAC-SHA256(key, int64 LE token ids)[:8]."""
    message = struct.pack(f"<{len(context)}q", *context)
    return int.from_bytes(hmac.digest(key, message, "sha256")[:8], "little")


def _splitmix(seeds: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """SplitMix64 output number `tokens` of the streams seeded by `seeds` (broadcast; uint64, wraps)."""
    with np.errstate(over="ignore"):
        z = seeds + (tokens + np.uint64(1)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MUL1
        z = (z ^ (z >> np.uint64(27))) * _MUL2
        return z ^ (z >> np.uint64(31))


def _threshold(gamma: float) -> np.uint64:
    return np.uint64(math.floor(gamma * 2**53))


def green_bits(seeds: np.ndarray, tokens: np.ndarray, gamma: float) -> np.ndarray:
    """Whether each token is green for the context whose seed stands beside it (bool, broadcast shapes)."""
    seeds = np.asarray(seeds, dtype=np.uint64)
    tokens = np.asarray(tokens, dtype=np.uint64)
    return (_splitmix(seeds, tokens) >> np.uint64(11)) < _threshold(gamma)


def is_green(key: str | bytes, context: Sequence[int], token: int, gamma: float) -> bool:
    """Whether `token` is green after `context` (O(1): one HMAC, one mix)."""
    seed = np.array([context_seed(key_bytes(key), context)], dtype=np.uint64)
    return bool(green_bits(seed, np.array([token]), gamma)[0])


@dataclass(frozen=True)
class GreenListWatermark:
    """A watermark's parameters and its key (the key is never shown by repr or `identity`)."""

    key: bytes = field(repr=False)
    gamma: float = 0.25  # fraction of the vocabulary that is green for each context
    delta: float = 2.0  # added to the green tokens' logits while sampling
    context_width: int = 1  # previous tokens that seed the green list (Kirchenbauer's h)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", key_bytes(self.key))
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma}")
        if self.context_width < 1:
            raise ValueError(f"context_width must be >= 1, got {self.context_width}")
        if not math.isfinite(self.delta) or self.delta < 0:
            raise ValueError(f"delta must be a finite number >= 0, got {self.delta}")

    def identity(self) -> dict[str, Any]:
        """What goes into a teacher's identity (record ids, rows): parameters and key fingerprint."""
        return {
            "scheme": SCHEME,
            "gamma": self.gamma,
            "delta": self.delta,
            "context_width": self.context_width,
            "key_fingerprint": key_fingerprint(self.key),
        }

    def green_mask(self, contexts: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
        """(B, V) bool: the green lists of B contexts over a vocabulary of `vocab_size` tokens."""
        seeds = np.array([context_seed(self.key, c) for c in contexts], dtype=np.uint64)
        return green_bits(seeds[:, None], np.arange(vocab_size, dtype=np.uint64)[None, :], self.gamma)

    def logits_processor(self) -> GreenListLogitsProcessor:
        return GreenListLogitsProcessor(self)


class GreenListLogitsProcessor(LogitsProcessor):
    """Adds `delta` to the logits of the green tokens of each row's last `context_width` tokens.

    Rows with fewer than `context_width` tokens so far are left alone (detection cannot score them
    either). Cost per step: B HMACs and a (B, V) uint64 mix on the CPU.
    """

    def __init__(self, watermark: GreenListWatermark) -> None:
        self.watermark = watermark

    def __call__(self, input_ids, scores):
        import torch

        h = self.watermark.context_width
        if input_ids.shape[1] < h:
            return scores
        contexts = input_ids[:, -h:].tolist()  # (B, h)
        green = self.watermark.green_mask(contexts, scores.shape[-1])  # (B, V)
        bias = torch.from_numpy(green).to(device=scores.device, dtype=scores.dtype)
        return scores + self.watermark.delta * bias


# ---------------------------------------------------------------------------------------------- detection


def scored_pairs(
    sequences: Iterable[Sequence[int]], context_width: int, *, deduplicate: bool = True
) -> tuple[list[tuple[tuple[int, ...], int]], int]:
    """The (context, token) pairs a detector scores, and how many positions there were before de-duplication.

    The first `context_width` tokens of each sequence have no full context and are not scored.
    """
    pairs: list[tuple[tuple[int, ...], int]] = []
    seen: set[tuple[tuple[int, ...], int]] = set()
    positions = 0
    for seq in sequences:
        seq = [int(t) for t in seq]
        for i in range(context_width, len(seq)):
            pair = (tuple(seq[i - context_width : i]), seq[i])
            positions += 1
            if deduplicate:
                if pair in seen:
                    continue
                seen.add(pair)
            pairs.append(pair)
    return pairs, positions


def count_green(key: str | bytes, pairs: Sequence[tuple[tuple[int, ...], int]], gamma: float) -> np.ndarray:
    """Green bit (bool) of each (context, token) pair; one HMAC per distinct context."""
    key = key_bytes(key)
    cache: dict[tuple[int, ...], int] = {}
    seeds = np.empty(len(pairs), dtype=np.uint64)
    tokens = np.empty(len(pairs), dtype=np.uint64)
    for i, (context, token) in enumerate(pairs):
        seed = cache.get(context)
        if seed is None:
            seed = cache[context] = context_seed(key, context)
        seeds[i] = seed
        tokens[i] = token
    return green_bits(seeds, tokens, gamma)


def binomial_z_and_p(green: int, scored: int, gamma: float) -> tuple[float, float]:
    """z = (G - gamma T) / sqrt(T gamma (1 - gamma)) and the exact P(Binomial(T, gamma) >= G).

    T = 0 raises `NothingToScoreError` (radioactivity's binomial test gets it too): no items, no test.
    """
    from scipy.special import bdtrc  # bdtrc(k, n, p) = P(Binomial(n, p) > k), exact (incomplete beta)

    if scored == 0:
        raise NothingToScoreError("nothing to score: a binomial test of 0 items is no test")
    z = (green - gamma * scored) / math.sqrt(scored * gamma * (1.0 - gamma))
    p = 1.0 if green <= 0 else float(bdtrc(green - 1, scored, gamma))
    return z, min(1.0, max(0.0, p))


def _as_sequences(token_ids: Sequence[int] | Sequence[Sequence[int]]) -> list[Sequence[int]]:
    if len(token_ids) and not isinstance(token_ids[0], int | np.integer):
        return list(token_ids)  # type: ignore[arg-type]
    return [token_ids]  # type: ignore[list-item]


def _nothing_to_score(sequences: Sequence[Sequence[int]], context_width: int) -> str:
    texts = [s for s in sequences if len(s)]
    if not texts:
        return "no (context, token) pair to score: no text (or only empty ones)"
    longest = max(len(s) for s in texts)
    return (
        f"no (context, token) pair to score: {len(texts)} text(s), the longest {longest} token(s); "
        f"a pair needs context_width + 1 = {context_width + 1} tokens"
    )


def detect_watermark(
    token_ids: Sequence[int] | Sequence[Sequence[int]],
    key: str | bytes,
    *,
    gamma: float = 0.25,
    context_width: int = 1,
    vocab_size: int | None = None,
    deduplicate: bool = True,
) -> ProvenanceReport:
    """Test whether token ids (one sequence, or several pooled) carry the green-list watermark of `key`.

    Statistic: z of the green count among distinct (context, token) pairs; p-value: exact binomial upper
    tail. `vocab_size`, when given, is checked (a token id out of range means the wrong tokenizer).
    `deduplicate=False` scores every position; its p-value is not valid for repetitive text and is
    offered only to show the difference. No pair to score (no text, or none longer than `context_width`)
    raises `NothingToScoreError`: there is no test to report.
    """
    sequences = _as_sequences(token_ids)
    if vocab_size is not None:
        for seq in sequences:
            bad = [t for t in seq if not 0 <= int(t) < vocab_size]
            if bad:
                raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {vocab_size})")
    pairs, positions = scored_pairs(sequences, context_width, deduplicate=deduplicate)
    if not pairs:
        raise NothingToScoreError(_nothing_to_score(sequences, context_width))
    green = int(count_green(key, pairs, gamma).sum())
    z, p = binomial_z_and_p(green, len(pairs), gamma)
    assumptions = [
        "the text was written without knowledge of the key: then each distinct (context, token) pair is "
        "green with probability gamma, independently (keyed pseudo-random green lists)",
        "token ids come from the tokenizer of the watermarking model (re-tokenised text that differs from "
        "the sampled tokens weakens the signal, it does not create one)",
        "statistical evidence, not proof: paraphrasing or heavy editing removes the watermark; a small p "
        "says the text is unlikely to be unwatermarked, not who wrote it",
    ]
    if not deduplicate:
        assumptions.insert(
            0, "NOT VALID: repeated (context, token) pairs counted every time (comparison only)"
        )
    return ProvenanceReport(
        method=METHOD,
        statistic_name="z",
        statistic=z,
        p_value=p,
        p_value_kind="exact binomial upper tail",
        null_hypothesis=f"green count ~ Binomial(scored, gamma={gamma}) (text independent of the key)",
        scored=len(pairs),
        assumptions=tuple(assumptions),
        details={
            "green": green,
            "green_fraction": green / len(pairs),
            "gamma": gamma,
            "context_width": context_width,
            "positions": positions,
            "repeats_skipped": positions - len(pairs),
            "sequences": len(sequences),
            "deduplicated": deduplicate,
            "scheme": SCHEME,
            "key_fingerprint": key_fingerprint(key),
        },
    )


__all__ = [
    "DEFAULT_KEY_ENV",
    "GreenListLogitsProcessor",
    "GreenListWatermark",
    "NothingToScoreError",
    "WatermarkKeyError",
    "binomial_z_and_p",
    "context_seed",
    "count_green",
    "detect_watermark",
    "green_bits",
    "is_green",
    "key_bytes",
    "key_fingerprint",
    "key_from_env",
    "scored_pairs",
]
