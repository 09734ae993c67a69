"""Initialise a student by dropping a teacher's decoder layers, chosen by block influence (ShortGPT).

Block influence of layer i (Men et al. 2024, https://arxiv.org/abs/2403.03853) is the mean over real tokens
of 1 - cos(h_i, h_{i+1}), the hidden state entering and leaving the layer: a layer that barely turns the
residual stream is cheap to remove. Measured on SmolLM2-135M before any training: dropping its 10
lowest-influence layers of 30 gave perplexity 92, dropping every third layer 16,161. Works for Llama-family
models (`model.model.layers`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdistill.evaluation.metrics import count_parameters
from kdistill.lm.models import rebuild
from kdistill.losses.numerics import compute_dtype

__all__ = [
    "block_influence",
    "calibration_batches",
    "choose_layers",
    "decoder_layers",
    "prune_layers",
    "pruning_report",
]


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder layer list of a Llama-family causal LM and its module path ("model.layers")."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"{type(model).__name__} has no `model.layers` list; only Llama-family models are supported"
        )
    return "model.layers", layers


def calibration_batches(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, max_length: int = 256, batch_size: int = 4
) -> list[dict[str, Tensor]]:
    """Right-padded {"input_ids", "attention_mask"} batches of `texts`, each cut to its first max_length tokens."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = []
    for start in range(0, len(texts), batch_size):
        ids = [
            tokenizer(t, truncation=True, max_length=max_length)["input_ids"]
            for t in texts[start : start + batch_size]
        ]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, : len(x)] = 1
        batches.append({"input_ids": input_ids, "attention_mask": mask})
    return batches


@torch.inference_mode()
def block_influence(
    model: PreTrainedModel,
    tokenizer_or_batches: PreTrainedTokenizerBase | Iterable[Mapping[str, Tensor]],
    texts: Sequence[str] | None = None,
    *,
    max_length: int = 256,
    batch_size: int = 4,
) -> list[float]:
    """Per decoder layer, the mean over real (unpadded) tokens of 1 - cos(hidden in, hidden out).

    Give a tokenizer and `texts`, or ready batches with input_ids and attention_mask. Hidden states come
    from `output_hidden_states=True`; as in ShortGPT's measurements, transformers returns the last
    layer's output after the final norm, so the last layer's score includes that norm (on SmolLM2 this
    moves layer 29 from 0.37 to 0.89, not the ranking).
    """
    if isinstance(tokenizer_or_batches, PreTrainedTokenizerBase):
        if not texts:
            raise ValueError("block_influence with a tokenizer needs calibration `texts`")
        batches: Iterable[Mapping[str, Tensor]] = calibration_batches(
            tokenizer_or_batches, texts, max_length=max_length, batch_size=batch_size
        )
    else:
        batches = tokenizer_or_batches
    num_layers = len(decoder_layers(model)[1])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = torch.zeros(num_layers, dtype=torch.float64)
    tokens = 0
    try:
        for batch in batches:
            input_ids = batch["input_ids"].to(device)
            mask = batch.get("attention_mask")
            mask = torch.ones_like(input_ids) if mask is None else mask.to(device)
            out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
            hidden = (
                out.hidden_states
            )  # num_layers + 1 tensors (B, T, H): embeddings, then each layer's output
            dtype = compute_dtype(hidden[0])  # float32 at least: bf16 cosines near 1 lose the difference
            real = mask.bool()  # (B, T)
            for i in range(num_layers):
                cos = F.cosine_similarity(hidden[i].to(dtype), hidden[i + 1].to(dtype), dim=-1)  # (B, T)
                sums[i] += (1.0 - cos)[real].double().sum().cpu()
            tokens += int(real.sum())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("no real tokens in the calibration batches")
    return (sums / tokens).tolist()


def choose_layers(influence: Sequence[float], keep: int, always_keep: Iterable[int] = (0, -1)) -> list[int]:
    """The `keep` layers with the highest influence, `always_keep` among them, in model order.

    Ties go to the earlier layer. Negative indices in `always_keep` count from the end (-1 = last).
    """
    n = len(influence)
    forced = {i % n for i in always_keep if -n <= i < n}
    if len(forced) != len(set(always_keep)):
        raise ValueError(f"always_keep {tuple(always_keep)} has indices outside 0..{n - 1} or duplicates")
    if not len(forced) <= keep <= n:
        raise ValueError(f"keep must be between {len(forced)} (the always-kept layers) and {n}, got {keep}")
    ranked = sorted((i for i in range(n) if i not in forced), key=lambda i: (-influence[i], i))
    return sorted(forced | set(ranked[: keep - len(forced)]))


def prune_layers(model: PreTrainedModel, keep_indices: Iterable[int]) -> PreTrainedModel:
    """A new model with only the decoder layers `keep_indices` (any order, negatives from the end).

    Built fresh from the config (num_hidden_layers and any per-layer `layer_types` cut to match) and
    loaded with copies of the kept tensors, so attention `layer_idx` counts 0.. again (the KV cache is
    indexed by it), nothing is shared with `model`, and a GGUF-loaded teacher gives a saveable student.
    """
    prefix, layers = decoder_layers(model)
    n = len(layers)
    keep = sorted({i % n for i in keep_indices if -n <= i < n})
    given = list(keep_indices)
    if len(keep) != len(given) or not keep:
        raise ValueError(
            f"keep_indices {given} must be distinct layer indices within 0..{n - 1}, at least one"
        )
    new_position = {old: new for new, old in enumerate(keep)}

    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(keep)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list | tuple) and len(layer_types) == n:
        config.layer_types = [layer_types[i] for i in keep]

    state: dict[str, Any] = {}
    for key, tensor in model.state_dict().items():
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1 :].split(".", 1)
            if int(index) in new_position:
                state[f"{prefix}.{new_position[int(index)]}.{rest}"] = tensor
        else:
            state[key] = tensor
    pruned = rebuild(model, config, state)
    for i, layer in enumerate(decoder_layers(pruned)[1]):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and getattr(attn, "layer_idx", i) != i:
            raise AssertionError(
                f"layer {i} kept attention layer_idx {attn.layer_idx}; the KV cache would break"
            )
    return pruned


def pruning_report(
    teacher: nn.Module, student: nn.Module, kept: Sequence[int], influence: Sequence[float] | None = None
) -> dict[str, Any]:
    """What pruning kept and what it saved, as plain data for logs and manifests."""
    n = len(decoder_layers(teacher)[1])
    report: dict[str, Any] = {
        "layers_before": n,
        "layers_after": len(kept),
        "kept": list(kept),
        "removed": [i for i in range(n) if i not in set(kept)],
        "params_before": count_parameters(teacher),
        "params_after": count_parameters(student),
    }
    if influence is not None:
        report["influence"] = [round(float(x), 6) for x in influence]
    return report
