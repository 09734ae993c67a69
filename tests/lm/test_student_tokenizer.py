"""A student tokenizer trained here: the other family than the teacher's, exact round trips, the teacher's
special tokens and chat template carried over by text, offsets that tile the text, save/load intact."""

from __future__ import annotations

import json
from pydoc_data.topics import topics

import pytest
from tokenizers import processors
from transformers import AutoTokenizer

from kdistill.lm.alignment import token_byte_spans
from kdistill.lm.models import load_tokenizer
from kdistill.lm.student_tokenizer import BYTE_FALLBACK_TOKENS, METASPACE, train_student_tokenizer
from kdistill.lm.tokenizers import PROBES, tokenizer_difference, tokenizer_fingerprint
from kdistill.lm.vocab_map import decoder_kinds, token_bytes

TEXTS = [topics[k] for k in sorted(topics)]
FAMILIES = ["sentencepiece", "byte_level"]
ROUND_TRIPS = [
    "",
    "Hello, world!",
    "naïve café — Zürich, 東京, 🙂 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",  # accents, CJK, emoji, astral-plane letters
    "def f(x):\n    if x:\n\treturn [i ** 2 for i in x]  # squares\n",
    "   three leading spaces",
    "two trailing spaces  ",
    " \n\n  blank lines\r\n and a CRLF \n",
    "runs   of    spaces",
    "the literal text <0x41> is not the byte A",
    "<|im_start|>user\nhi<|im_end|>",  # special tokens written in the text
]


@pytest.fixture(scope="module")
def students(tokenizer):
    return {
        family: train_student_tokenizer(
            TEXTS, vocab_size=1024, like=tokenizer, byte_level=family == "byte_level"
        )
        for family in FAMILIES
    }


def special_texts(tok) -> list[str]:
    return [str(t.content) for t in tok.added_tokens_decoder.values() if t.special]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_decoding_reproduces_the_text(students, family, text):
    student = students[family]
    ids = student(text, add_special_tokens=False)["input_ids"]
    assert student.decode(ids) == text
    if "<|" not in text:  # skip_special_tokens drops only special tokens, never byte-fallback pieces
        assert student.decode(ids, skip_special_tokens=True) == text
        # and every token stands for exactly the bytes it decodes to
        assert b"".join(token_bytes(student)[i] for i in ids) == text.encode("utf-8")


def test_text_spelling_a_byte_token_is_never_merged_into_it(tokenizer):
    """A corpus full of "<0x41>" teaches BPE to merge those characters into the byte token's string; that
    merge would make the text decode as "A", so it is not kept."""
    corpus = ["<0x41> (<0x41>) x<0x41>y\n<0x41>"] * 100
    student = train_student_tokenizer(corpus, vocab_size=400, like=tokenizer)
    for text in [corpus[0], "<0x41>", "x<0x41>y"]:
        ids = student(text, add_special_tokens=False)["input_ids"]
        assert not set(student.convert_ids_to_tokens(ids)) & set(BYTE_FALLBACK_TOKENS)
        assert student.decode(ids) == text


def test_the_metaspace_character_itself_reads_back_as_a_space(students):
    """The one documented exception, sentencepiece-like family only."""
    text = f"a{METASPACE}b"
    sp, bl = students["sentencepiece"], students["byte_level"]
    assert sp.decode(sp(text, add_special_tokens=False)["input_ids"]) == "a b"
    assert bl.decode(bl(text, add_special_tokens=False)["input_ids"]) == text


def test_the_families_differ_as_asked(students, tokenizer):
    sp, bl = students["sentencepiece"], students["byte_level"]
    assert "ByteLevel" in decoder_kinds(tokenizer)
    assert "ByteLevel" not in decoder_kinds(sp) and {"ByteFallback", "Replace"} <= decoder_kinds(sp)
    assert "ByteLevel" in decoder_kinds(bl)
    vocab = sp.get_vocab()
    assert any(t.startswith(METASPACE) and len(t) > 1 for t in vocab)
    # the 256 byte-fallback tokens are ordinary vocabulary, not added/special tokens
    assert all(t in vocab for t in BYTE_FALLBACK_TOKENS)
    added = {str(t.content) for t in sp.added_tokens_decoder.values()}
    assert not added & set(BYTE_FALLBACK_TOKENS) and not set(sp.all_special_tokens) & set(
        BYTE_FALLBACK_TOKENS
    )
    # a character never seen in training falls back to its UTF-8 bytes
    pieces = sp.convert_ids_to_tokens(sp("𝔘", add_special_tokens=False)["input_ids"])
    assert pieces == [f"<0x{b:02X}>" for b in "𝔘".encode()]
    # the byte-level one spells every single byte
    assert {b for b in token_bytes(bl) if b is not None and len(b) == 1} == {bytes([i]) for i in range(256)}
    for student in (sp, bl):
        assert tokenizer_difference(tokenizer, student) is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_size_and_determinism(students, tokenizer, family):
    student = students[family]
    assert len(student) == 1024  # pydoc's text is large enough to fill the vocabulary
    again = train_student_tokenizer(TEXTS, vocab_size=1024, like=tokenizer, byte_level=family == "byte_level")
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(student)


def test_too_small_a_vocabulary_is_refused(tokenizer):
    with pytest.raises(ValueError, match="vocab_size=200 leaves no room"):
        train_student_tokenizer(TEXTS[:3], vocab_size=200, like=tokenizer)


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens_and_chat_template_carry_over_by_text(students, tokenizer, rows, family):
    student = students[family]
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(student, name) == getattr(tokenizer, name)
    assert student.eos_token_id is not None and student.pad_token_id is not None
    assert set(special_texts(tokenizer)) <= set(student.all_special_tokens)
    for text in special_texts(tokenizer):
        assert student.convert_ids_to_tokens(student(text, add_special_tokens=False)["input_ids"]) == [text]
    for row in rows[:4]:
        messages = row["messages"] or [{"role": "user", "content": row["prompt"]}]
        rendered = student.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert rendered == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        tokens = student.convert_ids_to_tokens(student(rendered, add_special_tokens=False)["input_ids"])
        assert tokens.count("<|im_start|>") == len(messages) + 1  # one per turn and the generation prompt
        assert tokens.count("<|im_end|>") == len(messages)


def _like_adding_bos(tokenizer_dir):
    """The test tokenizer, made to put a bos before every text (as Llama's does) and given an added token."""
    like = load_tokenizer(tokenizer_dir)
    like.bos_token = "<|im_start|>"
    like.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", pair="<|im_start|> $A <|im_start|> $B", special_tokens=[("<|im_start|>", 1)]
    )
    like.add_tokens(["<think>"])  # added, not special: some chat templates use such tokens
    return like


@pytest.mark.parametrize("family", FAMILIES)
def test_the_special_tokens_the_teacher_adds_around_a_text_are_added_too(tokenizer_dir, family):
    like = _like_adding_bos(tokenizer_dir)
    assert like.convert_ids_to_tokens(like("hi")["input_ids"])[0] == "<|im_start|>"
    student = train_student_tokenizer(
        TEXTS[:40], vocab_size=700, like=like, byte_level=family == "byte_level"
    )
    ids = student("hi there", add_special_tokens=True)["input_ids"]
    assert ids == [
        student.convert_tokens_to_ids("<|im_start|>"),
        *student("hi there", add_special_tokens=False)["input_ids"],
    ]
    # the plain added token stays one token, and is not special
    ids = student("a <think> b", add_special_tokens=False)["input_ids"]
    assert "<think>" in student.convert_ids_to_tokens(ids) and "<think>" not in student.all_special_tokens
    assert student.decode(ids, skip_special_tokens=True) == "a <think> b"


@pytest.mark.parametrize("family", FAMILIES)
def test_offsets_give_byte_spans_that_tile_the_text(students, family):
    """In text order, no gap, the whole text, each span whole characters. Pieces of one character share its
    span (byte fallback, byte-level BPE), so consecutive spans may overlap, always on whole characters."""
    student = students[family]
    for text in ROUND_TRIPS[1:9]:
        ids, spans = token_byte_spans(student, text)
        assert ids == student(text, add_special_tokens=False)["input_ids"]
        boundaries = {len(text[:k].encode("utf-8")) for k in range(len(text) + 1)}
        assert spans[0][0] == 0 and max(end for _, end in spans) == len(text.encode("utf-8"))
        covered = 0
        for k, (start, end) in enumerate(spans):
            assert start in boundaries and end in boundaries and start < end, (text, k, start, end)
            assert start >= spans[k - 1][0] if k else True, (text, k)  # in order
            assert start <= covered, (text, k, "gap before this token")
            covered = max(covered, end)
        if family == "sentencepiece":  # tokens never straddle characters: the spans tile exactly
            for a, b in zip(spans, spans[1:], strict=False):
                assert b[0] == a[1] or b == a, (text, a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_reload_keeps_everything(students, tmp_path, family):
    student = students[family]
    student.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(
        student
    )  # vocab, merges, specials, template
    assert loaded.special_tokens_map == student.special_tokens_map
    assert loaded.all_special_tokens == student.all_special_tokens
    for text in [*ROUND_TRIPS, *PROBES]:
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert ids == student(text, add_special_tokens=False)["input_ids"]
        assert loaded.decode(ids) == text.replace(METASPACE, " ")
    assert (
        json.loads((tmp_path / "tokenizer_config.json").read_text())["clean_up_tokenization_spaces"] is False
    )
