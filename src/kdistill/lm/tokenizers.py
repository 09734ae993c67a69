"""Is this the same tokenizer? A fingerprint for content keys, and the check teacher == student.

Distilling token-level signals (logits, top-k log-probabilities) needs the teacher's token ids to mean the
same as the student's: position t and id i must name the same piece of text for both. The token-id path
therefore requires teacher and student to share a tokenizer and checks it up front; a student with another
tokenizer takes the cross-tokenizer path (a signal named by bytes, `kdistill.lm.byte_signal`), which is
asked for explicitly.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from transformers import PreTrainedTokenizerBase

# Strings whose encodings must agree: words, code, whitespace runs, accents, CJK and an emoji (multi-byte
# UTF-8 that byte-level BPEs split), and text next to the usual chat markers.
PROBES = (
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x ** 2  # square\n",
    "   leading spaces,\ttabs and\n\nblank lines",
    "naïve café — Zürich, 東京, 🙂",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>",
)

_SPECIAL = ("bos", "eos", "pad", "unk")

UNSUPPORTED = (
    "token ids do not carry over between different tokenizers: for a student with another tokenizer, "
    "capture with `kdistill capture --cross-tokenizer` (a signal named by bytes) and set "
    "distill.cross_tokenizer (e.g. {loss: hybrid}) in the run config"
)


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    return {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id", None) for name in _SPECIAL}


def _probe_ids(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    return [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in PROBES]


def _backend_json(tokenizer: PreTrainedTokenizerBase) -> Any:
    """A fast tokenizer's full definition (model, merges, normalizer, ...), minus runtime settings."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    for runtime in ("truncation", "padding"):  # set by callers for one batch, not part of the tokenizer
        spec.pop(runtime, None)
    return spec


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """16 hex of sha256 over what decides token ids: vocab, special tokens, chat template, encodings.

    Covers the token -> id map, the special tokens and their ids, the chat template (it decides how
    prompts are rendered, hence the ids), a fast tokenizer's full definition (merges, normalizer,
    pre-tokenizer) and the encodings of a few probe strings. Two loads of the same files give the same
    fingerprint; any change that can change an id changes it.
    """
    data = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "special_ids": special_token_ids(tokenizer),
        "chat_template": tokenizer.chat_template,
        "backend": _backend_json(tokenizer),
        "probes": _probe_ids(tokenizer),
    }
    blob = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _vocab_difference(a: dict[str, int], b: dict[str, int], names: tuple[str, str]) -> str | None:
    if a == b:
        return None
    parts = []
    if len(a) != len(b):
        parts.append(f"{names[0]} has {len(a):,} tokens, {names[1]} {len(b):,}")
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    moved = sorted(t for t in set(a) & set(b) if a[t] != b[t])
    if only_a:
        parts.append(f"{len(only_a):,} tokens only in the {names[0]}'s (e.g. {only_a[:3]})")
    if only_b:
        parts.append(f"{len(only_b):,} tokens only in the {names[1]}'s (e.g. {only_b[:3]})")
    if moved:
        t = moved[0]
        parts.append(f"{len(moved):,} tokens with other ids (e.g. {t!r}: {a[t]} vs {b[t]})")
    return "vocabularies differ: " + "; ".join(parts)


def tokenizer_difference(
    teacher_tok: PreTrainedTokenizerBase,
    student_tok: PreTrainedTokenizerBase,
    *,
    names: tuple[str, str] = ("teacher", "student"),
) -> str | None:
    """What differs between two tokenizers (vocab, special token ids, probe encodings), or None."""
    diff = _vocab_difference(teacher_tok.get_vocab(), student_tok.get_vocab(), names)
    if diff:
        return diff
    a, b = special_token_ids(teacher_tok), special_token_ids(student_tok)
    for field in a:
        if a[field] != b[field]:
            return f"special tokens differ: {field} is {a[field]} for the {names[0]}, {b[field]} for the {names[1]}"
    for probe, ids_a, ids_b in zip(PROBES, _probe_ids(teacher_tok), _probe_ids(student_tok), strict=True):
        if ids_a != ids_b:
            return (
                f"the same vocabulary encodes text differently: {probe!r} -> {ids_a[:8]}... "
                f"({names[0]}) vs {ids_b[:8]}... ({names[1]})"
            )
    return None


def assert_same_tokenizer(
    teacher_tok: PreTrainedTokenizerBase,
    student_tok: PreTrainedTokenizerBase,
    *,
    names: tuple[str, str] = ("teacher", "student"),
) -> None:
    """Raise ValueError naming the first difference (vocab, special token ids, probe encodings).

    The chat template is not compared: each side renders its own prompts, and a different rendering
    shows up as a length mismatch when teacher signals are joined to the student's examples by id.
    """
    diff = tokenizer_difference(teacher_tok, student_tok, names=names)
    if diff is not None:
        raise ValueError(f"{names[0]} and {names[1]} tokenizers differ: {diff}. {UNSUPPORTED}")


__all__ = [
    "PROBES",
    "UNSUPPORTED",
    "assert_same_tokenizer",
    "special_token_ids",
    "tokenizer_difference",
    "tokenizer_fingerprint",
]
