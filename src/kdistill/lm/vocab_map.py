"""Which bytes each vocabulary entry stands for, and a teacher -> student vocabulary map by those bytes.

Tokenizers spell the same bytes differently: byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM) writes every
byte as a printable character (a space is "Ġ"), sentencepiece-style vocabularies write a space as "▁" and
fall back to "<0xNN>" tokens for single bytes. Comparing the decoded bytes, not the strings, lets a
teacher's top-k candidate find the student token that means the same text.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from torch import Tensor

BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character of each byte, inverted: character -> byte value."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:  # unprintable bytes map to code points from 256 on, in byte order
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def decoder_kinds(tokenizer: Any) -> set[str]:
    """The `type`s of the fast tokenizer's decoder (nested sequences flattened), e.g. {"ByteLevel"}."""
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    kinds: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "type" in node:
                kinds.add(node["type"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(decoder)
    return kinds


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """For every id of a fast tokenizer's vocabulary, the bytes it stands for; None for special tokens."""
    vocab: dict[str, int] = tokenizer.get_vocab()
    special = set(tokenizer.all_special_tokens)
    byte_level = "ByteLevel" in decoder_kinds(tokenizer)
    alphabet = byte_level_alphabet() if byte_level else {}
    out: list[bytes | None] = [None] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        if token in special:
            continue
        if byte_level:
            if all(ch in alphabet for ch in token):
                out[index] = bytes(alphabet[ch] for ch in token)
        elif match := BYTE_FALLBACK.match(token):
            out[index] = bytes([int(match.group(1), 16)])
        else:
            out[index] = token.replace("▁", " ").encode("utf-8")
    return out


def map_vocabulary(teacher: list[bytes | None], student: list[bytes | None]) -> Tensor:
    """(V_teacher,) int64: for each teacher id the student id with the same bytes (the lowest such id),
    -1 where the student has no token for those bytes (or the teacher id is special)."""
    by_bytes: dict[bytes, int] = {}
    for index, value in enumerate(student):
        if value is not None and value not in by_bytes:
            by_bytes[value] = index
    return torch.tensor([by_bytes.get(v, -1) if v is not None else -1 for v in teacher], dtype=torch.int64)
