"""Byte-span alignment of two tokenisations: the four chunk kinds, multi-byte text, two real BPE tokenizers."""

from __future__ import annotations

import pytest
from tests.fixtures.tiny_lm import train_bpe

from kdistill.lm.alignment import align_spans, byte_spans, token_byte_spans


def kinds(chunks):
    return [(c.kind, list(c.student), list(c.teacher), c.start, c.end) for c in chunks]


def test_one_to_one_one_to_many_many_to_one_and_interleaved():
    # text "abcdefgh": student | ab | c | def | gh |   teacher | ab | c | de | f | g | h |   (1:1 1:1 1:n 1:n)
    student = [(0, 2), (2, 3), (3, 6), (6, 8)]
    teacher = [(0, 2), (2, 3), (3, 5), (5, 6), (6, 7), (7, 8)]
    assert kinds(align_spans(student, teacher)) == [
        ("1:1", [0], [0], 0, 2),
        ("1:1", [1], [1], 2, 3),
        ("1:n", [2], [2, 3], 3, 6),
        ("1:n", [3], [4, 5], 6, 8),
    ]
    assert kinds(align_spans(teacher, student))[2] == ("n:1", [2, 3], [2], 3, 6)
    # interleaved: student | abc | de |   teacher | ab | cde |  -> one n:m chunk
    assert kinds(align_spans([(0, 3), (3, 5)], [(0, 2), (2, 5)])) == [("n:m", [0, 1], [0, 1], 0, 5)]


def test_leftovers_form_a_last_chunk_and_every_token_is_in_exactly_one():
    chunks = align_spans([(0, 2), (2, 4), (4, 9)], [(0, 2), (2, 5)])
    assert kinds(chunks) == [("1:1", [0], [0], 0, 2), ("n:1", [1, 2], [1], 2, 9)]
    assert kinds(align_spans([], [(0, 1)])) == [("0:1", [], [0], 0, 1)]
    assert align_spans([], []) == []


def test_spans_out_of_order_are_a_clear_error():
    with pytest.raises(ValueError, match="teacher spans must be in text order: span 1"):
        align_spans([(0, 4)], [(2, 4), (0, 2)])


def test_byte_spans_of_multibyte_characters():
    text = "é日🙂a"  # 2 + 3 + 4 + 1 bytes
    assert byte_spans(text, [(0, 1), (1, 2), (2, 3), (3, 4), (0, 4)]) == [
        (0, 2),
        (2, 5),
        (5, 9),
        (9, 10),
        (0, 10),
    ]


TEXTS = [
    "The for statement iterates over the items of any sequence.",
    "  leading spaces,\ttabs and\nnew lines",
    "café naïve Ünïcödé — 日本語のテキスト 🙂🙂 end",
    "x=1;y=2 # no spaces",
]


@pytest.mark.parametrize("text", TEXTS)
def test_two_real_tokenizers_align_into_ordered_chunks_covering_every_token(text):
    student_tok, teacher_tok = train_bpe(400, byte_level=False), train_bpe(700, byte_level=True)
    _, s_spans = token_byte_spans(student_tok, text)
    t_ids, t_spans = token_byte_spans(teacher_tok, text)
    assert teacher_tok.decode(t_ids) == text  # byte-level: the teacher's tokens are the text
    chunks = align_spans(s_spans, t_spans)
    assert [i for c in chunks for i in c.student] == list(range(len(s_spans)))
    assert [j for c in chunks for j in c.teacher] == list(range(len(t_spans)))
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before.end <= after.start
    for c in chunks[:-1]:  # every chunk but a leftover ends where both sides end
        assert s_spans[c.student[-1]][1] == t_spans[c.teacher[-1]][1] == c.end
        if c.kind == "1:1":
            assert s_spans[c.student[0]] == t_spans[c.teacher[0]]
    assert len({c.kind for c in chunks}) >= 2  # different merges: not everything lines up 1:1


def test_a_prefix_token_and_the_pieces_of_one_character_are_never_split():
    # "café n": sentencepiece-like student  ▁(0,1) c(0,1) a f <0xC3>(3,5) <0xA9>(3,5) ▁(5,6) n(6,7)
    #           byte-level teacher          c(0,1) a f Ã(3,5) ©(3,5) Ġn(5,7)
    student = [(0, 1), (0, 1), (1, 2), (2, 3), (3, 5), (3, 5), (5, 6), (6, 7)]
    teacher = [(0, 1), (1, 2), (2, 3), (3, 5), (3, 5), (5, 7)]
    assert kinds(align_spans(student, teacher)) == [
        ("n:1", [0, 1], [0], 0, 1),
        ("1:1", [2], [1], 1, 2),
        ("1:1", [3], [2], 2, 3),
        ("n:m", [4, 5], [3, 4], 3, 5),
        ("n:1", [6, 7], [5], 5, 7),
    ]
