"""Model equality testing: the MMD/Hamming statistic against brute force, calibration under the null, power.

The toy endpoints are random bigram languages over 64 tokens with N(0, 3^2) logits (fairly peaked, as an
LLM's first tokens often are), sampled in numpy: a "prompt" is the first token, a completion the next 10.
An endpoint that serves the same model is another independent sample of the same language; a distorted
endpoint serves it at temperature 1.5 (a wrong decoding parameter) or with N(0, 1) noise added to the
logits (a fine-tuned or badly quantised copy). 20 prompts x 20 samples per endpoint for the power tests,
10 x 10 for calibration (the permutation test is exact at any size).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from kdistill.provenance.model_equality import (
    _permuted_labels,
    hamming_kernel_matrix,
    mmd2_unbiased,
    mmd_hamming_test,
    read_generation_samples,
    sample_completions,
)

V, L = 64, 10


def language(seed: int, sigma: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sigma, (V, V))


def endpoint(
    logits: np.ndarray, seed: int, *, prompts: int = 10, per_prompt: int = 10, temperature: float = 1.0
) -> tuple[list[list[int]], list[int]]:
    """`per_prompt` completions of L tokens for each of `prompts` prompts (start tokens 0, 1, ...)."""
    rng = np.random.default_rng(seed)
    p = np.exp((logits - logits.max(axis=1, keepdims=True)) / temperature)
    cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    starts = np.repeat(np.arange(prompts), per_prompt)
    x, out = starts.copy(), []
    for _ in range(L):
        x = np.minimum((cdf[x] < rng.random((len(x), 1))).sum(axis=1), V - 1)
        out.append(x)
    return np.stack(out, axis=1).tolist(), starts.tolist()


def brute_force_mmd2(x, y, length, px=None, py=None) -> float:
    def k(a, pa, b, pb):
        if pa != pb:
            return 0.0
        a = (list(a) + [-1] * length)[:length]
        b = (list(b) + [-1] * length)[:length]
        return sum(u == v for u, v in zip(a, b, strict=True)) / length

    px = px or [0] * len(x)
    py = py or [0] * len(y)
    xx = [k(x[i], px[i], x[j], px[j]) for i, j in itertools.permutations(range(len(x)), 2)]
    yy = [k(y[i], py[i], y[j], py[j]) for i, j in itertools.permutations(range(len(y)), 2)]
    xy = [k(a, pa, b, pb) for a, pa in zip(x, px, strict=True) for b, pb in zip(y, py, strict=True)]
    return float(np.mean(xx) + np.mean(yy) - 2 * np.mean(xy))


def test_mmd2_matches_a_brute_force_double_sum_with_padding_and_prompts():
    rng = np.random.default_rng(0)
    x = [rng.integers(0, 4, rng.integers(1, 8)).tolist() for _ in range(6)]  # lengths 1..7 < L: padded
    y = [rng.integers(0, 4, rng.integers(1, 8)).tolist() for _ in range(5)]
    px, py = [i % 2 for i in range(6)], [i % 3 for i in range(5)]
    for prompts in (False, True):
        kernel = hamming_kernel_matrix(x + y, 6, (px + py) if prompts else None)
        labels = np.array([True] * 6 + [False] * 5)
        got = mmd2_unbiased(kernel, labels)
        want = brute_force_mmd2(x, y, 6, px if prompts else None, py if prompts else None)
        assert got == pytest.approx(want, abs=1e-12)
    assert np.allclose(np.diag(kernel), 1.0) and np.allclose(kernel, kernel.T)
    assert kernel[0, 1] == 0.0  # prompts 0 and 1: nothing in common


def test_permutations_stay_within_prompts():
    labels = np.array([True, True, False, True, False, False, False])
    strata = np.array([0, 0, 0, 1, 1, 1, 2])
    perms = _permuted_labels(labels, strata, 500, np.random.default_rng(0))
    for g in (0, 1, 2):
        assert (perms[:, strata == g].sum(axis=1) == labels[strata == g].sum()).all()
    assert len({tuple(p) for p in perms}) == 3 * 3  # every within-prompt arrangement shows up


def test_same_endpoint_is_calibrated_at_alpha_005():
    base = language(0)
    rejected = 0
    trials = 100
    for t in range(trials):
        x, px = endpoint(base, seed=2 * t)
        y, py = endpoint(base, seed=2 * t + 1)
        report = mmd_hamming_test(x, y, length=L, prompts_x=px, prompts_y=py, permutations=99, seed=t)
        rejected += report.significant(0.05)
    print(f"\nsame endpoint: {rejected}/{trials} p < 0.05")
    assert rejected / trials <= 0.10


@pytest.mark.parametrize("distortion", ["temperature 1.5", "perturbed logits"])
def test_a_distorted_endpoint_is_told_apart(distortion):
    base = language(0)
    other = base + np.random.default_rng(99).normal(0, 1.0, base.shape)
    size = {"prompts": 20, "per_prompt": 20}
    hits, pvals = 0, []
    for t in range(10):
        x, px = endpoint(base, seed=1000 + t, **size)
        if distortion == "temperature 1.5":
            y, py = endpoint(base, seed=2000 + t, temperature=1.5, **size)
        else:
            y, py = endpoint(other, seed=2000 + t, **size)
        report = mmd_hamming_test(x, y, length=L, prompts_x=px, prompts_y=py, permutations=199, seed=t)
        pvals.append(report.p_value)
        hits += report.significant(0.01)
    print(f"\n{distortion}: power at 0.01 = {hits}/10, p-values {pvals}")
    assert hits >= 9


def test_report_fields_and_input_checks():
    x, px = endpoint(language(1), seed=0)
    report = mmd_hamming_test(x, x, length=L, prompts_x=px, prompts_y=px, permutations=19)
    assert report.scored == 2 * len(x) and report.details["prompts"] == 10
    assert report.p_value_kind == "permutation (n=19, +1 corrected, within prompts)"
    assert 1 / 20 <= report.p_value <= 1.0
    json.loads(report.to_json())
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd_hamming_test([[1]], [[1], [2]])
    with pytest.raises(ValueError, match="for both sources or for neither"):
        mmd_hamming_test([[1], [2]], [[1], [2]], prompts_x=[0, 0])


# ---------------------------------------------------------------------------------------------- sources


def peaked_llama(vocab_size: int, seed: int):
    """A 2-layer Llama with large random weights (initializer_range 0.5): next-token entropy ~3 nats,
    peaked like a trained LM's, so two different random models sample visibly different text."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from tests.fixtures.tiny_lm import train_tokenizer

    return train_tokenizer(512, chat_template=False)


def test_hf_sampling_is_seeded_and_tells_two_models_apart(tokenizer):
    torch.set_num_threads(1)
    a, b = peaked_llama(len(tokenizer), seed=0), peaked_llama(len(tokenizer), seed=1)
    prompts = ["The for statement", "Exceptions are raised"]
    kw = {"samples_per_prompt": 16, "length": 8, "batch_size": 32}
    xa, pa = sample_completions(a, tokenizer, prompts, seed=0, **kw)
    assert (xa, pa) == sample_completions(a, tokenizer, prompts, seed=0, **kw)
    assert len(xa) == 32 and all(len(s) <= 8 for s in xa) and pa[:16] == [prompts[0]] * 16
    xa2, _ = sample_completions(a, tokenizer, prompts, seed=1, **kw)
    xb, pb = sample_completions(b, tokenizer, prompts, seed=1, **kw)
    same = mmd_hamming_test(xa, xa2, length=8, prompts_x=pa, prompts_y=pa, permutations=199)
    different = mmd_hamming_test(xa, xb, length=8, prompts_x=pa, prompts_y=pb, permutations=199)
    assert different.p_value <= 0.01 and same.p_value > 0.01


def test_reading_a_generation_dir_gives_token_ids_and_prompt_keys(tmp_path, tokenizer):
    from kdistill.generate.store import GenerationStore

    tok = tokenizer
    chat = [{"role": "user", "content": "hi"}]
    rows = [
        {
            "record_id": f"r{i}",
            "prompt_id": str(i),
            "sample_index": 0,
            "prompt": None if i == 1 else f"prompt {i}",
            "messages": chat if i == 1 else None,
            "completion": "The for statement is used to iterate"[: 10 + 5 * i],
            "finish_reason": "stop",
            "teacher": "{}",
            "sampling": "{}",
            "prompt_tokens": None,
            "completion_tokens": None,
            "logprobs": None,
            "created": "2026-01-01T00:00:00.000Z",
        }
        for i in range(3)
    ]
    store = GenerationStore(tmp_path / "gens")
    store.open()
    store.append_rows(rows)
    store.close()
    tokens, keys = read_generation_samples(tmp_path / "gens", tok, length=3)
    assert tokens == [tok(r["completion"], add_special_tokens=False)["input_ids"][:3] for r in rows]
    assert keys == ["prompt 0", json.dumps(chat, sort_keys=True), "prompt 2"]
