"""The green-list watermark: the keyed green function, the logits processor, detection, and the generation config.

The toy language model of the must-hold tests is a 2-layer Llama (hidden 32, vocabulary 512) with large
random weights (initializer_range 0.5): its next-token distributions have an entropy of ~3 nats (peaked
like a trained LM's, far from uniform), so clean texts repeat some (context, token) pairs and the
watermark has to work against real preferences. Texts are 200 sampled tokens after a 4-token prompt, made
with `model.generate` and the real `GreenListLogitsProcessor`.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import numpy as np
import pytest
import torch

from kdistill.provenance.watermark import (
    GreenListWatermark,
    NothingToScoreError,
    WatermarkKeyError,
    context_seed,
    detect_watermark,
    is_green,
    key_fingerprint,
    key_from_env,
    scored_pairs,
)

KEY = b"watermark-test-key-0123456789abcdef"
GOLDEN_KEY = b"kdistill-golden-key-0000"
M64 = (1 << 64) - 1


def reference_green(key: bytes, context: tuple[int, ...], token: int, gamma: float) -> bool:
    """The documented scheme in plain Python integers (an independent implementation)."""
    msg = b"".join(t.to_bytes(8, "little", signed=True) for t in context)
    z = (
        int.from_bytes(hmac.new(key, msg, hashlib.sha256).digest()[:8], "little")
        + (token + 1) * 0x9E3779B97F4A7C15
    ) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return (z >> 11) / 2**53 < gamma


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------- green lists


def test_green_lists_match_the_documented_scheme_and_the_pinned_v1_values():
    wm = GreenListWatermark(GOLDEN_KEY, gamma=0.25, context_width=1)
    mask = wm.green_mask([[17], [3]], 64)
    for row, ctx in enumerate([(17,), (3,)]):
        assert mask[row].tolist() == [reference_green(GOLDEN_KEY, ctx, t, 0.25) for t in range(64)]
        assert [is_green(GOLDEN_KEY, ctx, t, 0.25) for t in range(64)] == mask[row].tolist()
    # pinned: changing the scheme would make every watermark made before undetectable
    assert context_seed(GOLDEN_KEY, (17,)) == 0x103DE25CD7C40E3A
    assert "".join("01"[int(b)] for b in mask[0, :32]) == "01011000001011110011100110000001"
    wide = GreenListWatermark(GOLDEN_KEY, gamma=0.5, context_width=2).green_mask([[3, 5]], 32)[0]
    assert "".join("01"[int(b)] for b in wide) == "10101100111101111000011011000001"
    assert key_fingerprint(GOLDEN_KEY) == "eb5a6c26f027000b"


def test_green_fraction_is_gamma_and_lists_depend_on_key_and_context():
    for gamma in (0.1, 0.25, 0.5):
        wm = GreenListWatermark(KEY, gamma=gamma)
        mask = wm.green_mask([[c] for c in range(200)], 1000)  # 200k (context, token) pairs
        assert abs(mask.mean() - gamma) < 4 * np.sqrt(gamma * (1 - gamma) / mask.size)
    a = GreenListWatermark(KEY).green_mask([[5], [6]], 4000)
    b = GreenListWatermark(b"another-key-0123456789").green_mask([[5]], 4000)
    # independent lists overlap in gamma^2 of the vocabulary, not in gamma
    assert abs((a[0] & a[1]).mean() - 0.0625) < 0.02 and abs((a[0] & b[0]).mean() - 0.0625) < 0.02


def test_processor_adds_delta_to_green_logits_only():
    wm = GreenListWatermark(KEY, gamma=0.25, delta=2.0, context_width=2)
    processor = wm.logits_processor()
    ids = torch.tensor([[9, 4, 7], [1, 2, 3]])
    scores = torch.randn(2, 50)
    out = processor(ids, scores.clone())
    expected = scores + 2.0 * torch.from_numpy(wm.green_mask([[4, 7], [2, 3]], 50)).float()
    assert torch.equal(out, expected)
    short = torch.tensor([[9]])  # fewer tokens than the context width: left alone
    assert torch.equal(processor(short, scores[:1]), scores[:1])
    assert "watermark-test-key" not in repr(wm) and KEY.decode() not in json.dumps(wm.identity())


# ---------------------------------------------------------------------------------------------- detection


def test_repeated_pairs_are_scored_once_and_p_is_the_exact_binomial_tail():
    from scipy.stats import binom

    text = [5, 6] * 100  # the pairs (5)->6 and (6)->5, 199 times in all
    report = detect_watermark(text, KEY)
    assert report.scored == 2 and report.details["repeats_skipped"] == 197
    every = detect_watermark(text, KEY, deduplicate=False)
    assert every.scored == 199 and every.assumptions[0].startswith("NOT VALID")

    rng = np.random.default_rng(0)
    texts = [rng.integers(0, 300, 60).tolist() for _ in range(5)]
    pooled = detect_watermark(texts, KEY, gamma=0.25)
    pairs, positions = scored_pairs(texts, 1)
    green = sum(reference_green(KEY, c, t, 0.25) for c, t in pairs)
    n = len(pairs)
    assert (pooled.scored, pooled.details["green"], positions) == (n, green, 5 * 59)
    assert pooled.p_value == pytest.approx(binom.sf(green - 1, n, 0.25), rel=1e-9)
    assert pooled.statistic == pytest.approx((green - 0.25 * n) / np.sqrt(n * 0.25 * 0.75))
    for nothing in ([], [[], [7]], [5]):  # no pair to score: no test, not "z = 0, p = 1"
        with pytest.raises(NothingToScoreError, match="no \\(context, token\\) pair to score"):
            detect_watermark(nothing, KEY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        detect_watermark([1, 2, 700], KEY, vocab_size=512)


def test_key_comes_from_the_environment_and_is_checked(monkeypatch):
    monkeypatch.delenv("KD_TEST_WM_KEY", raising=False)
    with pytest.raises(WatermarkKeyError, match="KD_TEST_WM_KEY is not set"):
        key_from_env("KD_TEST_WM_KEY")
    monkeypatch.setenv("KD_TEST_WM_KEY", "short")
    with pytest.raises(WatermarkKeyError, match="at least 16"):
        key_from_env("KD_TEST_WM_KEY")
    monkeypatch.setenv("KD_TEST_WM_KEY", KEY.decode())
    assert key_from_env("KD_TEST_WM_KEY") == KEY


# ---------------------------------------------------------------------------------------------- must hold


def peaked_llama(vocab_size: int = 512, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def _texts(model, n: int, seed: int, watermark: GreenListWatermark | None) -> list[list[int]]:
    """n texts: the last prompt token (the first new token's context) + 200 sampled tokens."""
    from transformers import LogitsProcessorList

    prompts = torch.randint(3, 512, (n, 4), generator=torch.Generator().manual_seed(seed))
    extra = (
        {} if watermark is None else {"logits_processor": LogitsProcessorList([watermark.logits_processor()])}
    )
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=True,
            temperature=1.0,
            top_k=None,
            top_p=None,
            max_new_tokens=200,
            min_new_tokens=200,
            pad_token_id=0,
            **extra,
        )
    return out[:, 3:].tolist()  # (n, 1 + 200)


@pytest.fixture(scope="module")
def toy_texts():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test one-thread fixture
    model = peaked_llama()
    wm = GreenListWatermark(KEY, gamma=0.25, delta=2.0, context_width=1)
    texts = {
        "watermarked": _texts(model, 200, seed=1, watermark=wm),
        "clean": _texts(model, 400, seed=2, watermark=None),
    }
    torch.set_num_threads(previous)
    return texts


def test_watermarked_texts_are_detected_and_clean_ones_are_not(toy_texts):
    z_wm = np.array([detect_watermark(t, KEY, gamma=0.25).statistic for t in toy_texts["watermarked"]])
    z_clean = np.array([detect_watermark(t, KEY, gamma=0.25).statistic for t in toy_texts["clean"][:200]])
    print(
        f"\nwatermarked: {np.mean(z_wm > 4):.3f} with z > 4 (min z {z_wm.min():.2f}); "
        f"clean: {int(np.sum(z_clean > 4))} with z > 4, {np.mean(z_clean > 2):.3f} with z > 2 (max {z_clean.max():.2f})"
    )
    assert np.mean(z_wm > 4) >= 0.95
    assert np.sum(z_clean > 4) == 0
    assert np.mean(z_clean > 2) <= 0.10


def test_p_values_of_clean_texts_are_calibrated(toy_texts):
    reports = [detect_watermark(t, KEY, gamma=0.25) for t in toy_texts["clean"]]
    fraction = np.mean([r.p_value < 0.05 for r in reports])
    repeats = np.mean([r.details["repeats_skipped"] for r in reports])
    print(f"\n400 clean texts: {fraction:.4f} with p < 0.05 ({repeats:.2f} repeated pairs per text skipped)")
    assert 0.02 <= fraction <= 0.09
    assert repeats > 0.5  # the toy repeats pairs, so de-duplication is exercised


# ---------------------------------------------------------------------------------------------- generation config


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    from tests.fixtures.tiny_lm import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("wm-tiny-lm") / "model")


def _gen_config(model_dir, prompts, out, watermark):
    from kdistill.generate.run import GenerationConfig

    teacher = {"kind": "hf_local", "model": str(model_dir), "batch_size": 8, "api": "completions"}
    if watermark is not None:
        teacher["watermark"] = watermark
    return GenerationConfig.model_validate(
        {
            "prompts": prompts,
            "out": out,
            "teacher": teacher,
            "sampling": {"max_tokens": 48, "temperature": 1.0, "seed": 0},
            "allow_length": True,
        }
    )


def test_hf_teacher_watermarks_its_samples_and_records_a_fingerprint_not_the_key(
    tiny_lm_dir, tmp_path, monkeypatch
):
    from transformers import AutoTokenizer

    from kdistill.generate.run import GenerationError, generate
    from kdistill.generate.store import load_generations

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"Item {i}:"}) + "\n" for i in range(8)))
    monkeypatch.setenv("KD_TEST_WM_KEY", KEY.decode())
    wm = {"key_env": "KD_TEST_WM_KEY", "gamma": 0.25, "delta": 2.0}
    generate(_gen_config(tiny_lm_dir, prompts, tmp_path / "wm", wm))
    generate(_gen_config(tiny_lm_dir, prompts, tmp_path / "plain", None))

    marked, plain = load_generations(tmp_path / "wm"), load_generations(tmp_path / "plain")
    identity = json.loads(marked[0]["teacher"])
    assert identity["watermark"] == {
        "scheme": "green-list/hmac-sha256+splitmix64/v1",
        "gamma": 0.25,
        "delta": 2.0,
        "context_width": 1,
        "key_fingerprint": key_fingerprint(KEY),
    }
    assert "watermark" not in json.loads(plain[0]["teacher"])  # unwatermarked identities unchanged
    assert set(marked["record_id"]).isdisjoint(plain["record_id"])
    for path in (tmp_path / "wm").rglob("*"):
        if path.is_file():
            assert KEY not in path.read_bytes()

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in marked["completion"]]
    hot = detect_watermark(ids, KEY)
    cold = detect_watermark([tok(t, add_special_tokens=False)["input_ids"] for t in plain["completion"]], KEY)
    print(
        f"\nhf_local teacher, 8 x 48 tokens re-tokenised: z = {hot.statistic:.1f} (plain {cold.statistic:.1f})"
    )
    assert hot.statistic > 6 and hot.p_value < 1e-8
    assert abs(cold.statistic) < 3

    monkeypatch.delenv("KD_TEST_WM_KEY")
    with pytest.raises(
        GenerationError, match="teacher.watermark.key_env: the environment variable KD_TEST_WM_KEY"
    ):
        generate(_gen_config(tiny_lm_dir, prompts, tmp_path / "nokey", wm))


def test_watermark_config_is_validated_with_field_paths():
    from kdistill.config import ConfigError
    from kdistill.generate.run import load_generation_config

    base = {"prompts": "p.jsonl", "out": "o", "teacher": {"kind": "hf_local", "model": "m"}}
    cfg = load_generation_config(None, {**base, "teacher": {**base["teacher"], "watermark": {}}})
    assert cfg.teacher.watermark is not None and cfg.teacher.watermark.key_env == "KDISTILL_WATERMARK_KEY"
    with pytest.raises(ConfigError, match=r"generation\.teacher\.watermark\.gamma"):
        load_generation_config(None, {**base, "teacher": {**base["teacher"], "watermark": {"gamma": 1.5}}})
    with pytest.raises(ConfigError, match=r"generation\.teacher\.watermark\.key"):
        load_generation_config(None, {**base, "teacher": {**base["teacher"], "watermark": {"key": "x" * 20}}})
