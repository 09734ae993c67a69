"""A student tokenizer of another family than the teacher's, trained here on the recipe's own text.

Cross-tokenizer distillation (issue 12) needs a student whose vocabulary is not the teacher's. Training a
BPE on the answers the student will learn gives one fitted to them; its embeddings start from the teacher's
(`kdistill.lm.transplant`). By default it is deliberately of the *other* family than a byte-level (GPT-2
style) teacher: sentencepiece-like, a space written "▁" (Metaspace) and any character the vocabulary lacks
spelled by the 256 byte-fallback tokens "<0x00>".."<0xFF>", so every text encodes and decodes back.

What the teacher's tokenizer (`like`) decides about *text*, the student keeps: its special and added tokens
by their text (eos, bos, pad, unk, "<|im_start|>", "<|im_end|>", ...), the special tokens it adds around an
encoded text (a bos, say), and its chat template, so `apply_chat_template` renders the very same string.
The ids are new.

Decoding reproduces the text: `decode(encode(text)) == text` for every text (no normaliser, and no "▁"
prefix is prepended to the first word, so none is stripped on decode), with one exception in the
sentencepiece-like family: the character "▁" (U+2581) itself is read back as a space, as in every Metaspace
tokenizer. Special tokens written in the text encode as those tokens (as with the teacher) and are dropped
by `decode(..., skip_special_tokens=True)`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = ["BYTE_FALLBACK_TOKENS", "METASPACE", "carried_added_tokens", "train_student_tokenizer"]

METASPACE = "▁"  # U+2581, the sentencepiece stand-in for a space
BYTE_FALLBACK_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
_NAMED = ("bos_token", "eos_token", "unk_token", "pad_token")


def carried_added_tokens(like: PreTrainedTokenizerBase) -> tuple[list[str], list[str]]:
    """(special, plain): the texts of `like`'s added tokens that a student keeps, in `like`'s id order.

    Special: every added token marked special plus the named ones (bos, eos, unk, pad); plain: added tokens
    not marked special (e.g. "<think>" in some chat templates), which still encode as one token.
    """
    special, plain = [], []
    for _, token in sorted(like.added_tokens_decoder.items()):
        (special if token.special else plain).append(str(token.content))
    for name in _NAMED:
        text = getattr(like, name, None)
        if text is not None and str(text) not in special:
            special.append(str(text))
    return special, [t for t in plain if t not in special]


def train_student_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int,
    like: PreTrainedTokenizerBase,
    byte_level: bool = False,
) -> PreTrainedTokenizerFast:
    """A BPE of at most `vocab_size` tokens (special and byte tokens included) trained on `texts`.

    byte_level=False: sentencepiece-like (Metaspace "▁" pre-tokenizer, 256 "<0xNN>" byte-fallback tokens as
    ordinary vocabulary entries right after the special tokens); byte_level=True: a byte-level BPE (GPT-2
    alphabet, no prefix space). Training is deterministic: the same texts give the same tokenizer.
    Offsets (`return_offsets_mapping=True`) are character spans that cover the text without gaps; the byte
    pieces of one character all get that character's span.
    """
    special, plain = carried_added_tokens(like)
    reserved = len(special) + len(plain) + 256  # and the 256 byte tokens (or byte-level alphabet)
    if vocab_size <= reserved:
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room for merges: {len(special)} special + {len(plain)} added "
            f"tokens of the teacher's tokenizer and 256 byte tokens need {reserved}; ask for more"
        )
    backend = Tokenizer(models.BPE(byte_fallback=not byte_level))
    if byte_level:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - len(plain),
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        # prepend_scheme="never": no "▁" is invented before the first word, so decoding strips none and
        # leading spaces survive; the first word of a text is then spelled without "▁" (as after a newline).
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="never")
        backend.decoder = decoders.Sequence(
            [decoders.Replace(METASPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - len(plain),
            special_tokens=[*special, *BYTE_FALLBACK_TOKENS],  # reserves their ids; made ordinary below
            show_progress=False,
        )
    backend.train_from_iterator(texts, trainer=trainer)
    if not byte_level:
        backend = _byte_tokens_as_vocabulary(backend)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    backend.post_processor = _added_special_tokens_like(like, backend)
    student = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **{name: str(getattr(like, name)) for name in _NAMED if getattr(like, name, None) is not None},
        additional_special_tokens=[t for t in special if t not in _named_texts(like)],
        model_max_length=like.model_max_length,
        padding_side=like.padding_side,
        truncation_side=like.truncation_side,
        clean_up_tokenization_spaces=False,  # True would rewrite " ." as "." on decode
    )
    student.chat_template = like.chat_template
    return student


def _named_texts(like: PreTrainedTokenizerBase) -> set[str]:
    return {str(getattr(like, name)) for name in _NAMED if getattr(like, name, None) is not None}


def _byte_tokens_as_vocabulary(backend: Tokenizer) -> Tokenizer:
    """The trained tokenizer with its "<0xNN>" tokens as plain vocabulary, reachable only by byte fallback.

    The trainer only takes them as special tokens (to give them ids); left so, the literal text "<0x41>"
    would encode as the byte "A", and `skip_special_tokens` would drop every fallback byte. A merge that
    happened to spell "<0x41>" from text is dropped for the same reason (the tokens after it in that merge
    chain stay in the vocabulary, unreachable).
    """
    spec = json.loads(backend.to_str())
    byte_tokens = set(BYTE_FALLBACK_TOKENS)
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in byte_tokens]
    model = spec["model"]
    # merges are ["a", "b"] pairs in tokenizers >= 0.20, "a b" strings before
    model["merges"] = [
        m for m in model["merges"] if "".join(m.split(" ", 1) if isinstance(m, str) else m) not in byte_tokens
    ]
    return Tokenizer.from_str(json.dumps(spec))


def _added_special_tokens_like(
    like: PreTrainedTokenizerBase, backend: Tokenizer
) -> processors.TemplateProcessing | None:
    """A post-processor adding the special tokens (by text) that `like` adds around a text, e.g. a bos."""
    probe = "Hello world"
    plain = list(like(probe, add_special_tokens=False)["input_ids"])
    full = list(like(probe, add_special_tokens=True)["input_ids"])
    starts = [k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain]
    if not starts:
        raise ValueError(
            f"cannot tell which special tokens the teacher's tokenizer adds: {full} does not contain {plain}"
        )
    before = like.convert_ids_to_tokens(full[: starts[0]])
    after = like.convert_ids_to_tokens(full[starts[0] + len(plain) :])
    if not before and not after:
        return None
    missing = [t for t in (*before, *after) if backend.token_to_id(t) is None]
    if missing:
        raise ValueError(f"the teacher's tokenizer adds {missing} around a text, which the student lacks")
    single = [*before, "$A:0", *after]
    pair = [*single, *[f"{t}:1" for t in before], "$B:1", *[f"{t}:1" for t in after]]
    return processors.TemplateProcessing(
        single=single,
        pair=pair,
        special_tokens=[(t, backend.token_to_id(t)) for t in dict.fromkeys([*before, *after])],
    )
