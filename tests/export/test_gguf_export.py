"""`export_gguf` / `kdistill export DIR --gguf F`: a tiny Llama student as GGUF, loaded back by transformers'
GGUF loader with the same logits (within the stated f16 / q8_0 tolerances), tokens, metadata and template."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

gguf = pytest.importorskip("gguf")

from tests.fixtures.tiny_lm import tiny_llama, train_tokenizer  # noqa: E402

from kdistill.cli.app import app  # noqa: E402
from kdistill.export.gguf import check_gguf, export_gguf, llama_cpp_permute  # noqa: E402
from kdistill.lm.models import load_causal_lm, load_causal_lm_ref, load_tokenizer_ref  # noqa: E402

# max |logit diff| on the tiny model (logits up to ~0.45), measured: f16 1.7e-4, q8_0 4.5e-3; the bounds
# are a few times that. Float16 rounds a weight by 2^-11 relative; Q8_0 by 1/254 of its 32-block's max.
F16_ATOL, Q8_0_ATOL = 1e-3, 2e-2
SENTENCES = ["Hello, world!", "  def f(x):\n\treturn x ** 2  # ünïcode", "The quick brown fox 123."]


def _save(path, *, tie: bool = False):
    tokenizer = train_tokenizer(512)
    model = tiny_llama(len(tokenizer), seed=1)
    if tie:  # tied: one matrix both embeds and projects back to the vocabulary
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("student"))


def _max_logit_diff(folder, gguf_path) -> float:
    ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = load_causal_lm(folder, dtype="float32")(ids).logits
        got = load_causal_lm_ref(str(gguf_path))(ids).logits
    return float((got - expected).abs().max())


@pytest.mark.parametrize(("type_", "atol"), [("f16", F16_ATOL), ("q8_0", Q8_0_ATOL)])
def test_the_gguf_file_computes_the_students_logits(student, tmp_path, type_, atol):
    out = export_gguf(student, tmp_path / "s.gguf", type=type_)
    assert out == tmp_path / "s.gguf" and out.is_file()
    assert not list(tmp_path.glob(".s.gguf.*"))  # no temporary file left behind
    assert _max_logit_diff(student, out) <= atol
    check = check_gguf(student, out, type=type_)
    assert check.within_tolerance and check.max_abs_diff <= atol


def test_tensor_types_and_permuted_q_k_are_those_llama_cpp_expects(student, tmp_path):
    from safetensors.numpy import load_file

    hf = load_file(str(student / "model.safetensors"))
    heads = json.loads((student / "config.json").read_text())["num_attention_heads"]
    for type_, matrix_type in [
        ("f16", gguf.GGMLQuantizationType.F16),
        ("q8_0", gguf.GGMLQuantizationType.Q8_0),
    ]:
        reader = gguf.GGUFReader(str(export_gguf(student, tmp_path / f"{type_}.gguf", type=type_)))
        tensors = {t.name: t for t in reader.tensors}
        assert "output.weight" in tensors  # untied: the output projection is its own tensor
        for name, tensor in tensors.items():
            expected = gguf.GGMLQuantizationType.F32 if name.endswith("norm.weight") else matrix_type
            assert tensor.tensor_type == expected, name
        q = gguf.quants.dequantize(
            tensors["blk.0.attn_q.weight"].data, tensors["blk.0.attn_q.weight"].tensor_type
        )
        # llama.cpp's layout, independently: row 2i of a head is HF row i, row 2i+1 is HF row i + d/2
        hf_q = hf["model.layers.0.self_attn.q_proj.weight"]
        d = hf_q.shape[0] // heads
        assert np.array_equal(llama_cpp_permute(hf_q, heads)[1], hf_q[d // 2])
        np.testing.assert_allclose(
            q.reshape(hf_q.shape)[1], hf_q[d // 2], atol=2e-3 if type_ == "f16" else 2e-2
        )


def test_metadata_equals_the_config_and_tokenizer(student, tmp_path):
    config = json.loads((student / "config.json").read_text())
    reader = gguf.GGUFReader(str(export_gguf(student, tmp_path / "s.gguf")))

    def value(key):
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("llama.context_length") == config["max_position_embeddings"]
    assert value("llama.embedding_length") == config["hidden_size"]
    assert value("llama.block_count") == config["num_hidden_layers"]
    assert value("llama.feed_forward_length") == config["intermediate_size"]
    assert value("llama.attention.head_count") == config["num_attention_heads"]
    assert value("llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert value("llama.rope.dimension_count") == config["hidden_size"] // config["num_attention_heads"]
    rope_theta = (config.get("rope_parameters") or config)["rope_theta"]
    assert value("llama.rope.freq_base") == pytest.approx(rope_theta)
    assert value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    assert value("llama.vocab_size") == config["vocab_size"] == len(value("tokenizer.ggml.tokens"))
    tokenizer_json = json.loads((student / "tokenizer.json").read_text())
    assert value("tokenizer.ggml.model") == "gpt2"
    assert tokenizer_json["pre_tokenizer"]["type"] == "ByteLevel"  # a plain byte-level pre-tokenizer ...
    assert value("tokenizer.ggml.pre") == "gpt-2"  # ... under llama.cpp's name for it ("gpt2" fails to load)
    assert value("tokenizer.ggml.tokens")[:3] == ["<|pad|>", "<|bos|>", "<|eos|>"]
    assert value("tokenizer.ggml.token_type")[:4] == [3, 3, 3, 1]  # control, control, control, normal
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]
    assert value("tokenizer.ggml.merges") == merges
    assert [value(f"tokenizer.ggml.{k}_token_id") for k in ("padding", "bos", "eos")] == [0, 1, 2]
    from tests.fixtures.tiny_lm import CHAT_TEMPLATE

    assert value("tokenizer.chat_template") == CHAT_TEMPLATE


def test_the_tokenizer_round_trips(student, tmp_path):
    out = export_gguf(student, tmp_path / "s.gguf")
    original, loaded = load_tokenizer_ref(str(student)), load_tokenizer_ref(str(out))
    for text in SENTENCES:
        ids = original(text, add_special_tokens=False)["input_ids"]
        assert loaded(text, add_special_tokens=False)["input_ids"] == ids
        assert loaded.decode(ids) == text
    messages = [{"role": "user", "content": "hi"}]
    assert loaded.apply_chat_template(messages, tokenize=False) == original.apply_chat_template(
        messages, tokenize=False
    )


def test_a_tied_embedding_student_has_no_output_tensor_and_the_same_logits(tmp_path):
    folder = _save(tmp_path / "tied", tie=True)
    out = export_gguf(folder, tmp_path / "t.gguf")
    names = {t.name for t in gguf.GGUFReader(str(out)).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names
    assert _max_logit_diff(folder, out) <= F16_ATOL


def test_refusals_name_the_folder(student, tmp_path):
    with pytest.raises(ValueError, match=r"no config\.json"):
        export_gguf(tmp_path, tmp_path / "x.gguf")
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=rf"{other}: model_type 'gpt2' .*supported: llama"):
        export_gguf(other, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="expected one of f16, q8_0"):
        export_gguf(student, tmp_path / "x.gguf", type="q4_0")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".x.gguf.*"))


def test_cli_exports_and_checks(student, tmp_path):
    out = tmp_path / "s.gguf"
    result = CliRunner().invoke(app, ["export", str(student), "--gguf", str(out), "--type", "q8_0"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and gguf.GGUFReader(str(out)).fields["general.file_type"].contents() == 7  # Q8_0
    assert "equal within" in result.output and "NOT equal" not in result.output


def test_cli_refusals(student, tmp_path):
    runner = CliRunner()
    both = runner.invoke(
        app, ["export", str(student), "--gguf", str(tmp_path / "a.gguf"), "--onnx", str(tmp_path / "a.onnx")]
    )
    neither = runner.invoke(app, ["export", str(student)])
    for result in (both, neither):
        assert result.exit_code == 2 and "exactly one of --onnx FILE or --gguf FILE" in result.output
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    result = runner.invoke(app, ["export", str(other), "--gguf", str(tmp_path / "b.gguf")])
    assert (
        result.exit_code == 2 and "model_type 'gpt2'" in result.output and "supported: llama" in result.output
    )
    result = runner.invoke(app, ["export", str(student), "--gguf", str(tmp_path / "c.gguf"), "--type", "q4"])
    assert result.exit_code == 2 and "--type q4: expected one of f16, q8_0" in result.output
    assert not list(tmp_path.glob("*.gguf"))
