"""A Llama-family student as one GGUF file, the format llama.cpp and Ollama run.

The layout follows llama.cpp's convert_hf_to_gguf.py for a Llama: hyper-parameters under `llama.*`, the
byte-level BPE vocabulary under `tokenizer.ggml.*` (model "gpt2": tokens, token types, merges, special ids)
with the chat template, and tensors under llama.cpp's names (`token_embd`, `blk.N.attn_q`, ..., `output`),
the q/k rows permuted into llama.cpp's interleaved rotary layout (transformers' GGUF loader undoes that).
The file itself is written by the `gguf` package's `GGUFWriter`, never by hand.

    export_gguf("runs/lm-.../jobs/distilled-s0/student", "student.gguf", type="q8_0")
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdistill.io import atomic_output

GGUF_TYPES = ("f16", "q8_0")
SUPPORTED_MODEL_TYPES = ("llama",)
# the check's tolerance on max |logit difference|, as a fraction of the student's own max |logit|: float16
# rounds each weight by <= 2^-11 relative, Q8_0 by <= 1/254 of its block's largest value; on the 2-layer test
# model they measured 4e-4 and 1e-2 of max |logit|, the bounds leave room for deeper students
GGUF_PARITY_RTOL = {"f16": 1e-2, "q8_0": 5e-2}
Q8_0_BLOCK = 32  # Q8_0 quantises rows in blocks of 32 values, each block with its own float16 scale
NORMAL, CONTROL = 1, 3  # llama.cpp's token types (gguf.TokenType)


def export_gguf(
    model_dir: str | os.PathLike[str], out_path: str | os.PathLike[str], *, type: str = "f16"
) -> Path:
    """Write the Hugging Face Llama model in `model_dir` (config.json, weights, tokenizer) as one GGUF file.

    `type`: "f16" (2-D weights float16) or "q8_0" (2-D weights in Q8_0 where a row is a whole number of
    32-value blocks, float16 otherwise); norms stay float32 in both, as llama.cpp's converter keeps them.
    The file is written beside `out_path` and renamed into place, so a failed export leaves nothing behind.
    """
    import gguf

    from kdistill.lm.models import load_causal_lm, load_tokenizer

    folder = Path(model_dir)
    if type not in GGUF_TYPES:
        raise ValueError(f"GGUF type {type!r}: expected one of {', '.join(GGUF_TYPES)}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder}: no config.json; expected a Hugging Face model folder (save_pretrained)")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{folder}: model_type {model_type!r} cannot be exported to GGUF; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (others later)"
        )
    model = load_causal_lm(folder, dtype="float32")
    tokenizer = load_tokenizer(folder)
    config = model.config
    rope = config.rope_parameters or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"{folder}: rope_type {rope['rope_type']!r}; only unscaled rope is exported to GGUF")
    tokens, types, merges = bpe_vocabulary(tokenizer)
    if len(tokens) != config.vocab_size:
        raise ValueError(
            f"{folder}: the tokenizer has {len(tokens)} tokens for a vocab_size of {config.vocab_size}"
        )

    with atomic_output(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(folder.resolve().name)
        writer.add_file_type(
            gguf.LlamaFileType.MOSTLY_F16 if type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
        )
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_vocab_size(config.vocab_size)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        if (
            config.head_dim != config.hidden_size // config.num_attention_heads
        ):  # llama.cpp assumes it otherwise
            writer.add_key_length(config.head_dim)
            writer.add_value_length(config.head_dim)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        _add_tokenizer(writer, tokenizer, tokens, types, merges)
        for name, weight in gguf_tensors(model).items():
            data, qtype = _encode(weight, type)
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out_path)


@dataclass(frozen=True)
class GgufCheck:
    """The GGUF file's logits (transformers' GGUF loader) against the Hugging Face model's, same token ids."""

    max_abs_diff: float
    tolerance: float  # GGUF_PARITY_RTOL[type] * the Hugging Face logits' max |value|
    tokens: int

    @property
    def within_tolerance(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def check_gguf(
    model_dir: str | os.PathLike[str],
    gguf_path: str | os.PathLike[str],
    *,
    type: str = "f16",
    tokens: int = 32,
) -> GgufCheck:
    """Load the GGUF file back (dequantised by transformers) and compare its logits with the model folder's on
    fixed, seeded token ids (one sequence of `tokens`)."""
    import torch

    from kdistill.lm.models import load_causal_lm, load_causal_lm_ref

    model = load_causal_lm(model_dir, dtype="float32")
    loaded = load_causal_lm_ref(str(gguf_path), field="gguf")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=generator)
    with torch.inference_mode():
        expected, got = model(ids).logits, loaded(ids).logits
    return GgufCheck(
        max_abs_diff=float((got - expected).abs().max()),
        tolerance=GGUF_PARITY_RTOL[type] * float(expected.abs().max()),
        tokens=tokens,
    )


def _encode(weight: np.ndarray, type: str):
    """(data, raw dtype for GGUFWriter) of one tensor: norms (1-D) float32, 2-D weights f16 or Q8_0."""
    import gguf

    if weight.ndim < 2:
        return np.ascontiguousarray(weight, dtype=np.float32), None
    if type == "q8_0" and weight.shape[-1] % Q8_0_BLOCK == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(np.ascontiguousarray(weight, dtype=np.float32), qtype), qtype
    return np.ascontiguousarray(weight, dtype=np.float16), None


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` of a q/k projection: within each head the rows of rotary pair
    (i, i + d/2) become rows (2i, 2i + 1), the interleaved layout its rope kernel expects."""
    # (n_head * d, in) -> (n_head, 2, d/2, in) -> (n_head, d/2, 2, in) -> (n_head * d, in)
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """The model's float32 weights under llama.cpp's names, every parameter exactly once (a Llama variant
    with extra tensors, e.g. attention biases, is refused rather than exported without them)."""
    config = model.config
    hf = {name: t.detach().float().numpy() for name, t in model.state_dict().items()}
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        used.add(name)
        return hf[name]

    tensors = {
        "token_embd.weight": take("model.embed_tokens.weight"),
        "output_norm.weight": take("model.norm.weight"),
    }
    if not config.tie_word_embeddings:  # tied: llama.cpp reuses token_embd as the output projection
        tensors["output.weight"] = take("lm_head.weight")
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        tensors |= {
            f"blk.{i}.attn_norm.weight": take(layer + "input_layernorm.weight"),
            f"blk.{i}.attn_q.weight": llama_cpp_permute(
                take(layer + "self_attn.q_proj.weight"), config.num_attention_heads
            ),
            f"blk.{i}.attn_k.weight": llama_cpp_permute(
                take(layer + "self_attn.k_proj.weight"), config.num_key_value_heads
            ),
            f"blk.{i}.attn_v.weight": take(layer + "self_attn.v_proj.weight"),
            f"blk.{i}.attn_output.weight": take(layer + "self_attn.o_proj.weight"),
            f"blk.{i}.ffn_norm.weight": take(layer + "post_attention_layernorm.weight"),
            f"blk.{i}.ffn_gate.weight": take(layer + "mlp.gate_proj.weight"),
            f"blk.{i}.ffn_up.weight": take(layer + "mlp.up_proj.weight"),
            f"blk.{i}.ffn_down.weight": take(layer + "mlp.down_proj.weight"),
        }
    left = set(hf) - used - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    if left:
        raise ValueError(f"no GGUF name for the tensors {sorted(left)}")
    return tensors


def bpe_vocabulary(tokenizer) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, llama.cpp token types, merges "a b") of a byte-level BPE fast tokenizer; any other
    tokenizer (sentencepiece, WordPiece) is refused with a ValueError."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; GGUF export needs one")
    spec = json.loads(backend.to_str())
    if spec["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ValueError(
            f"tokenizer model {spec['model']['type']!r}: GGUF export supports byte-level BPE (gpt2-style) only"
        )
    by_id = {i: token for token, i in backend.get_vocab(with_added_tokens=True).items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError("tokenizer ids are not 0..n-1")
    tokens = [by_id[i] for i in range(len(by_id))]
    special = set(tokenizer.all_special_ids)
    types = [CONTROL if i in special else NORMAL for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]  # [a, b] or "a b"
    return tokens, types, merges


def _pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's `tokenizer.ggml.pre`: "gpt-2" for a plain byte-level pre-tokenizer with GPT-2's regex,
    else "default" (llama.cpp's converter identifies other known pre-tokenizers by hashing their output;
    a student with such a tokenizer may split text differently in llama.cpp than in transformers).
    "gpt-2", not "gpt2": "gpt2" is the tokenizer *model* name, and llama.cpp refuses to load a file whose
    pre-tokenizer is "gpt2" ("unknown pre-tokenizer type")."""
    pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    return "gpt-2" if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) else "default"


def _add_tokenizer(writer, tokenizer, tokens: list[str], types: list[int], merges: list[str]) -> None:
    """The vocabulary, special ids, whether bos/eos are added on encode, and the chat template."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for special, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if special is not None:
            add(special)
    # what encode really does (a post-processor may add them), not what an attribute claims
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    writer.add_add_bos_token(len(full) > len(plain) and full[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(full) > len(plain) and full[-1] == tokenizer.eos_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
