"""Give a model a new vocabulary whose embeddings start from the old one's, matched by bytes.

A student that keeps the teacher's layers but tokenizes with its own vocabulary (issue 12) needs an input
embedding and an output head of the new size. A new token is spelled by the bytes it stands for; its row
starts as the mean of the old rows of the old tokens that spell the same bytes (Gee et al. 2022, "Fast
Vocabulary Transfer"), so a token both vocabularies share keeps its row exactly and a longer or shorter
one starts near the pieces it is made of. Special tokens take the old special token of the same text,
or the mean of all old rows when the old vocabulary has none (a neutral start).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdistill.lm.student_tokenizer import METASPACE
from kdistill.lm.vocab_map import byte_level_alphabet, decoder_kinds, token_bytes

__all__ = ["embedding_sources", "mean_rows", "spell_in_old_vocabulary", "transplant_vocabulary"]


def spell_in_old_vocabulary(
    old_tokenizer: PreTrainedTokenizerBase, old_bytes: Sequence[bytes | None]
) -> Callable[[bytes], list[int] | None]:
    """A function bytes -> the old ids whose bytes concatenate to exactly those bytes (None if none do).

    In order of preference: (1) the old token with exactly these bytes; (2) what the old tokenizer's own
    model (BPE merges, byte fallback) makes of them, given in its vocabulary's spelling: for byte-level BPE
    each byte as its stand-in character, which is exact for any bytes, even a part of a UTF-8 character;
    for sentencepiece-like vocabularies the UTF-8 text with spaces as "▁". The pre-tokenizer and
    normaliser are bypassed on purpose: they would split or rewrite the string, and the new token is one
    piece. (3) If (2) does not spell the bytes back (invalid UTF-8 for a sentencepiece vocabulary, an
    unknown character without byte fallback), the fewest old tokens that do, by dynamic programming.
    """
    by_bytes: dict[bytes, int] = {}
    for index, value in enumerate(old_bytes):
        if value and value not in by_bytes:
            by_bytes[value] = index
    longest = max(map(len, by_bytes), default=0)
    model = old_tokenizer.backend_tokenizer.model
    alphabet = (
        {b: ch for ch, b in byte_level_alphabet().items()}
        if "ByteLevel" in decoder_kinds(old_tokenizer)
        else None
    )

    def spells(ids: list[int], target: bytes) -> bool:
        pieces = [old_bytes[i] if 0 <= i < len(old_bytes) else None for i in ids]
        return all(p is not None for p in pieces) and b"".join(pieces) == target  # type: ignore[arg-type]

    def spell(target: bytes) -> list[int] | None:
        if target in by_bytes:
            return [by_bytes[target]]
        if alphabet is not None:
            surface = "".join(alphabet[b] for b in target)
        else:
            try:
                surface = target.decode("utf-8").replace(" ", METASPACE)
            except UnicodeDecodeError:
                surface = None
        if surface is not None:
            ids = [token.id for token in model.tokenize(surface)]
            if spells(ids, target):
                return ids
        return _fewest_pieces(target, by_bytes, longest)

    return spell


def _fewest_pieces(target: bytes, by_bytes: dict[bytes, int], longest: int) -> list[int] | None:
    """The shortest list of vocabulary ids whose bytes concatenate to `target`, or None."""
    best: list[list[int] | None] = [[]] + [None] * len(target)  # best[k]: spelling of target[:k]
    for end in range(1, len(target) + 1):
        for start in range(max(0, end - longest), end):
            head, piece = best[start], by_bytes.get(target[start:end])
            if head is not None and piece is not None:
                if best[end] is None or len(head) + 1 < len(best[end]):  # type: ignore[arg-type]
                    best[end] = [*head, piece]
    return best[-1]


def embedding_sources(
    old_tokenizer: PreTrainedTokenizerBase, new_tokenizer: PreTrainedTokenizerBase
) -> list[tuple[int, ...]]:
    """For every new id (len(new_tokenizer) of them), the old ids whose rows average into its row.

    A new token with bytes (see `vocab_map.token_bytes`) gets `spell_in_old_vocabulary`'s ids; a special
    token (or one without bytes) the old token of the same text; () when neither exists: the mean of all.
    """
    old_bytes, new_bytes = token_bytes(old_tokenizer), token_bytes(new_tokenizer)
    old_vocab = old_tokenizer.get_vocab()
    spell = spell_in_old_vocabulary(old_tokenizer, old_bytes)
    sources: list[tuple[int, ...] | None] = [None] * len(new_tokenizer)
    for text, index in new_tokenizer.get_vocab().items():
        if index >= len(sources):
            raise ValueError(f"new tokenizer: token {text!r} has id {index} >= len(tokenizer) {len(sources)}")
        value = new_bytes[index]
        ids = spell(value) if value else None
        if ids is None:
            ids = [old_vocab[text]] if text in old_vocab else []
        sources[index] = tuple(ids)
    gaps = [i for i, s in enumerate(sources) if s is None]
    if gaps:
        raise ValueError(f"new tokenizer: ids {gaps[:5]} have no token (ids must run 0..len-1)")
    return sources  # type: ignore[return-value]


def mean_rows(old: Tensor, sources: Sequence[Sequence[int]], *, num_old: int | None = None) -> Tensor:
    """(len(sources), *old.shape[1:]) in old's dtype: row j = mean of old[sources[j]], or of old[:num_old]
    (all rows by default) where sources[j] is empty. Sums are taken in float32 (float64 for float64), so a
    row with one source is that old row bit for bit."""
    work = old.detach().to(torch.float64 if old.dtype == torch.float64 else torch.float32)
    rows = torch.tensor(
        [j for j, ids in enumerate(sources) for _ in ids], dtype=torch.long, device=old.device
    )
    cols = torch.tensor([i for ids in sources for i in ids], dtype=torch.long, device=old.device)
    counts = torch.tensor([len(ids) for ids in sources], dtype=work.dtype, device=old.device)
    out = torch.zeros((len(sources), *old.shape[1:]), dtype=work.dtype, device=old.device)
    out.index_add_(0, rows, work[cols])  # (n_pieces, ...) summed into their new rows
    out /= counts.clamp_min(1).view(-1, *[1] * (old.dim() - 1))
    everything = counts == 0
    if everything.any():
        out[everything] = work[:num_old].mean(dim=0)
    return out.to(old.dtype)


def transplant_vocabulary(
    model: PreTrainedModel, old_tokenizer: PreTrainedTokenizerBase, new_tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    """`model`, changed in place and returned, with input embeddings and output head for `new_tokenizer`.

    Rows come from `embedding_sources` (the head's rows from the old head, the embedding's from the old
    embedding; a head bias the same way). A tied head stays tied to the new embedding. config.vocab_size
    and the pad/bos/eos ids of the config and generation config become the new tokenizer's.
    """
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    text_config = model.config.get_text_config()
    tied = head is not None and head.weight is embedding.weight
    if head is not None and tied != bool(getattr(text_config, "tie_word_embeddings", False)):
        raise ValueError(
            f"config.tie_word_embeddings={getattr(text_config, 'tie_word_embeddings', None)} but the output "
            f"head {'shares' if tied else 'does not share'} the input embedding's tensor; a saved copy would "
            "load differently, so fix one of them first"
        )
    sources = embedding_sources(old_tokenizer, new_tokenizer)
    num_old = min(len(old_tokenizer), embedding.weight.shape[0])  # rows past the tokenizer are padding
    size = len(sources)

    def replaced(param: Tensor) -> nn.Parameter:
        return nn.Parameter(mean_rows(param, sources, num_old=num_old), requires_grad=param.requires_grad)

    embedding.weight = replaced(embedding.weight)
    embedding.num_embeddings = size
    if getattr(embedding, "padding_idx", None) is not None:  # transformers builds it from config.pad_token_id
        embedding.padding_idx = new_tokenizer.pad_token_id
    if head is not None:
        head.weight = embedding.weight if tied else replaced(head.weight)
        if getattr(head, "bias", None) is not None:
            head.bias = nn.Parameter(
                mean_rows(head.bias[:, None], sources, num_old=num_old)[:, 0],
                requires_grad=head.bias.requires_grad,
            )
        head.out_features = size

    for config in {id(c): c for c in (model.config, text_config)}.values():
        config.vocab_size = size
        _set_special_ids(config, old_tokenizer, new_tokenizer)
    if getattr(model, "generation_config", None) is not None:
        _set_special_ids(model.generation_config, old_tokenizer, new_tokenizer)
    for module in {id(m): m for m in (model, model.base_model)}.values():
        if isinstance(getattr(module, "vocab_size", None), int):
            module.vocab_size = size
    return model


def _set_special_ids(config, old_tokenizer, new_tokenizer) -> None:
    """pad/bos/eos ids -> the new tokenizer's; a list of eos ids (several stop tokens) keeps every old stop
    token the new vocabulary has, by text, after the new tokenizer's eos."""
    old_eos = getattr(config, "eos_token_id", None)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config, name, getattr(new_tokenizer, name))
    if isinstance(old_eos, list) and new_tokenizer.eos_token_id is not None:
        new_vocab = new_tokenizer.get_vocab()
        texts = old_tokenizer.convert_ids_to_tokens(old_eos)
        stops = [new_tokenizer.eos_token_id, *(new_vocab[t] for t in texts if t in new_vocab)]
        config.eos_token_id = list(dict.fromkeys(stops))
