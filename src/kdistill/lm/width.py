"""Initialise a student by narrowing a teacher: fewer attention heads, MLP channels and hidden channels (Minitron).

Minitron (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation",
https://arxiv.org/abs/2407.14679) ranks every prunable unit by the size of its activations on a small
calibration set, forward passes only, and keeps the largest:

- an MLP channel by the activation entering `down_proj` (act(gate) * up, what the channel writes);
- an attention head by its output before `o_proj` (each head's head_dim channels of attention output);
- a hidden (embedding) channel by the outputs of the RMSNorms that read the residual stream: each layer's
  `input_layernorm` and `post_attention_layernorm` and, unlike Minitron, also the final `norm` (the output
  head reads it, so a channel only the head needs still counts).

Aggregation. One activation a[b, t, c] per sequence b, token t, channel c. Per channel: the mean of |a| over
the real (unmasked) tokens of each sequence, then the L2 norm of those per-sequence means over the calibration
sequences. The paper compares several aggregations over the batch and sequence axes; NVIDIA ModelOpt's
minitron pruning (read for this module, not copied) aggregates as here: mean of |a| over the sequence, L2 over
the batch. Why this pair: the mean over a sequence keeps long texts from outweighing short ones, the L2 over
sequences lets a channel that fires strongly on a few texts stand above one that is faintly on everywhere.
Padding never counts (the attention mask selects the tokens). A head's score is the L2 norm of its head_dim
channel scores (or, with head_score "projected", the norm of its output after its o_proj columns); a hidden
channel's is the sum of its scores at every norm listed above (one ranking, shared by all layers, the
embeddings, the norms and the output head, as the residual stream is one space). Each layer ranks its own
heads and MLP channels; sizes are the same in every layer (one config). On SmolLM2-135M the "output" head
score chose query heads worse than random before training; "projected" did much better (docs/pruning.md,
Measured).

Grouped-query attention. A KV head and the query heads that read it (a group) are pruned together in two
steps: (1) whole groups, by the L2 norm of their query heads' scores, to `num_key_value_heads`; (2) in every
kept group the same number of query heads, its own best, so num_attention_heads / num_key_value_heads is the
same for every group (transformers' attention needs that) and at most the teacher's. Kept units stay in the
teacher's order. head_dim never changes (it is written into the config, so a hidden_size / heads ratio that
differs from it is fine), hence rotary embeddings and Qwen3's per-head q_norm/k_norm copy as they are.

The pruned model is a fresh transformers model of the teacher's class built from a copied config with the
smaller sizes and loaded with copies of the kept slices (`models.rebuild`), so it saves and loads like any
other; with every size unchanged it is the teacher exactly. Narrowing the hidden size changes what RMSNorm
divides by (the RMS of fewer channels), so a pruned model is not the teacher restricted to some channels:
training recovers that. Supported: Llama (SmolLM2), Mistral, Qwen2 (q/k/v biases), Qwen3.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from kdistill.evaluation.metrics import count_parameters
from kdistill.lm.models import rebuild
from kdistill.lm.prune import calibration_batches, decoder_layers

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "WidthImportance",
    "WidthSelection",
    "WidthSizes",
    "apply_width",
    "choose_width",
    "plan_width",
    "prune_width",
    "prune_width_calibrated",
    "width_importance",
    "width_report",
    "width_sizes",
]

# decoders whose parameters this module knows how to slice (the same module names and shapes)
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
HeadScore = Literal["output", "projected"]
HEAD_SCORES: tuple[str, ...] = get_args(HeadScore)


@dataclass(frozen=True)
class WidthSizes:
    """The sizes width pruning targets (head_dim is never changed)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_attention_heads // self.num_key_value_heads


def width_sizes(config: PretrainedConfig) -> WidthSizes:
    """A model config's current sizes; refuses decoders this module cannot slice."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"width pruning supports {', '.join(SUPPORTED_MODEL_TYPES)} decoders, not model_type {model_type!r}"
        )
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return WidthSizes(config.hidden_size, config.intermediate_size, heads, kv, head_dim)


@dataclass
class WidthImportance:
    """Activation-based scores (higher = more important), as described in the module docstring."""

    hidden: Tensor  # (hidden_size,)
    heads: list[Tensor]  # per layer (num_attention_heads,)
    mlp: list[Tensor]  # per layer (intermediate_size,)
    sequences: int
    tokens: int


@dataclass
class WidthSelection:
    """Teacher indices kept, ascending: hidden channels (all layers) and, per layer, heads and MLP channels."""

    hidden: list[int]
    kv_heads: list[list[int]]
    query_heads: list[list[int]]
    mlp: list[list[int]]


class _ChannelStats:
    """Per channel: the sum over sequences of (mean |activation| over the sequence's real tokens)^2."""

    def __init__(self) -> None:
        self.sum_sq: Tensor | None = None

    def add(self, activation: Tensor, mask: Tensor) -> None:
        a = activation.detach().float().abs()  # (B, T, C); float32: bf16 sums lose small channels
        real = mask.to(a.dtype)  # (B, T)
        tokens = real.sum(dim=1)  # (B,)
        per_sequence = (a * real[..., None]).sum(dim=1) / tokens.clamp_min(1)[:, None]  # (B, C)
        squares = per_sequence[tokens > 0].double().pow(2).sum(dim=0).cpu()
        self.sum_sq = squares if self.sum_sq is None else self.sum_sq + squares

    def scores(self) -> Tensor:
        if self.sum_sq is None:
            raise ValueError("no activations were recorded (no calibration batch reached this module)")
        return self.sum_sq.sqrt()


@torch.inference_mode()
def width_importance(
    model: PreTrainedModel,
    tokenizer_or_batches: PreTrainedTokenizerBase | Iterable[Mapping[str, Tensor]],
    texts: Sequence[str] | None = None,
    *,
    max_length: int = 256,
    batch_size: int = 4,
    head_score: HeadScore = "output",
) -> WidthImportance:
    """Scores of every hidden channel, attention head and MLP channel from forward passes on calibration
    texts (a tokenizer and `texts`, or ready batches with input_ids and attention_mask).

    head_score "output" (Minitron): a head's attention output before `o_proj`, per channel, then the L2 norm
    over its head_dim channels. "projected": the norm of what the head adds to the residual stream, its
    output through its own `o_proj` columns, per token (aggregated the same way); it sees the `o_proj`
    weights, which "output" ignores (measured on SmolLM2 in docs/pruning.md).
    """
    if head_score not in HEAD_SCORES:
        raise ValueError(f"head_score must be one of {', '.join(HEAD_SCORES)}, got {head_score!r}")
    if isinstance(tokenizer_or_batches, PreTrainedTokenizerBase):
        if not texts:
            raise ValueError("width_importance with a tokenizer needs calibration `texts`")
        batches: Iterable[Mapping[str, Tensor]] = calibration_batches(
            tokenizer_or_batches, texts, max_length=max_length, batch_size=batch_size
        )
    else:
        batches = tokenizer_or_batches
    sizes = width_sizes(model.config)
    _, layers = decoder_layers(model)
    current: dict[str, Tensor] = {}
    heads = [_ChannelStats() for _ in layers]
    mlp = [_ChannelStats() for _ in layers]
    norms = [_ChannelStats() for _ in range(2 * len(layers) + 1)]

    def input_hook(stats: _ChannelStats):
        return lambda module, args: stats.add(args[0], current["mask"])

    def output_hook(stats: _ChannelStats):
        return lambda module, args, output: stats.add(output, current["mask"])

    def projected_hook(stats: _ChannelStats):
        def hook(module: nn.Linear, args: tuple[Tensor, ...]) -> None:
            per_head = args[0].view(*args[0].shape[:-1], sizes.num_attention_heads, sizes.head_dim)
            weight = module.weight.view(module.weight.shape[0], sizes.num_attention_heads, sizes.head_dim)
            norms = [  # one head at a time: (B, T, hidden) each, never (B, T, heads, hidden)
                (per_head[..., h, :] @ weight[:, h, :].T).float().norm(dim=-1)
                for h in range(sizes.num_attention_heads)
            ]
            stats.add(torch.stack(norms, dim=-1), current["mask"])  # (B, T, heads)

        return hook

    head_hook = projected_hook if head_score == "projected" else input_hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(head_hook(heads[i])))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(input_hook(mlp[i])))
        handles.append(layer.input_layernorm.register_forward_hook(output_hook(norms[2 * i])))
        handles.append(layer.post_attention_layernorm.register_forward_hook(output_hook(norms[2 * i + 1])))
    handles.append(model.model.norm.register_forward_hook(output_hook(norms[-1])))

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sequences = tokens = 0
    try:
        for batch in batches:
            input_ids = batch["input_ids"].to(device)
            mask = batch.get("attention_mask")
            mask = torch.ones_like(input_ids) if mask is None else mask.to(device)
            current["mask"] = mask
            model(input_ids=input_ids, attention_mask=mask, use_cache=False)
            sequences += int((mask.sum(dim=1) > 0).sum())
            tokens += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if tokens == 0:
        raise ValueError("no real tokens in the calibration batches")
    if head_score == "projected":
        head_scores = [s.scores() for s in heads]
    else:
        head_scores = [
            torch.linalg.vector_norm(s.scores().view(sizes.num_attention_heads, sizes.head_dim), dim=1)
            for s in heads
        ]
    hidden = torch.stack([s.scores() for s in norms]).sum(dim=0)
    return WidthImportance(hidden, head_scores, [s.scores() for s in mlp], sequences, tokens)


def _top(scores: Tensor, keep: int) -> list[int]:
    """Indices of the `keep` highest scores, ties to the earlier index, in ascending order."""
    order = torch.sort(scores.detach().cpu().double(), descending=True, stable=True).indices
    return sorted(order[:keep].tolist())


def _targets(
    sizes: WidthSizes,
    hidden_size: int | None,
    intermediate_size: int | None,
    num_attention_heads: int | None,
    num_key_value_heads: int | None,
) -> WidthSizes:
    """The sizes asked for, defaults filled in (KV heads: the teacher's; query heads: the teacher's group size
    times the KV heads), checked against the teacher and the grouped-query rule."""
    kv = num_key_value_heads if num_key_value_heads is not None else sizes.num_key_value_heads
    heads = num_attention_heads if num_attention_heads is not None else kv * sizes.group_size
    target = WidthSizes(
        hidden_size if hidden_size is not None else sizes.hidden_size,
        intermediate_size if intermediate_size is not None else sizes.intermediate_size,
        heads,
        kv,
        sizes.head_dim,
    )
    for name in ("hidden_size", "intermediate_size", "num_key_value_heads", "num_attention_heads"):
        value, teacher = getattr(target, name), getattr(sizes, name)
        if not 1 <= value <= teacher:
            raise ValueError(f"{name} must be between 1 and the model's {teacher}, got {value}")
    if heads % kv:
        raise ValueError(
            f"num_attention_heads {heads} must be a multiple of num_key_value_heads {kv}: every kept KV head "
            "keeps the same number of its query heads"
        )
    if heads // kv > sizes.group_size:
        raise ValueError(
            f"num_attention_heads {heads} over num_key_value_heads {kv} would give {heads // kv} query heads per "
            f"KV head, but the model's groups have {sizes.group_size}: keep more KV heads"
        )
    return target


def choose_width(
    model: PreTrainedModel,
    importance: WidthImportance,
    *,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
) -> WidthSelection:
    """The most important units for the target sizes (None: the model's own; KV heads default to the model's,
    query heads to the model's group size times the KV heads)."""
    sizes = width_sizes(model.config)
    target = _targets(sizes, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads)
    n = len(decoder_layers(model)[1])
    if len(importance.heads) != n or len(importance.mlp) != n:
        raise ValueError(f"importance covers {len(importance.heads)} layers, the model has {n}")
    kv_heads, query_heads = [], []
    for scores in importance.heads:
        groups = scores.view(sizes.num_key_value_heads, sizes.group_size)  # query head q reads KV head q // g
        kept_groups = _top(torch.linalg.vector_norm(groups, dim=1), target.num_key_value_heads)
        kv_heads.append(kept_groups)
        query_heads.append(
            [g * sizes.group_size + j for g in kept_groups for j in _top(groups[g], target.group_size)]
        )
    return WidthSelection(
        hidden=_top(importance.hidden, target.hidden_size),
        kv_heads=kv_heads,
        query_heads=query_heads,
        mlp=[_top(scores, target.intermediate_size) for scores in importance.mlp],
    )


def _full_selection(model: PreTrainedModel) -> WidthSelection:
    sizes, n = width_sizes(model.config), len(decoder_layers(model)[1])
    return WidthSelection(
        hidden=list(range(sizes.hidden_size)),
        kv_heads=[list(range(sizes.num_key_value_heads)) for _ in range(n)],
        query_heads=[list(range(sizes.num_attention_heads)) for _ in range(n)],
        mlp=[list(range(sizes.intermediate_size)) for _ in range(n)],
    )


def _check_selection(sizes: WidthSizes, n_layers: int, sel: WidthSelection) -> WidthSizes:
    """The sizes `sel` gives; every layer the same counts, ascending in-range indices, whole query groups."""

    def indices(values: Sequence[int], limit: int, what: str) -> int:
        if not values or list(values) != sorted(set(values)) or values[0] < 0 or values[-1] >= limit:
            raise ValueError(
                f"{what}: expected distinct ascending indices in 0..{limit - 1}, got {list(values)}"
            )
        return len(values)

    if not len(sel.kv_heads) == len(sel.query_heads) == len(sel.mlp) == n_layers:
        raise ValueError(f"the selection must name heads and MLP channels for each of the {n_layers} layers")
    hidden = indices(sel.hidden, sizes.hidden_size, "hidden")
    counts = set()
    for i in range(n_layers):
        kv = indices(sel.kv_heads[i], sizes.num_key_value_heads, f"layer {i} kv_heads")
        heads = indices(sel.query_heads[i], sizes.num_attention_heads, f"layer {i} query_heads")
        mlp = indices(sel.mlp[i], sizes.intermediate_size, f"layer {i} mlp")
        groups = [q // sizes.group_size for q in sel.query_heads[i]]
        if heads % kv or groups != [g for g in sel.kv_heads[i] for _ in range(heads // kv)]:
            raise ValueError(
                f"layer {i}: query heads {sel.query_heads[i]} are not the same number of heads from each kept KV "
                f"head {sel.kv_heads[i]} (query head q reads KV head q // {sizes.group_size})"
            )
        counts.add((kv, heads, mlp))
    if len(counts) != 1:
        raise ValueError(
            f"every layer must keep the same numbers of KV heads, heads and MLP channels: {counts}"
        )
    ((kv, heads, mlp),) = counts
    return WidthSizes(hidden, mlp, heads, kv, sizes.head_dim)


_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _head_rows(heads: Sequence[int], head_dim: int) -> Tensor:
    """The rows (q/k/v) or columns (o) of the given heads."""
    heads_t = torch.tensor(list(heads), dtype=torch.long)
    return (heads_t[:, None] * head_dim + torch.arange(head_dim)[None, :]).flatten()


def _sliced_state(model: PreTrainedModel, sel: WidthSelection, head_dim: int) -> dict[str, Tensor]:
    """The teacher's state dict cut to the selection: rows are outputs, columns inputs of each Linear."""
    hidden = torch.tensor(sel.hidden, dtype=torch.long)
    per_layer = [
        {
            "q": _head_rows(sel.query_heads[i], head_dim),
            "kv": _head_rows(sel.kv_heads[i], head_dim),
            "mlp": torch.tensor(sel.mlp[i], dtype=torch.long),
        }
        for i in range(len(sel.mlp))
    ]

    def rows(t: Tensor, index: Tensor) -> Tensor:
        return t.index_select(0, index.to(t.device))

    def cols(t: Tensor, index: Tensor) -> Tensor:
        return t.index_select(1, index.to(t.device))

    state: dict[str, Tensor] = {}
    for key, t in model.state_dict().items():
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            state[key] = cols(t, hidden)
        elif key == "model.norm.weight":
            state[key] = rows(t, hidden)
        elif "rotary_emb" in key:  # a persistent rotary buffer depends on head_dim only
            state[key] = t.clone()
        elif (match := _LAYER_KEY.match(key)) is not None:
            idx, name = per_layer[int(match.group(1))], match.group(2)
            if name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
                state[key] = rows(t, hidden)
            elif name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"):
                state[key] = cols(rows(t, idx["q"] if "q_proj" in name else idx["kv"]), hidden)
            elif name in ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"):
                state[key] = rows(t, idx["q"] if "q_proj" in name else idx["kv"])
            elif name == "self_attn.o_proj.weight":
                state[key] = cols(rows(t, hidden), idx["q"])
            elif name in ("self_attn.o_proj.bias", "mlp.down_proj.bias"):
                state[key] = rows(t, hidden)
            elif name in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):  # Qwen3: per head_dim
                state[key] = t.clone()
            elif name in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                state[key] = cols(rows(t, idx["mlp"]), hidden)
            elif name in ("mlp.gate_proj.bias", "mlp.up_proj.bias"):
                state[key] = rows(t, idx["mlp"])
            elif name == "mlp.down_proj.weight":
                state[key] = cols(rows(t, hidden), idx["mlp"])
            else:
                raise ValueError(f"width pruning does not know how to slice {key}")
        else:
            raise ValueError(f"width pruning does not know how to slice {key}")
    return state


def _pruned_config(model: PreTrainedModel, target: WidthSizes) -> PretrainedConfig:
    """A copy of the model's config with the target sizes, head_dim written out, checked by transformers."""
    config = copy.deepcopy(model.config)
    config.hidden_size = target.hidden_size
    config.intermediate_size = target.intermediate_size
    config.num_attention_heads = target.num_attention_heads
    config.num_key_value_heads = target.num_key_value_heads
    config.head_dim = target.head_dim
    validate = getattr(config, "validate", None)
    if callable(validate):
        try:
            validate()
        except Exception as err:  # transformers' strict-dataclass errors are not ValueErrors
            raise ValueError(
                f"{type(config).__name__} refuses the pruned sizes (hidden_size {target.hidden_size}, "
                f"num_attention_heads {target.num_attention_heads}): {str(err).strip().splitlines()[-1].strip()}"
            ) from err
    return config


def apply_width(model: PreTrainedModel, selection: WidthSelection) -> PreTrainedModel:
    """A new model of `model`'s class holding copies of exactly the selected channels and heads."""
    sizes = width_sizes(model.config)
    target = _check_selection(sizes, len(decoder_layers(model)[1]), selection)
    config = _pruned_config(model, target)
    pruned = rebuild(model, config, _sliced_state(model, selection, sizes.head_dim))
    if getattr(config, "tie_word_embeddings", False) and (
        pruned.get_output_embeddings().weight is not pruned.get_input_embeddings().weight
    ):
        raise AssertionError("the pruned model's output head is no longer tied to its input embedding")
    return pruned


def prune_width(
    model: PreTrainedModel,
    *,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
    importance: WidthImportance | None = None,
) -> PreTrainedModel:
    """A new, narrower model of the same class keeping the most important units for the target sizes.

    None keeps a size (KV heads default to the model's, query heads to its group size times the KV heads).
    `importance` (from `width_importance`) is needed unless every size stays the same.
    """
    if importance is None:
        target = _targets(
            width_sizes(model.config),
            hidden_size,
            intermediate_size,
            num_attention_heads,
            num_key_value_heads,
        )
        if target != width_sizes(model.config):
            raise ValueError("prune_width needs `importance` (width_importance) to choose what to keep")
        return apply_width(model, _full_selection(model))
    selection = choose_width(
        model,
        importance,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
    )
    return apply_width(model, selection)


def _parameters_of(model: PreTrainedModel, config: PretrainedConfig) -> int:
    """Parameters of `model`'s class built from `config`, exactly (tied embeddings once), without memory:
    one- and two-layer copies are built on the meta device and the per-layer difference is extrapolated,
    as every decoder layer of these families holds the same parameters."""
    counts = []
    for layers in (1, 2):
        small = copy.deepcopy(config)
        small.num_hidden_layers = layers
        if isinstance(getattr(small, "layer_types", None), list | tuple):
            small.layer_types = list(small.layer_types)[:1] * layers
        with torch.device("meta"):
            counts.append(count_parameters(type(model)(small)))
    return counts[0] + (config.num_hidden_layers - 1) * (counts[1] - counts[0])


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def plan_width(model: PreTrainedModel, params_budget: int, *, multiple: int = 8) -> tuple[WidthSizes, int]:
    """The widest sizes whose pruned model has at most `params_budget` parameters, and that count.

    A simple search that keeps the model's proportions: for each hidden size h (the multiples of `multiple`
    below the model's, and the model's own) with s = h / hidden_size: intermediate = s * intermediate_size
    (rounded to `multiple`), KV heads unchanged, query heads per KV head round(s * group size), at least 1,
    lowered further while the config class refuses the sizes (Llama wants hidden_size divisible by the heads).
    The largest candidate within budget wins. Depth is not searched: the layers are whatever the caller kept
    (Minitron found width pruning better than depth pruning at equal size after retraining, so a budget
    is spent on width). Counts are exact (`_parameters_of`); tied embeddings count once.
    """
    sizes = width_sizes(model.config)
    current = count_parameters(model)
    if params_budget >= current:
        return sizes, current
    best: tuple[WidthSizes, int] | None = None
    smallest: tuple[WidthSizes, int] | None = None
    for hidden in sorted(set(range(multiple, sizes.hidden_size, multiple)) | {sizes.hidden_size}):
        s = hidden / sizes.hidden_size
        intermediate = min(sizes.intermediate_size, _round_to(s * sizes.intermediate_size, multiple))
        for per_group in range(max(1, min(sizes.group_size, round(s * sizes.group_size))), 0, -1):
            target = WidthSizes(
                hidden,
                intermediate,
                per_group * sizes.num_key_value_heads,
                sizes.num_key_value_heads,
                sizes.head_dim,
            )
            try:
                config = _pruned_config(model, target)
            except ValueError:
                continue
            params = _parameters_of(model, config)
            smallest = smallest or (target, params)
            if params <= params_budget and (best is None or params > best[1]):
                best = (target, params)
            break
    if best is None:
        if smallest is None:
            raise ValueError(f"{type(model.config).__name__} accepts none of the widths searched")
        target, params = smallest
        raise ValueError(
            f"params_budget {params_budget:,} is below the narrowest width searched ({params:,} parameters at "
            f"hidden_size {target.hidden_size}, intermediate_size {target.intermediate_size}, "
            f"{target.num_attention_heads} heads); keep fewer layers or give a larger budget"
        )
    return best


def prune_width_calibrated(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    params_budget: int | None = None,
    head_score: HeadScore = "output",
    **sizes: int,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Importance from `texts`, then `model` narrowed to `sizes` (as `prune_width`) or to the widest model of
    at most `params_budget` parameters (`plan_width`); the new model and its `width_report`."""
    if params_budget is not None and sizes:
        raise ValueError("give either sizes or params_budget, not both")
    importance = width_importance(model, tokenizer, texts, head_score=head_score)
    planned = None
    if params_budget is not None:
        target, planned = plan_width(model, params_budget)
        sizes = {
            "hidden_size": target.hidden_size,
            "intermediate_size": target.intermediate_size,
            "num_attention_heads": target.num_attention_heads,
            "num_key_value_heads": target.num_key_value_heads,
        }
    selection = choose_width(model, importance, **sizes)
    student = apply_width(model, selection)
    report = width_report(model, student, selection, importance)
    report["head_score"] = head_score
    if params_budget is not None:
        report["params_budget"] = params_budget
        if planned != report["params_after"]:
            raise AssertionError(
                f"plan_width counted {planned} parameters, the pruned model has {report['params_after']}"
            )
    return student, report


def width_report(
    teacher: nn.Module,
    student: nn.Module,
    selection: WidthSelection,
    importance: WidthImportance | None = None,
) -> dict[str, Any]:
    """What width pruning kept, as plain data for logs and manifests (MLP channels as counts only: the
    per-layer lists run to thousands of indices)."""
    before, after = width_sizes(teacher.config), width_sizes(student.config)
    report: dict[str, Any] = {
        "before": {k: getattr(before, k) for k in _SIZE_FIELDS},
        "after": {k: getattr(after, k) for k in _SIZE_FIELDS},
        "kept_hidden": list(selection.hidden),
        "kept_kv_heads": [list(x) for x in selection.kv_heads],
        "kept_query_heads": [list(x) for x in selection.query_heads],
        "params_before": count_parameters(teacher),
        "params_after": count_parameters(student),
    }
    if importance is not None:
        report["calibration"] = {"sequences": importance.sequences, "tokens": importance.tokens}
    return report


_SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")
