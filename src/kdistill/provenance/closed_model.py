"""A suspect reachable only through an API (Sander et al. 2024, https://arxiv.org/abs/2402.14904, closed model).

Was a model we can only prompt trained on text sampled with our watermark? Ask it many prompts, pool its
answers, and run the watermark detector on them: a model fine-tuned on watermarked text samples the key's
green tokens a little more often than chance, and pooled over enough answers that shows::

    prompts ──> query_suspect (any OpenAI-compatible endpoint; kdistill.generate: resumable, exactly once)
                    │  answers (a generation output directory)
    tokenizer of the watermarking model ──> token ids ──> closed_model_test ──> z, p (and tokens_needed)

**Statistic.** All answers pooled; every *distinct* (context, token) pair is scored once (a pair the
suspect says in many answers is one coin flip, not many: counting it every time would flag any model
with stock phrases); G of the T scored pairs are green. Null hypothesis: the suspect's answers were
written without knowledge of the key, so each distinct pair is green with probability gamma and
G ~ Binomial(T, gamma): p = P(X >= G) exactly, z = (G - gamma T) / sqrt(T gamma (1 - gamma)).

**Pairs of the prompts are not scored.** A suspect may repeat its prompt; if the prompts were sampled
from the watermarked teacher (the natural choice, as in the paper), their pairs are green because of the
key, and repeating them is not evidence of training. Pairs that occur in any prompt are left out (of the
reference pools below too, so that answers and pools are scored alike).

**The analytic p-value holds over random keys.** For the one key in hand, a pair common in the suspect's
language has one fixed green bit, so the pooled z of texts written without the key is shifted by how
this key treats the common pairs (see `watermark` and `calibration`). Pooling already weighs each common
pair once; to calibrate for the key in hand give a `ReferencePool`: texts like the answers, written
without the key (another model's answers to the same prompts, human answers), scored under the same key.

**Why a pooled null, not the per-text one.** `calibration.reference_null` ranks one text's z among those
of single reference texts; the pooled answers are not one text of a reference text's length: their z is
a sum over T pairs, and under one key its spread and its shift both depend on T. Combining per-answer
calibrated p-values instead (Fisher's method, a count of answers below alpha) needs the answers to be
independent, and under one key they are not (they share common pairs and the same references); the
combinations valid under any dependence (Bonferroni, twice the mean p) throw away the pooling that makes
weak, spread-out evidence visible. So the references are cut into disjoint pools of exactly T distinct
pairs each (whole texts, the last one cut to a prefix), each pool's green count is computed like the
answers', and the answers' green count is ranked among them::

    p_empirical = (1 + #{pools with green >= G}) / (n_pools + 1)

Pools are disjoint, so their counts are independent given the key; if the answers are exchangeable with
a pool of reference texts (same kind of text, written without the key), P(p_empirical <= a) <= a for
this key. The price is resolution: p_empirical >= 1 / (n_pools + 1), and n_pools is about the
references' distinct pairs divided by T, so the more answers, the more reference text is needed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdistill.provenance.watermark import (
    METHOD,
    SCHEME,
    NothingToScoreError,
    binomial_z_and_p,
    count_green,
    key_fingerprint,
)

CLOSED_MODEL_METHOD = f"closed-model watermark test (Sander et al. 2024; {METHOD})"
DEFAULT_ALPHA = 1e-3

Pair = tuple[tuple[int, ...], int]

ASSUMPTIONS = (
    "the suspect's answers were written without knowledge of the key: then each distinct (context, token) "
    "pair is green with probability gamma, independently over random keys (keyed pseudo-random green lists)",
    "token ids come from the tokenizer of the watermarking model (the answers are re-tokenised text; "
    "a tokenisation that differs from the one a student learned weakens the signal, it cannot create one)",
    "pairs that occur in the prompts are not scored, so a suspect that repeats watermarked prompts is not "
    "credited with their green pairs",
    "statistical evidence, not proof: a small p says the answers favour the key's green lists more than "
    "chance explains, not that the suspect was trained on our text; a large p does not clear it",
)
CALIBRATION_ASSUMPTIONS = (
    "the reference texts are like the answers (language, genre, length) and were written without the key",
    "references and answers are scored under the same key, gamma, context width and tokenizer",
    "then the answers' green count is exchangeable with a reference pool's of as many distinct pairs and "
    "P(empirical p <= a) <= a for this key; the empirical p is never below 1/(n_pools + 1)",
)


# ---------------------------------------------------------------------------------------------- querying


def suspect_generation_config(
    base_url: str,
    model: str,
    prompts_file: str | Path,
    out_dir: str | Path,
    *,
    api_key_env: str | None = None,
    samples: int = 1,
    max_tokens: int = 256,
    temperature: float = 0.7,
    seed: int = 0,
    concurrency: int = 4,
) -> Any:
    """The `GenerationConfig` that `query_suspect` runs: an openai teacher at `base_url`.

    Answers cut off by `max_tokens` are kept (`allow_length`): every token the suspect sampled is
    evidence, finished or not. Raises pydantic's `ValidationError` for out-of-range values.
    """
    from kdistill.generate.config import GenerationConfig

    return GenerationConfig.model_validate(
        {
            "prompts": Path(prompts_file),
            "out": Path(out_dir),
            # api_key_env None: no key is sent. Never OPENAI_API_KEY by default: the suspect's server is
            # someone else's, and an OpenAI key must not travel there unless asked for.
            "teacher": {"kind": "openai", "base_url": base_url, "model": model, "api_key_env": api_key_env},
            "sampling": {
                "samples": samples,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "seed": seed,
            },
            "concurrency": concurrency,
            "allow_length": True,
        }
    )


def query_suspect(
    base_url: str,
    model: str,
    prompts_file: str | Path,
    out_dir: str | Path,
    *,
    api_key_env: str | None = None,
    samples: int = 1,
    max_tokens: int = 256,
    temperature: float = 0.7,
    seed: int = 0,
    concurrency: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Ask the suspect (any OpenAI-compatible endpoint) every prompt `samples` times; return the output dir.

    A `kdistill.generate` run: rerunning resumes (records with a row are not asked again), each answer is
    stored exactly once, the API key is read from the environment variable `api_key_env` (None: no key
    is sent) and scrubbed from everything written. The server is checked first (`GET /models`), so an
    unreachable one fails in seconds. Records that failed or were rejected are left for the caller to
    see in the directory (errors.jsonl, rejects.jsonl). `progress(done, total)` is called as answers
    arrive. Raises `GenerationError` (server, key, output dir), `PromptFileError`, `ValidationError`.
    """
    from kdistill.generate.run import check_servers, generate

    config = suspect_generation_config(
        base_url,
        model,
        prompts_file,
        out_dir,
        api_key_env=api_key_env,
        samples=samples,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        concurrency=concurrency,
    )
    check_servers(config)
    callback = None if progress is None else (lambda stats: progress(stats.done, stats.total))
    generate(config, progress=callback)
    return Path(out_dir)


# ---------------------------------------------------------------------------------------------- pairs


def _sequences(token_ids: Iterable[Sequence[int]], vocab_size: int | None, what: str) -> list[list[int]]:
    sequences = [[int(t) for t in seq] for seq in token_ids]
    if vocab_size is not None:
        for seq in sequences:
            bad = [t for t in seq if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"{what}: token id {bad[0]} is outside the vocabulary (size {vocab_size})")
    return sequences


def _windows(seq: Sequence[int], context_width: int) -> Iterable[tuple[int, Pair]]:
    """(position, (context, token)) for every position with a full context."""
    for i in range(context_width, len(seq)):
        yield i, (tuple(seq[i - context_width : i]), seq[i])


def prompt_pairs(prompts_token_ids: Iterable[Sequence[int]] | None, context_width: int) -> set[Pair]:
    """Every (context, token) pair of the prompts: pairs the suspect could have copied, never scored."""
    return {
        pair for seq in prompts_token_ids or () for _, pair in _windows([int(t) for t in seq], context_width)
    }


@dataclass
class _Scan:
    """The answers read in order: what is scored, and what is not and why."""

    pairs: list[Pair]  # distinct pairs outside the prompts, in order of first occurrence
    read_at: list[int]  # for each: suspect tokens read when it was first seen
    repeats: int = 0  # positions whose pair was scored already
    in_prompts: int = 0  # positions whose pair occurs in a prompt
    answers_scored: int = 0  # answers with at least one pair outside the prompts


def _scan(answers: Sequence[Sequence[int]], context_width: int, excluded: set[Pair]) -> _Scan:
    scan = _Scan(pairs=[], read_at=[])
    seen: set[Pair] = set()
    tokens = 0
    for seq in answers:
        outside = False
        for i, pair in _windows(seq, context_width):
            if pair in excluded:
                scan.in_prompts += 1
                continue
            outside = True
            if pair in seen:
                scan.repeats += 1
            else:
                seen.add(pair)
                scan.pairs.append(pair)
                scan.read_at.append(tokens + i + 1)  # the answers before, then this one up to token i
        scan.answers_scored += outside
        tokens += len(seq)
    return scan


def _nothing_to_score(answers: Sequence[Sequence[int]], context_width: int, in_prompts: int) -> str:
    texts = [s for s in answers if s]
    if not texts:
        return "no (context, token) pair to score: the suspect gave no answer (or only empty ones)"
    if in_prompts:
        return (
            f"no (context, token) pair to score: every pair of the {len(texts)} answer(s) also occurs in "
            "the prompts, and pairs the suspect could have copied are not scored"
        )
    return (
        f"no (context, token) pair to score: {len(texts)} answer(s), the longest {max(map(len, texts))} "
        f"token(s); a pair needs context_width + 1 = {context_width + 1} tokens"
    )


# ---------------------------------------------------------------------------------------------- the null


@dataclass(frozen=True)
class ReferencePool:
    """Reference texts scored under one key, pair by pair, to be cut into pools as large as the answers'.

    Each text is kept as its distinct pairs in order of first occurrence (an int id each) and each id's
    green bit: a pool of T distinct pairs is then a walk over whole texts, cut when T is reached.
    """

    texts: tuple[tuple[int, ...], ...]  # per reference text (shuffled once, by `seed`): its pair ids
    green: tuple[bool, ...]  # green bit of each pair id under the key
    skipped: int  # reference texts with no pair to score (shorter than context_width + 1)
    gamma: float
    context_width: int
    key_fingerprint: str  # the key the references were scored under (never the key)
    pair_ids: dict[Pair, int] = field(default_factory=dict, compare=False, repr=False)  # pair -> its id
    _counts: dict[tuple, list[int]] = field(default_factory=dict, compare=False, repr=False)  # memo

    @property
    def distinct_pairs(self) -> int:
        return len(self.green)

    def pool_green_counts(self, scored: int, exclude: Iterable[Pair] = ()) -> list[int]:
        """Green counts of the disjoint pools of exactly `scored` distinct pairs the references make.

        Texts are taken in order; a pool ends inside the text that completes it, whose rest is not used
        (a pool never starts mid-text, so neighbouring pools share no text). Leftover text too short to
        fill a pool is not used either. Pairs in `exclude` (the prompts') are skipped, as in the answers.
        """
        if scored < 1:
            raise ValueError(f"scored must be >= 1, got {scored}")
        skip = frozenset(self.pair_ids[p] for p in exclude if p in self.pair_ids)
        if (scored, skip) not in self._counts:  # suspects of similar size ask for the same pools again
            self._counts[scored, skip] = self._pool_green_counts(scored, skip)
        return list(self._counts[scored, skip])

    def _pool_green_counts(self, scored: int, skip: frozenset[int]) -> list[int]:
        counts = []
        members: set[int] = set(skip)  # an excluded pair counts as already in every pool, never scored
        green = 0
        for text in self.texts:
            for pid in text:
                if pid in members:
                    continue
                members.add(pid)
                green += self.green[pid]
                if len(members) - len(skip) == scored:
                    counts.append(green)
                    members, green = set(skip), 0
                    break
        return counts


def reference_pool(
    reference_ids: Iterable[Sequence[int]],
    key: str | bytes,
    *,
    gamma: float = 0.25,
    context_width: int = 1,
    seed: int = 0,
) -> ReferencePool:
    """Score reference texts (token ids, written without the key) under `key` for `closed_model_test`.

    The texts are shuffled once (`seed`): pools of consecutive texts then mix whatever order the
    references came in (by topic, by source). Raises `NothingToScoreError` when no text has a pair.
    """
    texts = [[int(t) for t in seq] for seq in reference_ids]
    random.Random(seed).shuffle(texts)
    ids: dict[Pair, int] = {}
    pooled: list[tuple[int, ...]] = []
    skipped = 0
    for seq in texts:
        distinct = dict.fromkeys(ids.setdefault(pair, len(ids)) for _, pair in _windows(seq, context_width))
        if distinct:
            pooled.append(tuple(distinct))
        else:
            skipped += 1
    if not pooled:
        raise NothingToScoreError(
            f"no reference text to calibrate with: all {skipped} are shorter than context_width + 1 = "
            f"{context_width + 1} tokens"
        )
    green = count_green(key, list(ids), gamma)  # dicts keep insertion order: green[i] is pair id i's
    return ReferencePool(
        texts=tuple(pooled),
        green=tuple(bool(g) for g in green),
        skipped=skipped,
        gamma=gamma,
        context_width=context_width,
        key_fingerprint=key_fingerprint(key),
        pair_ids=ids,
    )


# ---------------------------------------------------------------------------------------------- the test


@dataclass(frozen=True)
class ClosedModelReport:
    """The pooled watermark test of a suspect's answers: analytic z and p, and the calibrated p if asked."""

    statistic: float  # z of the green count among the distinct scored pairs
    analytic_p_value: float  # exact binomial upper tail P(Binomial(T, gamma) >= G)
    scored: int  # T: distinct (context, token) pairs scored, prompt pairs left out
    green: int  # G
    gamma: float
    context_width: int
    answers: int  # answers given to the test
    answers_scored: int  # of them, those with a pair outside the prompts (long enough, not only copying)
    tokens: int  # suspect tokens read (every token of every answer)
    repeats_skipped: int  # positions whose pair was already scored
    prompt_pairs_skipped: int  # positions whose pair occurs in a prompt
    key_fingerprint: str
    empirical_p_value: float | None = None  # with a ReferencePool: rank among its pools
    n_pools: int = 0  # reference pools of `scored` distinct pairs each
    pools_at_least: int = 0  # of them, those with at least `green` green pairs
    alpha: float | None = None  # the level the notes check against
    notes: tuple[str, ...] = ()

    @property
    def calibrated(self) -> bool:
        return self.empirical_p_value is not None

    @property
    def p_value(self) -> float:
        """The empirical p-value when calibrated on references, else the analytic one."""
        return self.analytic_p_value if self.empirical_p_value is None else self.empirical_p_value

    @property
    def p_value_kind(self) -> str:
        if self.empirical_p_value is None:
            return "exact binomial upper tail"
        return (
            f"empirical: rank among {self.n_pools} reference pools of as many pairs, same key (+1 corrected)"
        )

    def significant(self, alpha: float = 0.05) -> bool:
        """p_value < alpha: the null hypothesis is rejected at level alpha (evidence, not proof)."""
        return self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": CLOSED_MODEL_METHOD,
            "statistic_name": "z",
            "statistic": self.statistic,
            "p_value": self.p_value,
            "p_value_kind": self.p_value_kind,
            "null_hypothesis": (
                "the suspect's answers were written without the key, like the reference texts"
                if self.calibrated
                else f"green count ~ Binomial(scored, gamma={self.gamma}) (answers independent of the key)"
            ),
            "analytic_p_value": self.analytic_p_value,
            "scored": self.scored,
            "green": self.green,
            "green_fraction": self.green / self.scored,
            "gamma": self.gamma,
            "context_width": self.context_width,
            "answers": self.answers,
            "answers_scored": self.answers_scored,
            "tokens": self.tokens,
            "repeats_skipped": self.repeats_skipped,
            "prompt_pairs_skipped": self.prompt_pairs_skipped,
            "scheme": SCHEME,
            "key_fingerprint": self.key_fingerprint,
            "assumptions": list(ASSUMPTIONS + (CALIBRATION_ASSUMPTIONS if self.calibrated else ())),
            "notes": list(self.notes),
        }
        if self.calibrated:
            out.update(
                empirical_p_value=self.empirical_p_value,
                n_pools=self.n_pools,
                pools_at_least=self.pools_at_least,
                smallest_attainable_p=1.0 / (self.n_pools + 1),
                alpha=self.alpha,
            )
        return out

    def summary(self) -> str:
        """One line: z, p (and which), pairs scored, answers and tokens, notes."""
        p = f"p = {self.p_value:.3g} ({self.p_value_kind})"
        if self.calibrated:
            p += f", analytic p = {self.analytic_p_value:.3g}"
        line = (
            f"{CLOSED_MODEL_METHOD}: z = {self.statistic:.4g}, {p}, {self.scored} distinct pairs scored "
            f"from {self.answers_scored} of {self.answers} answers ({self.tokens} tokens)"
        )
        return line + "".join(f"; note: {note}" for note in self.notes)


def closed_model_test(
    answers_token_ids: Sequence[Sequence[int]],
    key: str | bytes,
    *,
    gamma: float = 0.25,
    context_width: int = 1,
    vocab_size: int | None = None,
    null: ReferencePool | None = None,
    prompts_token_ids: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.05,
) -> ClosedModelReport:
    """Pool the suspect's answers (token ids, one sequence per answer) and test them for the key's watermark.

    Distinct (context, token) pairs are scored once; pairs of `prompts_token_ids` are not scored (module
    docstring). With `null` (a `ReferencePool` scored under the same key, gamma and context width) the
    green count is also ranked among reference pools of as many distinct pairs. `alpha` only decides the
    note about a pool count too small to reach it. Raises `NothingToScoreError` when no pair is left to
    score, and when the references cannot fill a single pool of that size.
    """
    from kdistill.provenance.calibration import ReferenceNull

    if isinstance(null, ReferenceNull):
        raise TypeError(
            "null: a per-text ReferenceNull cannot calibrate the pooled answers (their z is a sum over "
            "all their pairs, not one reference text's); build a ReferencePool from the same texts with "
            "kdistill.provenance.closed_model.reference_pool"
        )
    answers = _sequences(answers_token_ids, vocab_size, "answers")
    excluded = prompt_pairs(_sequences(prompts_token_ids or (), vocab_size, "prompts"), context_width)
    scan = _scan(answers, context_width, excluded)
    if not scan.pairs:
        raise NothingToScoreError(_nothing_to_score(answers, context_width, scan.in_prompts))
    report = _report(scan, answers, key, gamma, context_width)
    return report if null is None else _calibrate(report, null, excluded, alpha)


def _report(
    scan: _Scan, answers: list[list[int]], key: str | bytes, gamma: float, context_width: int
) -> ClosedModelReport:
    green = int(count_green(key, scan.pairs, gamma).sum())
    z, p = binomial_z_and_p(green, len(scan.pairs), gamma)
    return ClosedModelReport(
        statistic=z,
        analytic_p_value=p,
        scored=len(scan.pairs),
        green=green,
        gamma=gamma,
        context_width=context_width,
        answers=len(answers),
        answers_scored=scan.answers_scored,
        tokens=sum(map(len, answers)),
        repeats_skipped=scan.repeats,
        prompt_pairs_skipped=scan.in_prompts,
        key_fingerprint=key_fingerprint(key),
    )


def _calibrate(
    report: ClosedModelReport, null: ReferencePool, excluded: set[Pair], alpha: float
) -> ClosedModelReport:
    from dataclasses import replace

    from kdistill.provenance.calibration import references_needed

    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if null.key_fingerprint != report.key_fingerprint:
        raise ValueError(
            f"the reference texts were scored under another key (fingerprint {null.key_fingerprint}, "
            f"this key {report.key_fingerprint}); score them under the key being tested"
        )
    if (null.gamma, null.context_width) != (report.gamma, report.context_width):
        raise ValueError(
            f"the reference texts were scored with gamma {null.gamma} and context width "
            f"{null.context_width}, the answers with {report.gamma} and {report.context_width}"
        )
    counts = null.pool_green_counts(report.scored, exclude=excluded)  # scored as the answers were
    if not counts:
        raise NothingToScoreError(
            f"the reference texts hold {null.distinct_pairs} distinct pairs in all, too few for one pool of "
            f"{report.scored} (as many as the answers have): give more reference text"
        )
    at_least = sum(c >= report.green for c in counts)  # equal counts: ties, against the suspect
    notes = []
    if 1.0 / (len(counts) + 1) >= alpha:
        notes.append(
            f"with {len(counts)} reference pools the smallest attainable p is {1 / (len(counts) + 1):.3g}, so "
            f"p < {alpha:g} is impossible; give reference text for at least {references_needed(alpha)} "
            f"pools of {report.scored} distinct pairs"
        )
    return replace(
        report,
        empirical_p_value=(1 + at_least) / (len(counts) + 1),
        n_pools=len(counts),
        pools_at_least=at_least,
        alpha=alpha,
        notes=tuple(notes),
    )


def tokens_needed(
    answers_token_ids: Sequence[Sequence[int]],
    key: str | bytes,
    *,
    gamma: float = 0.25,
    context_width: int = 1,
    alpha: float = DEFAULT_ALPHA,
    prompts_token_ids: Sequence[Sequence[int]] | None = None,
) -> int | None:
    """How many suspect tokens (answers in order, pooled) the analytic p-value first needed to fall below `alpha`.

    Tokens are counted as read: every token of the answers before, and the current answer up to the
    token whose new pair tipped the p-value (first tokens of answers, repeats and prompt pairs included:
    the auditor pays for them all). Pairs are scored as in `closed_model_test`, so the pooled p after
    reading n tokens is `closed_model_test` of the answers cut after n tokens. None if it never does.
    """
    from scipy.special import bdtrc

    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    answers = _sequences(answers_token_ids, None, "answers")
    excluded = prompt_pairs(_sequences(prompts_token_ids or (), None, "prompts"), context_width)
    scan = _scan(answers, context_width, excluded)
    if not scan.pairs:
        return None
    green = np.cumsum(count_green(key, scan.pairs, gamma))  # G after each new pair
    scored = np.arange(1, len(scan.pairs) + 1)  # T after each new pair
    # P(Binomial(T, gamma) >= G) = bdtrc(G - 1, T, gamma); G = 0 gives p = 1
    p = np.where(green > 0, bdtrc(np.maximum(green - 1, 0), scored, gamma), 1.0)
    below = np.flatnonzero(p < alpha)
    return int(scan.read_at[below[0]]) if below.size else None


__all__ = [
    "ClosedModelReport",
    "ReferencePool",
    "closed_model_test",
    "prompt_pairs",
    "query_suspect",
    "reference_pool",
    "suspect_generation_config",
    "tokens_needed",
]
