"""Vocabulary transplant: each new row is the mean of the old rows spelling the same bytes, checked against an
independent spelling (the old tokenizer's own encoding); specials by text; tied heads stay tied; the model
runs, saves and reloads with the new vocabulary."""

from __future__ import annotations

import re
from pydoc_data.topics import topics

import pytest
import torch
from tests.fixtures.tiny_lm import tiny_llama, train_bpe, train_tokenizer
from transformers import AutoModelForCausalLM

from kdistill.lm.models import model_from_config
from kdistill.lm.student_tokenizer import train_student_tokenizer
from kdistill.lm.transplant import (
    embedding_sources,
    mean_rows,
    spell_in_old_vocabulary,
    transplant_vocabulary,
)
from kdistill.lm.vocab_map import token_bytes

from .conftest import tiny_llama_config

TEXTS = [topics[k] for k in sorted(topics)]
KINDS = ["sentencepiece", "byte_level", "specials_last"]


@pytest.fixture(scope="module")
def old_tokenizer():
    """Byte-level BPE, 512 tokens, <|pad|> <|bos|> <|eos|> at ids 0, 1, 2."""
    return train_tokenizer(512)


@pytest.fixture(scope="module")
def new_tokenizers(old_tokenizer):
    sentencepiece_like = train_bpe(700, byte_level=False)
    # special tokens added after training: other ids than the old ones, and one the old vocabulary lacks
    sentencepiece_like.add_special_tokens(
        {"pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>"}
    )
    sentencepiece_like.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    return {
        "sentencepiece": train_student_tokenizer(TEXTS, vocab_size=700, like=old_tokenizer),
        "byte_level": train_student_tokenizer(TEXTS, vocab_size=700, like=old_tokenizer, byte_level=True),
        "specials_last": sentencepiece_like,
    }


def old_model(vocab_size: int, tied: bool):
    if tied:  # as SmolLM2
        return model_from_config(tiny_llama_config(vocab_size, layers=2), seed=1)
    return tiny_llama(vocab_size, seed=1)


def test_mean_rows_closed_form():
    old = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    new = mean_rows(old, [(2,), (0, 3), (), (1, 1, 2)], num_old=3)
    assert torch.equal(new[0], old[2])
    assert torch.equal(new[1], (old[0] + old[3]) / 2)
    assert torch.equal(new[2], old[:3].mean(0))  # "everything" = the first num_old rows
    assert torch.allclose(new[3], (2 * old[1] + old[2]) / 3)
    rough = torch.randn(5, 7).to(torch.bfloat16)  # one source: bit for bit, whatever the dtype
    assert (
        torch.equal(mean_rows(rough, [(4,), (0,)]), rough[[4, 0]])
        and mean_rows(rough, [(1,)]).dtype == rough.dtype
    )


def test_spelling_is_exact_for_partial_characters_and_byte_fallback(old_tokenizer):
    spell = spell_in_old_vocabulary(old_tokenizer, token_bytes(old_tokenizer))
    old_bytes = token_bytes(old_tokenizer)
    for target in ("東".encode()[:2], "🙂".encode(), b" the", b" parentheses", b"\x00\xff"):
        ids = spell(target)
        assert b"".join(old_bytes[i] for i in ids) == target
    sp = train_bpe(400, byte_level=False)  # an old sentencepiece-like vocabulary
    spell, sp_bytes = spell_in_old_vocabulary(sp, token_bytes(sp)), token_bytes(sp)
    for target in (b"\xe6", "東京".encode(), b" the", b"x\xe6\x9d"):  # invalid UTF-8 too
        ids = spell(target)
        assert b"".join(sp_bytes[i] for i in ids) == target
    assert sp.convert_ids_to_tokens(spell(b"\xe6")) == ["<0xE6>"]
    assert sp.convert_ids_to_tokens(spell("東".encode())) == ["<0xE6>", "<0x9D>", "<0xB1>"]


@pytest.mark.parametrize("kind", KINDS)
def test_sources_spell_each_new_token_with_old_tokens(old_tokenizer, new_tokenizers, kind):
    new = new_tokenizers[kind]
    sources = embedding_sources(old_tokenizer, new)
    old_bytes, new_bytes = token_bytes(old_tokenizer), token_bytes(new)
    old_vocab = old_tokenizer.get_vocab()
    assert len(sources) == len(new)
    for j, ids in enumerate(sources):
        text = new.convert_ids_to_tokens(j)
        if new_bytes[j] is not None:  # every byte has an old token, so every byte string is spelled
            assert b"".join(old_bytes[i] for i in ids) == new_bytes[j], text
        elif text in old_vocab:
            assert ids == (old_vocab[text],)
        else:
            assert ids == () and text in new.all_special_tokens


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_transplanted_rows_are_means_of_the_old_rows_of_the_same_bytes(
    old_tokenizer, new_tokenizers, kind, tied
):
    new = new_tokenizers[kind]
    model = old_model(len(old_tokenizer), tied)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    assert torch.equal(old_in, old_out) == tied

    assert transplant_vocabulary(model, old_tokenizer, new) is model
    new_in = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    assert new_in.shape == (len(new), old_in.shape[1]) and new_out.shape == new_in.shape
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied

    # the independent reference: an old token with the same bytes, else the old tokenizer's own encoding
    old_vocab, old_bytes, new_bytes = old_tokenizer.get_vocab(), token_bytes(old_tokenizer), token_bytes(new)
    same_bytes = {b: i for i, b in reversed(list(enumerate(old_bytes))) if b}
    exact = averaged = 0
    for j, text in enumerate(new.convert_ids_to_tokens(list(range(len(new))))):
        b = new_bytes[j]
        if b in same_bytes or (b is None and text in old_vocab):
            i = same_bytes[b] if b is not None else old_vocab[text]
            assert torch.equal(new_in[j], old_in[i]) and torch.equal(new_out[j], old_out[i]), text
            exact += 1
        elif b is None:  # a special token the old vocabulary lacks
            assert torch.allclose(new_in[j], old_in.mean(0), atol=1e-6), text
            assert torch.allclose(new_out[j], old_out.mean(0), atol=1e-6), text
        elif re.fullmatch(rb" ?[a-z]+", b):  # one word: the old tokenizer's encoding is one pre-token
            ids = old_tokenizer(b.decode(), add_special_tokens=False)["input_ids"]
            assert len(ids) > 1
            assert torch.allclose(new_in[j].double(), old_in[ids].double().mean(0), atol=1e-6), text
            assert torch.allclose(new_out[j].double(), old_out[ids].double().mean(0), atol=1e-6), text
            averaged += 1
    assert exact > 100 and averaged > 20  # both cases really occur


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_the_model_runs_saves_and_reloads_with_the_new_vocabulary(
    old_tokenizer, new_tokenizers, kind, tied, tmp_path
):
    new = new_tokenizers[kind]
    model = transplant_vocabulary(old_model(len(old_tokenizer), tied), old_tokenizer, new)
    for config in (model.config, model.generation_config):
        assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (
            new.pad_token_id,
            new.bos_token_id,
            new.eos_token_id,
        )
    assert model.config.vocab_size == len(new)
    assert model.get_input_embeddings().padding_idx in (None, new.pad_token_id)
    ids = torch.tensor([new("def f(x):\n    return 'café'", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], len(new)) and torch.isfinite(out.loss)

    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight) == tied
    assert loaded.config.vocab_size == len(new) and loaded.generation_config.eos_token_id == new.eos_token_id
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, out.logits)


def test_several_stop_tokens_are_kept_by_text(old_tokenizer, new_tokenizers):
    new = new_tokenizers["specials_last"]
    model = old_model(len(old_tokenizer), tied=False)
    model.generation_config.eos_token_id = old_tokenizer.convert_tokens_to_ids(["<|eos|>", "<|pad|>"])
    transplant_vocabulary(model, old_tokenizer, new)
    assert model.generation_config.eos_token_id == new.convert_tokens_to_ids(["<|eos|>", "<|pad|>"])
    assert model.config.eos_token_id == new.eos_token_id


def test_a_head_that_contradicts_the_tie_setting_is_refused(old_tokenizer, new_tokenizers):
    model = old_model(len(old_tokenizer), tied=False)
    model.config.tie_word_embeddings = True  # but the head has its own tensor
    with pytest.raises(ValueError, match="tie_word_embeddings=True"):
        transplant_vocabulary(model, old_tokenizer, new_tokenizers["sentencepiece"])


def test_a_head_bias_is_carried_like_the_rows(old_tokenizer, new_tokenizers):
    model = old_model(len(old_tokenizer), tied=False)
    hidden = model.config.hidden_size
    model.lm_head = torch.nn.Linear(hidden, len(old_tokenizer), bias=True)
    torch.nn.init.normal_(model.lm_head.bias, generator=torch.Generator().manual_seed(0))
    old_bias = model.lm_head.bias.detach().clone()
    new = new_tokenizers["sentencepiece"]
    sources = embedding_sources(old_tokenizer, new)
    transplant_vocabulary(model, old_tokenizer, new)
    bias = model.lm_head.bias.detach()
    assert bias.shape == (len(new),) and model.lm_head.out_features == len(new)
    for j, ids in enumerate(sources):
        expected = old_bias[list(ids)].mean() if ids else old_bias.mean()
        assert torch.allclose(bias[j], expected, atol=1e-6)
