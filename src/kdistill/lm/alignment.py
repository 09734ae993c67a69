"""Aligning two tokenisations of the same text by byte spans, for distillation across tokenizers.

A teacher and a student with different tokenizers cut the same answer text at different places. Their
tokens can only be compared where both cut: the text splits into *chunks* that start and end on a boundary
of both tokenisations, each holding one or more tokens of each side (1:1 where the tokens coincide, 1:n
where one student token covers several teacher tokens, n:1 the reverse, n:m where boundaries interleave).
Offsets are bytes of the UTF-8 text, not characters, so multi-byte characters that a byte-level tokenizer
splits inside a character still get exact spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Span = tuple[int, int]  # [start, end) in bytes of the UTF-8 text


@dataclass(frozen=True)
class Chunk:
    """A stretch of text both tokenisations cover exactly: tokens `student` and `teacher` (index ranges
    into the span lists given to `align_spans`) and their common byte span [start, end)."""

    student: range
    teacher: range
    start: int
    end: int

    @property
    def kind(self) -> str:
        """ "1:1", "1:n" (one student token, several teacher tokens), "n:1", "n:m"; a side with no token
        (the leftover of a text one side covers further) counts as "0"."""
        s = "n" if len(self.student) > 1 else str(len(self.student))
        t = str(len(self.teacher)) if len(self.teacher) <= 1 else ("m" if s == "n" else "n")
        return f"{s}:{t}"


def byte_spans(text: str, char_offsets: Sequence[Span]) -> list[Span]:
    """Character offsets (a fast tokenizer's `offset_mapping`) -> byte offsets of the UTF-8 encoding."""
    byte_at = [0]
    for ch in text:
        byte_at.append(byte_at[-1] + len(ch.encode("utf-8")))
    return [(byte_at[a], byte_at[b]) for a, b in char_offsets]


def token_byte_spans(tokenizer: Any, text: str) -> tuple[list[int], list[Span]]:
    """Token ids of `text` (no special tokens) and each token's byte span, from the fast tokenizer's offsets.

    Byte-level BPE reports character offsets; a token holding part of a multi-byte character gets the
    character's whole span (its neighbour shares it), which `align_spans` merges into one chunk.
    """
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoded["input_ids"]), byte_spans(text, encoded["offset_mapping"])


def align_spans(student: Sequence[Span], teacher: Sequence[Span]) -> list[Chunk]:
    """Chunks of the text where both tokenisations share their first start and last end.

    Two pointers walk the token ends; a chunk closes where a student token and a teacher token end at the
    same byte and neither side's next token starts before that byte (tokens sharing a character's span,
    byte-fallback pieces or a "▁" prefix token, never get split across chunks). Spans must be in text order (each starting at or after the previous one's start); tokens may
    leave gaps (e.g. a tokenizer that keeps a leading space out of a token's offsets), which stay inside the
    chunk they fall in. Whatever is left when one side runs out forms a last chunk, so every token of both
    sides is in exactly one chunk.
    """
    for name, spans in (("student", student), ("teacher", teacher)):
        for k in range(1, len(spans)):
            if spans[k][0] < spans[k - 1][0]:
                raise ValueError(f"{name} spans must be in text order: span {k} {spans[k]} < {spans[k - 1]}")
    chunks: list[Chunk] = []
    i = j = i0 = j0 = 0
    while i < len(student) and j < len(teacher):
        s_end, t_end = student[i][1], teacher[j][1]
        s_cut, t_cut = _can_cut_after(student, i), _can_cut_after(teacher, j)
        if s_end == t_end and s_cut and t_cut:
            chunks.append(_chunk(student, teacher, i0, i + 1, j0, j + 1))
            i, j = i + 1, j + 1
            i0, j0 = i, j
        elif s_end < t_end or (s_end == t_end and not s_cut):
            i += 1
        else:
            j += 1
    if i0 < len(student) or j0 < len(teacher):
        chunks.append(_chunk(student, teacher, i0, len(student), j0, len(teacher)))
    return chunks


def _can_cut_after(spans: Sequence[Span], k: int) -> bool:
    """Whether a chunk may end after token k: not when the next token starts before k's end, as the pieces
    of one character (byte fallback, byte-level BPE) and a sentencepiece "▁" prefix reported with the span
    of the token after it do; those stay in one chunk with their neighbours."""
    return k + 1 == len(spans) or spans[k + 1][0] >= spans[k][1]


def _chunk(student: Sequence[Span], teacher: Sequence[Span], i0: int, i1: int, j0: int, j1: int) -> Chunk:
    covered = [*student[i0:i1], *teacher[j0:j1]]
    return Chunk(range(i0, i1), range(j0, j1), min(a for a, _ in covered), max(b for _, b in covered))
