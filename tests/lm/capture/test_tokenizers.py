"""Teacher and student must share a tokenizer: the check, its messages, and the fingerprint."""

from __future__ import annotations

import pytest

from kdistill.lm.models import load_tokenizer
from kdistill.lm.tokenizers import assert_same_tokenizer, tokenizer_difference, tokenizer_fingerprint


def test_the_same_tokenizer_passes_and_fingerprints_alike(model_dir, tokenizer, tmp_path):
    again = load_tokenizer(model_dir)
    assert_same_tokenizer(tokenizer, again)
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(again)
    again.save_pretrained(tmp_path / "saved")  # a student saved with its tokenizer keeps it
    assert tokenizer_fingerprint(load_tokenizer(tmp_path / "saved")) == tokenizer_fingerprint(tokenizer)


def test_another_vocabulary_fails_with_a_clear_message(tokenizer):
    from tests.fixtures.tiny_lm import train_tokenizer

    other = train_tokenizer(400)
    with pytest.raises(ValueError) as err:
        assert_same_tokenizer(tokenizer, other)
    message = str(err.value)
    assert message.startswith("teacher and student tokenizers differ: vocabularies differ: ")
    assert f"teacher has {len(tokenizer):,} tokens, student {len(other):,}" in message
    assert "kdistill capture --cross-tokenizer" in message
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)


def test_special_tokens_and_encodings_are_compared_too(model_dir, tokenizer):
    other = load_tokenizer(model_dir)
    other.eos_token = "<|pad|>"  # same vocabulary, another eos id
    assert tokenizer_difference(tokenizer, other) == (
        "special tokens differ: eos_token_id is 2 for the teacher, 0 for the student"
    )
    with pytest.raises(ValueError, match="kdistill capture --cross-tokenizer"):
        assert_same_tokenizer(tokenizer, other)

    templated = load_tokenizer(model_dir)
    templated.chat_template = "{{ messages }}"  # ids of plain text unchanged: the check passes ...
    assert_same_tokenizer(tokenizer, templated)
    # ... but the fingerprint (the content key) changes: prompts render to other ids
    assert tokenizer_fingerprint(templated) != tokenizer_fingerprint(tokenizer)


def test_same_vocabulary_but_other_encodings_fails(model_dir, tokenizer):
    from tokenizers import normalizers

    lower = load_tokenizer(model_dir)
    lower.backend_tokenizer.normalizer = normalizers.Lowercase()  # same vocab and specials, other ids
    with pytest.raises(ValueError, match="the same vocabulary encodes text differently: 'Hello, world!"):
        assert_same_tokenizer(tokenizer, lower)
    assert tokenizer_fingerprint(lower) != tokenizer_fingerprint(tokenizer)
