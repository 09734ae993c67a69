"""Loading, building and measuring causal LMs."""

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import kdistill.lm.models as models_module
from kdistill.lm.models import (
    count_parameters,
    directory_size_bytes,
    is_saveable,
    load_causal_lm,
    load_tokenizer,
    model_from_config,
    rebuild,
    size_on_disk_bytes,
)

from .conftest import tiny_llama_config


def test_model_from_config_is_seeded_and_leaves_the_global_rng_alone():
    rng = torch.get_rng_state()
    a, b, c = (model_from_config(tiny_llama_config(300), seed=s) for s in (1, 1, 2))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)
    assert a.config.num_hidden_layers == 4 and not a.training


def test_load_causal_lm_never_trusts_remote_code_unasked(monkeypatch, model_dir):
    seen = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(models_module.AutoModelForCausalLM, "from_pretrained", spy)
    load_causal_lm(model_dir)
    load_causal_lm(model_dir, trust_remote_code=True, dtype=torch.float64)
    assert seen[0] == {"trust_remote_code": False}
    assert seen[1] == {"trust_remote_code": True, "dtype": torch.float64}


class _GgufLikeQuantizer:
    def is_serializable(self, safe_serialization=None):
        return False


def test_unsaveable_models_are_rebuilt_into_plain_saveable_copies(tmp_path, tiny_model):
    tiny_model.hf_quantizer = _GgufLikeQuantizer()  # what a GGUF-loaded model carries
    assert not is_saveable(tiny_model)
    plain = rebuild(tiny_model)
    assert is_saveable(plain) and not plain.training
    assert plain.lm_head.weight is plain.model.embed_tokens.weight  # ties survive
    for (name, a), b in zip(tiny_model.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    plain.save_pretrained(tmp_path)
    ids = torch.tensor([[3, 14, 15, 92]])
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path)(ids).logits, tiny_model(ids).logits)


def test_load_tokenizer_falls_back_to_eos_for_padding(tmp_path, tokenizer_dir):
    tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"


def test_parameter_counts_and_sizes(model_dir, tiny_model):
    weights = load_file(str(model_dir / "model.safetensors"))
    # tied lm_head / embed_tokens counted once, like the saved file stores it once
    assert count_parameters(tiny_model) == sum(t.numel() for t in weights.values())
    assert "lm_head.weight" not in weights
    assert abs(size_on_disk_bytes(tiny_model) - (model_dir / "model.safetensors").stat().st_size) < 4096
    assert directory_size_bytes(model_dir) == sum(f.stat().st_size for f in model_dir.iterdir())
