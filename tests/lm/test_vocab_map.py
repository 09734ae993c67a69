"""Token bytes under byte-level and sentencepiece-style conventions, and the teacher -> student map by bytes."""

from __future__ import annotations

import pytest
from tests.fixtures.tiny_lm import train_bpe
from tests.lm.test_alignment import TEXTS

from kdistill.lm.vocab_map import byte_level_alphabet, map_vocabulary, token_bytes


@pytest.fixture(scope="module")
def byte_level():
    return train_bpe(700, byte_level=True)


@pytest.fixture(scope="module")
def metaspace():
    return train_bpe(400, byte_level=False)


def test_the_byte_level_alphabet_is_a_bijection_with_gpt2s_printable_choices():
    alphabet = byte_level_alphabet()
    assert sorted(alphabet.values()) == list(range(256))
    assert alphabet["Ġ"] == ord(" ") and alphabet["Ċ"] == ord("\n") and alphabet["a"] == ord("a")


@pytest.mark.parametrize("text", TEXTS)
def test_the_bytes_of_a_texts_tokens_concatenate_to_the_text(text, byte_level, metaspace):
    table = token_bytes(byte_level)
    ids = byte_level(text, add_special_tokens=False)["input_ids"]
    assert b"".join(table[i] for i in ids) == text.encode("utf-8")
    table = token_bytes(metaspace)  # "▁" is a space; the pre-tokenizer decides where it adds one
    ids = metaspace(text, add_special_tokens=False)["input_ids"]
    pieces = metaspace.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
    spelled = "".join(piece for piece, _ in pieces).replace("▁", " ")
    assert b"".join(table[i] for i in ids) == spelled.encode("utf-8")
    assert spelled.strip() == text.strip()


def test_the_map_joins_spellings_of_the_same_bytes(byte_level, metaspace):
    teacher, student = token_bytes(byte_level), token_bytes(metaspace)
    mapping = map_vocabulary(teacher, student)
    mapped = (mapping >= 0).nonzero().flatten().tolist()
    assert len(mapped) > 100
    assert all(teacher[t] == student[mapping[t]] for t in mapped)
    unmapped = [t for t in range(len(teacher)) if mapping[t] < 0 and teacher[t] is not None]
    assert all(teacher[t] not in set(student) for t in unmapped)
    vocab_t, vocab_s = byte_level.get_vocab(), metaspace.get_vocab()
    assert mapping[vocab_t["Ã"]] == vocab_s["<0xC3>"]  # a lone byte: byte-level char vs byte fallback
    space_words = [w for w in vocab_t if w.startswith("Ġ") and "▁" + w[1:] in vocab_s and len(w) > 2]
    assert space_words, "the two vocabularies share no word with a leading space"
    assert all(mapping[vocab_t[w]] == vocab_s["▁" + w[1:]] for w in space_words)


def test_special_tokens_have_no_bytes_and_map_nowhere():
    assert map_vocabulary([None, b"a"], [b"a", None]).tolist() == [-1, 0]
    assert map_vocabulary([b"x"], [b"y", b"x", b"x"]).tolist() == [1]
