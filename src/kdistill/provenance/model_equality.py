"""Model equality testing (Gao et al. 2024, https://arxiv.org/abs/2410.20247): do two sources sample alike?

Two endpoints (or models, or generation runs) answer the same prompts. The null hypothesis is that they
draw completions from the same distribution; the test is a two-sample kernel test:

    K(a, b) = 1[prompt_a = prompt_b] * (1/L) * sum_{l<L} 1[a_l = b_l]       # Hamming kernel, first L tokens
    MMD^2_u = mean_{i != j} K(x_i, x_j) + mean_{i != j} K(y_i, y_j) - 2 mean_{i,j} K(x_i, y_j)

(sequences shorter than L are padded with a pad symbol that matches only itself: two completions that
ended at the same position agree there). MMD^2_u is an unbiased estimate of the squared maximum mean
discrepancy, 0 in expectation under the null, larger when the sources differ.

**p-value by permutation.** Under the null the source labels are exchangeable, so the observed statistic
is compared with the statistic after `permutations` random relabellings; p = (1 + #{permuted >= observed})
/ (1 + permutations), valid at every sample size (P(p <= alpha) <= alpha). When prompts are given, labels
are permuted only among completions of the same prompt (stratified), so the test is exact conditional on
the prompts even if the two sources answered different numbers of samples per prompt.

**Prompts that cannot be compared are dropped.** With prompts, a prompt answered by one source only has
one labelling, and a prompt with exactly one completion from each source has two labellings that give
the same statistic (the kernel is symmetric): neither can move the statistic under relabelling, and when
every prompt is like that (one sample per prompt and source) the statistic is <= 0 (only the cross term
is left) and p = 1 whatever the sources are. So a prompt enters the test only if both sources answered it
and it holds at least 3 completions; the report counts the prompts dropped, and none left raises
`UntestableComparisonError` (so do fewer than 2 samples from a source).

A small p says the two sources differ in their first L tokens; it does not say how, or which one is
"right". A large p is not proof of equality: the test only has the power its sample size and L give it.
The kernel matrix costs O(N^2 L) and each permutation O(N^2) (N = total samples).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdistill.provenance.report import ProvenanceReport

METHOD = "model equality test, MMD with Hamming kernel (Gao et al. 2024)"
_PAD = -1


class UntestableComparisonError(ValueError):
    """The samples cannot give a test: fewer than 2 from a source, or (by prompt) no comparable prompt.

    Raised instead of a report whose p = 1 could only mean that no test took place.
    """


def _padded(samples: Sequence[Sequence[int]], length: int) -> np.ndarray:
    out = np.full((len(samples), length), _PAD, dtype=np.int64)
    for i, s in enumerate(samples):
        s = list(s)[:length]
        out[i, : len(s)] = s
    return out


def hamming_kernel_matrix(
    samples: Sequence[Sequence[int]], length: int, prompts: Sequence[Hashable] | None = None
) -> np.ndarray:
    """(N, N) float64: the fraction of the first `length` positions where two samples agree (0 across prompts)."""
    tokens = _padded(samples, length)  # (N, L)
    k = np.zeros((len(samples), len(samples)))
    for col in range(length):  # (N, 1) == (1, N) -> (N, N)
        k += tokens[:, col, None] == tokens[None, :, col]
    k /= length
    if prompts is not None:
        ids = _prompt_ids(prompts)
        k *= ids[:, None] == ids[None, :]
    return k


def _prompt_ids(prompts: Sequence[Hashable]) -> np.ndarray:
    index: dict[Hashable, int] = {}
    return np.array([index.setdefault(p, len(index)) for p in prompts], dtype=np.int64)


def mmd2_unbiased(kernel: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """MMD^2_u for each row of `labels` ((B, N) or (N,) bools, True = first source) on one kernel matrix."""
    s = np.atleast_2d(labels).astype(np.float64)  # (B, N)
    n = s.sum(axis=1)
    m = s.shape[1] - n
    diag = np.diag(kernel)
    sk = s @ kernel  # (B, N)
    xx_all = (sk * s).sum(axis=1)  # sum over X x X, diagonal included
    x_all = sk.sum(axis=1)  # sum over X x (X u Y)
    total = kernel.sum()
    xy = x_all - xx_all
    yy_all = total - 2 * x_all + xx_all
    xx = xx_all - s @ diag
    yy = yy_all - (1 - s) @ diag
    out = xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2 * xy / (n * m)
    return out if np.ndim(labels) > 1 else out[0]


def _permuted_labels(
    labels: np.ndarray, strata: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """(count, N): `labels` shuffled independently within each stratum, `count` times."""
    out = np.empty((count, len(labels)), dtype=bool)
    for g in np.unique(strata):
        idx = np.flatnonzero(strata == g)
        order = np.argsort(rng.random((count, len(idx))), axis=1)  # a random permutation per row
        out[:, idx] = labels[idx][order]
    return out


def mmd_hamming_test(
    x: Sequence[Sequence[int]],
    y: Sequence[Sequence[int]],
    *,
    length: int = 50,
    prompts_x: Sequence[Hashable] | None = None,
    prompts_y: Sequence[Hashable] | None = None,
    permutations: int = 999,
    seed: int = 0,
    chunk: int = 256,
) -> ProvenanceReport:
    """Two-sample test: do token-id samples `x` and `y` come from the same distribution (first `length` tokens)?

    Give `prompts_x`/`prompts_y` (one hashable prompt key per sample) to compare completions prompt by
    prompt (the kernel is 0 across prompts, permutations stay within a prompt); prompts that cannot move
    the statistic are dropped (`comparable_prompts`, counted in the report's details). Raises
    `UntestableComparisonError` when no test is possible.
    """
    if (prompts_x is None) != (prompts_y is None):
        raise ValueError("give prompts for both sources or for neither")
    if prompts_x is not None and (len(prompts_x) != len(x) or len(prompts_y or ()) != len(y)):
        raise ValueError("one prompt key per sample")
    if length < 1 or permutations < 1:
        raise ValueError("length and permutations must be >= 1")
    if len(x) < 2 or len(y) < 2:
        raise UntestableComparisonError(
            f"need at least 2 samples from each source, got {len(x)} and {len(y)}"
        )
    dropped = {"prompts_dropped": 0, "samples_dropped_x": 0, "samples_dropped_y": 0}
    if prompts_x is not None and prompts_y is not None:
        keep = comparable_prompts(prompts_x, prompts_y)
        if not keep:
            raise UntestableComparisonError(_no_comparable_prompt(prompts_x, prompts_y))
        kept_x = [i for i, p in enumerate(prompts_x) if p in keep]
        kept_y = [i for i, p in enumerate(prompts_y) if p in keep]
        dropped = {
            "prompts_dropped": len(set(prompts_x) | set(prompts_y)) - len(keep),
            "samples_dropped_x": len(x) - len(kept_x),
            "samples_dropped_y": len(y) - len(kept_y),
        }
        x, prompts_x = [x[i] for i in kept_x], [prompts_x[i] for i in kept_x]
        y, prompts_y = [y[i] for i in kept_y], [prompts_y[i] for i in kept_y]
        if len(x) < 2 or len(y) < 2:
            raise UntestableComparisonError(
                f"need at least 2 samples from each source on the comparable prompts ({len(keep)}), "
                f"got {len(x)} and {len(y)}"
            )
    prompts = None if prompts_x is None else [*prompts_x, *(prompts_y or ())]
    kernel = hamming_kernel_matrix([*x, *y], length, prompts)
    labels = np.zeros(len(x) + len(y), dtype=bool)
    labels[: len(x)] = True
    observed = float(mmd2_unbiased(kernel, labels))
    strata = np.zeros(len(labels), dtype=np.int64) if prompts is None else _prompt_ids(prompts)
    rng = np.random.default_rng(seed)
    at_least = 0
    for start in range(0, permutations, chunk):
        perm = _permuted_labels(labels, strata, min(chunk, permutations - start), rng)
        at_least += int((mmd2_unbiased(kernel, perm) >= observed - 1e-12).sum())
    p = (1 + at_least) / (1 + permutations)
    return ProvenanceReport(
        method=METHOD,
        statistic_name="MMD^2 (unbiased)",
        statistic=observed,
        p_value=p,
        p_value_kind=f"permutation (n={permutations}, +1 corrected"
        + (", within prompts)" if prompts is not None else ")"),
        null_hypothesis=f"both sources sample the first {length} tokens from the same distribution"
        + (" for each prompt" if prompts is not None else ""),
        scored=len(x) + len(y),
        assumptions=(
            "samples are independent draws within each source (distinct seeds, no caching of answers)",
            "both sources answered the same prompts (or prompts drawn the same way when none are given)",
            "samples are token ids from one tokenizer (compare text with the same tokenizer for both)",
            "a small p shows the distributions differ in their first tokens; a large p is not proof of "
            "equality (power grows with the sample size and L)",
        ),
        details={
            "samples_x": len(x),
            "samples_y": len(y),
            "length": length,
            "prompts": None if prompts is None else int(len(np.unique(strata))),
            **dropped,
            "permutations_at_least_as_large": at_least,
        },
    )


def comparable_prompts(prompts_x: Sequence[Hashable], prompts_y: Sequence[Hashable]) -> set[Hashable]:
    """Prompts whose completions can move the by-prompt statistic: answered by both, >= 3 completions in all."""
    nx, ny = Counter(prompts_x), Counter(prompts_y)
    return {p for p in nx if p in ny and nx[p] + ny[p] >= 3}


def _no_comparable_prompt(prompts_x: Sequence[Hashable], prompts_y: Sequence[Hashable]) -> str:
    nx, ny = Counter(prompts_x), Counter(prompts_y)
    both = [p for p in nx if p in ny]
    one_side = len(set(nx) | set(ny)) - len(both)
    return (
        f"no prompt can be compared: of {len(set(nx) | set(ny))} prompts, {one_side} were answered by one "
        f"source only and {len(both)} have one completion from each source, where the statistic cannot "
        "change under relabelling (it is <= 0 and p = 1 whatever the data); a by-prompt test needs prompts "
        "answered by both sources with at least 3 completions in all"
    )


# ---------------------------------------------------------------------------------------------- sources


def prompt_key(prompt: str | None, messages: Any = None) -> str:
    """A hashable key of a plain prompt or a chat (canonical JSON)."""
    if messages is not None:
        return json.dumps(messages, sort_keys=True, ensure_ascii=False)
    return prompt or ""


def read_generation_samples(
    out_dir: str | Path, tokenizer: Any, *, length: int | None = None
) -> tuple[list[list[int]], list[str]]:
    """The completions of a generation output directory as token ids (first `length`), with prompt keys."""
    from kdistill.generate.store import load_generations_table

    table = load_generations_table(out_dir)
    completions = table.column("completion").to_pylist()
    prompts = table.column("prompt").to_pylist()
    messages = table.column("messages").to_pylist()
    ids = tokenizer(completions, add_special_tokens=False)["input_ids"] if completions else []
    tokens = [list(t[:length]) if length is not None else list(t) for t in ids]
    return tokens, [prompt_key(p, m) for p, m in zip(prompts, messages, strict=True)]


def sample_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int = 1,
    length: int = 50,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
) -> tuple[list[list[int]], list[str]]:
    """Sample `samples_per_prompt` completions of at most `length` new tokens per prompt from a HF causal LM.

    Returns the new token ids (cut at the first EOS, excluded) and the prompt of each sample. Prompts are
    used as given (apply a chat template first if the model needs one); padding is on the left.
    """
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    flat = [p for p in prompts for _ in range(samples_per_prompt)]
    torch.manual_seed(seed)
    tokens: list[list[int]] = []
    for start in range(0, len(flat), batch_size):
        batch = flat[start : start + batch_size]
        enc = tokenizer(batch, return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_p=1.0,
                top_k=None,
                max_new_tokens=length,
                pad_token_id=pad,
            )
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            tokens.append(row)
    return tokens, list(flat)


__all__ = [
    "UntestableComparisonError",
    "comparable_prompts",
    "hamming_kernel_matrix",
    "mmd2_unbiased",
    "mmd_hamming_test",
    "prompt_key",
    "read_generation_samples",
    "sample_completions",
]
