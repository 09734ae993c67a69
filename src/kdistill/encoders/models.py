"""Text encoders for sentence-embedding distillation: the teacher, and two kinds of student.

* `TextEncoder` wraps a Hugging Face encoder (`AutoModel`) with its tokenizer, pooling (mean, CLS, max)
  and optional L2 normalisation, and computes exactly what `sentence_transformers.SentenceTransformer`
  computes for a Transformer -> Pooling (-> Normalize) model. `load_encoder` reads the pooling and the
  normalisation from the model's sentence-transformers files (`modules.json`, the Pooling module's
  `config.json`, a `Normalize` entry, `sentence_bert_config.json`); without them: mean pooling, no
  normalisation, as sentence-transformers itself defaults.
* Transformer students: `cut_layers(teacher, keep)` keeps chosen layers of a BERT-like teacher (explicit,
  evenly spaced, or by block influence measured on calibration texts, as `kdistill.lm.prune` does for
  decoders); `encoder_from_config` builds a fresh, smaller one.
* `StaticEmbeddingStudent`: one vector per vocabulary token, a text is the mean of its tokens' vectors
  (see the class for the weighting); no attention, no positions: orders of magnitude faster.

All three share one interface: `tokenize(texts) -> batch`, `forward(batch) -> (B, D)` (differentiable),
`encode(texts, batch_size) -> (N, D)` float32 on the CPU (no gradient), `embedding_dim`.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "POOLING_MODES",
    "SentenceTransformersLayout",
    "StaticEmbeddingStudent",
    "TextEncoder",
    "choose_encoder_layers",
    "cut_layers",
    "encoder_from_config",
    "encoder_layers",
    "evenly_spaced_layers",
    "layer_influence",
    "load_encoder",
    "pca_reduce",
    "pool",
    "read_sentence_transformers_layout",
    "sif_weights",
]

POOLING_MODES = ("mean", "cls", "max")
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# sentence-transformers' legacy pooling keys, in its order of precedence
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


# ---------------------------------------------------------------- pooling


def pool(token_embeddings: Tensor, attention_mask: Tensor, mode: str) -> Tensor:
    """(B, T, D) token states and (B, T) mask (1 = real token) -> (B, D) text embeddings.

    mean: sum of the real tokens' states / their count (count floored at 1e-9, as sentence-transformers);
    cls: the first real token's state (the [CLS] of BERT-like models, also under left padding);
    max: per dimension, the maximum over real tokens.
    """
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)  # (B, T, 1)
        return (token_embeddings * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if mode == "cls":
        first = attention_mask.to(torch.int).argmax(dim=1)  # (B,)
        return token_embeddings[torch.arange(token_embeddings.shape[0]), first]
    if mode == "max":
        padding = (attention_mask == 0).unsqueeze(-1)  # (B, T, 1)
        return token_embeddings.masked_fill(padding, float("-inf")).max(dim=1).values
    raise ValueError(f"unknown pooling mode {mode!r}; known: {', '.join(POOLING_MODES)}")


# ---------------------------------------------------------------- sentence-transformers files


@dataclass(frozen=True)
class SentenceTransformersLayout:
    """What a model's sentence-transformers files say about how it embeds a text."""

    pooling: str = "mean"  # one of POOLING_MODES
    normalize: bool = False  # a Normalize module follows the pooling
    max_seq_length: int | None = None  # from sentence_bert_config.json; None = the tokenizer/model limit
    do_lower_case: bool = False  # sentence-transformers lowercases the input first
    transformer_path: str = ""  # subfolder of the Transformer module ("" = the model root)
    source: str = "default"  # "modules.json", or why the defaults were used


def _model_file(name_or_path: str | os.PathLike[str], filename: str) -> Path | None:
    """A file of a local model directory or a hub repo (cache only when HF_HUB_OFFLINE=1); None if absent."""
    local = Path(name_or_path)
    if local.is_dir():
        return local / filename if (local / filename).is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:  # LocalEntryNotFoundError (offline, not cached) is an EntryNotFoundError too
        return Path(hf_hub_download(str(name_or_path), filename))
    except EntryNotFoundError:
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _pooling_mode(config: Mapping[str, Any], where: str) -> str:
    if "pooling_mode" in config:  # sentence-transformers >= 6
        modes = config["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:  # the legacy boolean keys; none set means mean, as sentence-transformers reads it
        modes = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if config.get(key)] or ["mean"]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ValueError(
            f"{where}: pooling {modes} is not supported; kdistill pools with one of {', '.join(POOLING_MODES)}"
        )
    return modes[0]


def read_sentence_transformers_layout(name_or_path: str | os.PathLike[str]) -> SentenceTransformersLayout:
    """Pooling, normalisation and sequence length from a model's sentence-transformers files.

    Reads `modules.json`: a Transformer module (its `path` is the model's subfolder), a Pooling module
    (`<path>/config.json`, legacy `pooling_mode_*_tokens` flags or the newer `pooling_mode`), and whether a
    Normalize module is listed (its folder may be absent; all-MiniLM-L6-v2 ships without one). Other modules
    (Dense, ...) raise: kdistill would silently compute other embeddings. Without `modules.json` the model is
    a plain transformers encoder and gets sentence-transformers' defaults: mean pooling, no normalisation.
    """
    modules_file = _model_file(name_or_path, "modules.json")
    if modules_file is None:
        return SentenceTransformersLayout(source="default (no modules.json)")
    modules = _read_json(modules_file)
    pooling, normalize, transformer_path, seen = "mean", False, "", []
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = str(module.get("path", ""))
        seen.append(kind)
        if kind == "Transformer":
            transformer_path = path
        elif kind == "Pooling":
            config_file = _model_file(name_or_path, f"{path}/config.json" if path else "config.json")
            if config_file is not None:
                pooling = _pooling_mode(_read_json(config_file), str(config_file))
        elif kind == "Normalize":
            normalize = True
        else:
            raise ValueError(
                f"{name_or_path}: sentence-transformers module {module.get('type')!r} is not supported; "
                "kdistill reads Transformer -> Pooling (-> Normalize) models"
            )
    if seen[:1] != ["Transformer"] or "Pooling" not in seen:
        raise ValueError(f"{name_or_path}: modules {seen}; expected Transformer, Pooling (, Normalize)")
    sbert_name = (
        f"{transformer_path}/sentence_bert_config.json" if transformer_path else "sentence_bert_config.json"
    )
    sbert_file = _model_file(name_or_path, sbert_name)
    sbert = _read_json(sbert_file) if sbert_file is not None else {}
    return SentenceTransformersLayout(
        pooling=pooling,
        normalize=normalize,
        max_seq_length=sbert.get("max_seq_length"),
        do_lower_case=bool(sbert.get("do_lower_case", False)),
        transformer_path=transformer_path,
        source="modules.json",
    )


# ---------------------------------------------------------------- fingerprints


def _tensor_digest(module: nn.Module) -> str:
    """sha256 over every state-dict entry's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _json_digest(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------- the transformer encoder


class TextEncoder(nn.Module):
    """A Hugging Face encoder + tokenizer + pooling (+ L2 normalisation): texts -> (B, D) embeddings.

    Tokenisation matches sentence-transformers: padding to the longest text of the batch, truncation to
    `max_seq_length` (default: the tokenizer's `model_max_length` capped at the model's
    `max_position_embeddings`), special tokens added. `name` is where it came from (for reports only).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        pooling: str = "mean",
        normalize: bool = False,
        max_seq_length: int | None = None,
        do_lower_case: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling mode {pooling!r}; known: {', '.join(POOLING_MODES)}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.do_lower_case = do_lower_case
        self.name = name
        if max_seq_length is None:
            max_seq_length = int(min(tokenizer.model_max_length, _max_positions(model.config)))
        self.max_seq_length = int(max_seq_length)
        accepted = inspect.signature(model.forward).parameters
        self._inputs = tuple(k for k in _MODEL_INPUTS if k in accepted)

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return len(encoder_layers(self.model)[1])

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation="longest_first",
            max_length=self.max_seq_length,
            return_tensors="pt",
        )
        return {k: batch[k] for k in self._inputs if k in batch}

    def token_states(self, batch: Mapping[str, Tensor], **kwargs: Any) -> Any:
        """The model's output for a tokenized batch (moved to the model's device)."""
        device = next(self.model.parameters()).device
        inputs = {k: batch[k].to(device) for k in self._inputs if k in batch}
        return self.model(**inputs, **kwargs)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """A tokenized batch -> (B, D) text embeddings (with gradients)."""
        out = self.token_states(batch)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, D)
        mask = batch["attention_mask"].to(hidden.device)
        emb = pool(hidden, mask, self.pooling)
        return F.normalize(emb, p=2, dim=-1) if self.normalize else emb

    def embed(self, texts: Sequence[str]) -> Tensor:
        """tokenize + forward: (B, D) with gradients (for training)."""
        return self(self.tokenize(texts))

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        """(N, D) float32 CPU embeddings of `texts`, in order, in eval mode; train mode is restored."""
        return _encode_batches(self, texts, batch_size)

    def fingerprint(self) -> str:
        """16 hex: the weights, the tokenizer and the embedding settings; equal encoders, equal fingerprint."""
        from kdistill.lm.tokenizers import tokenizer_fingerprint

        return _json_digest(
            {
                "weights": _tensor_digest(self.model),
                "tokenizer": tokenizer_fingerprint(self.tokenizer),
                "pooling": self.pooling,
                "normalize": self.normalize,
                "max_seq_length": self.max_seq_length,
                "do_lower_case": self.do_lower_case,
            }
        )[:16]


def _max_positions(config: PretrainedConfig) -> int:
    n = getattr(config, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else 1 << 30


def _encode_batches(encoder: nn.Module, texts: Sequence[str], batch_size: int) -> Tensor:
    """Embeddings of `texts` in their order, computed in batches of texts of similar length (longest
    first, as sentence-transformers does): a batch is padded to its longest text, so mixing a long text
    with short ones would make every short one pay for the padding."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = list(texts)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # stable: ties keep their order
    was_training = encoder.training
    encoder.eval()
    try:
        chunks = [
            encoder(encoder.tokenize([texts[i] for i in order[start : start + batch_size]])).float().cpu()
            for start in range(0, len(texts), batch_size)
        ]
    finally:
        encoder.train(was_training)
    if not chunks:
        return torch.zeros(0, encoder.embedding_dim)
    out = torch.empty(len(texts), chunks[0].shape[1])
    out[torch.tensor(order)] = torch.cat(chunks)
    return out


def _add_lowercase(tokenizer: PreTrainedTokenizerBase) -> None:
    """What sentence-transformers does for do_lower_case, check for check: a Lowercase normalizer in
    front, unless the normalizer is one or is a Sequence holding one (a lowercasing BertNormalizer still
    gets one; lowercasing twice changes nothing)."""
    from tokenizers.normalizers import Lowercase
    from tokenizers.normalizers import Sequence as NormalizerSequence

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("do_lower_case needs a fast tokenizer")
    current = backend.normalizer
    if isinstance(current, Lowercase) or (
        isinstance(current, NormalizerSequence) and any(isinstance(n, Lowercase) for n in current)
    ):
        return
    parts = [Lowercase()]
    if isinstance(current, NormalizerSequence):
        parts += list(current)
    elif current is not None:
        parts.append(current)
    backend.normalizer = NormalizerSequence(parts)


def load_encoder(
    name_or_path: str | os.PathLike[str],
    *,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_seq_length: int | None = None,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
) -> TextEncoder:
    """A teacher (or any) encoder from a local directory or a hub id, in eval mode on the CPU.

    Pooling, normalisation, max_seq_length and lowercasing come from the sentence-transformers files when
    present (`read_sentence_transformers_layout`); an argument given here overrides them.
    """
    from transformers import AutoTokenizer

    layout = read_sentence_transformers_layout(name_or_path)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if layout.transformer_path:
        kwargs["subfolder"] = layout.transformer_path
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModel.from_pretrained(str(name_or_path), **kwargs)
    if layout.do_lower_case:
        _add_lowercase(tokenizer)
    if max_seq_length is None and layout.max_seq_length is not None:
        max_seq_length = int(min(layout.max_seq_length, _max_positions(model.config)))
    return TextEncoder(
        model.eval(),
        tokenizer,
        pooling=pooling if pooling is not None else layout.pooling,
        normalize=normalize if normalize is not None else layout.normalize,
        max_seq_length=max_seq_length,
        do_lower_case=layout.do_lower_case,
        name=str(name_or_path),
    )


# ---------------------------------------------------------------- transformer students


_LAYER_PATHS = (
    "encoder.layer",
    "transformer.layer",
    "encoder.layers",
    "layers",
)  # BERT/RoBERTa, DistilBERT, ...
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layers")


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The layer list of a BERT-like encoder and its module path ("encoder.layer" for BERT)."""
    for path in _LAYER_PATHS:
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return path, module
    raise TypeError(f"{type(model).__name__} has none of the layer lists {_LAYER_PATHS}")


@torch.inference_mode()
def layer_influence(encoder: TextEncoder, texts: Sequence[str], *, batch_size: int = 16) -> list[float]:
    """Per layer, the mean over real tokens of 1 - cos(hidden in, hidden out): its block influence.

    The encoder analogue of `kdistill.lm.prune.block_influence` (ShortGPT, Men et al. 2024): a layer that
    barely turns the token states is the cheapest to drop. hidden_states[i] enters layer i,
    hidden_states[i + 1] leaves it.
    """
    if not texts:
        raise ValueError("layer_influence needs calibration texts")
    n = encoder.num_layers
    sums = torch.zeros(n, dtype=torch.float64)
    tokens = 0
    was_training = encoder.training
    encoder.eval()
    try:
        for start in range(0, len(texts), batch_size):
            batch = encoder.tokenize(texts[start : start + batch_size])
            hidden = encoder.token_states(batch, output_hidden_states=True).hidden_states  # n + 1 x (B, T, D)
            real = batch["attention_mask"].bool().to(hidden[0].device)
            for i in range(n):
                cos = F.cosine_similarity(hidden[i].float(), hidden[i + 1].float(), dim=-1)  # (B, T)
                sums[i] += (1.0 - cos)[real].double().sum().cpu()
            tokens += int(real.sum())
    finally:
        encoder.train(was_training)
    return (sums / tokens).tolist()


def evenly_spaced_layers(num_layers: int, keep: int) -> list[int]:
    """`keep` layer indices spread evenly over 0..num_layers-1: first and last included (keep 1: the last)."""
    if not 1 <= keep <= num_layers:
        raise ValueError(f"keep must be between 1 and {num_layers}, got {keep}")
    if keep == 1:
        return [num_layers - 1]
    return sorted({round(i * (num_layers - 1) / (keep - 1)) for i in range(keep)})


def choose_encoder_layers(
    encoder: TextEncoder,
    keep: int,
    texts: Sequence[str],
    *,
    always_keep: Iterable[int] = (0, -1),
    batch_size: int = 16,
) -> tuple[list[int], list[float]]:
    """The `keep` layers of highest block influence on `texts` (with `always_keep`), and the influences."""
    from kdistill.lm.prune import choose_layers

    influence = layer_influence(encoder, texts, batch_size=batch_size)
    return choose_layers(influence, keep, always_keep), influence


def cut_layers(encoder: TextEncoder, keep: Iterable[int]) -> TextEncoder:
    """A new encoder with only the layers `keep` (distinct indices, any order, negatives from the end).

    Built fresh from the config with the layer count cut, loaded with copies of the kept tensors (strict),
    so nothing is shared with the teacher; the tokenizer, pooling and normalisation are the teacher's.
    """
    prefix, layers = encoder_layers(encoder.model)
    n = len(layers)
    given = list(keep)
    kept = sorted({i % n for i in given if -n <= i < n})
    if len(kept) != len(given) or not kept:
        raise ValueError(f"keep {given} must be distinct layer indices within 0..{n - 1}, at least one")
    new_position = {old: new for new, old in enumerate(kept)}

    config = copy.deepcopy(encoder.model.config)
    count_keys = [k for k in _LAYER_COUNT_KEYS if hasattr(config, k)]
    if not count_keys:
        raise TypeError(f"{type(config).__name__} has no layer count among {_LAYER_COUNT_KEYS}")
    for key in count_keys:
        setattr(config, key, len(kept))
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list | tuple) and len(layer_types) == n:
        config.layer_types = [layer_types[i] for i in kept]

    state: dict[str, Tensor] = {}
    for key, tensor in encoder.model.state_dict().items():
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1 :].split(".", 1)
            if int(index) in new_position:
                state[f"{prefix}.{new_position[int(index)]}.{rest}"] = tensor.clone()
        else:
            state[key] = tensor.clone()
    dtype = next(encoder.model.parameters()).dtype
    student = type(encoder.model)(config).to(dtype)
    student.load_state_dict(state, strict=True)
    return TextEncoder(
        student.eval(),
        encoder.tokenizer,
        pooling=encoder.pooling,
        normalize=encoder.normalize,
        max_seq_length=encoder.max_seq_length,
        do_lower_case=encoder.do_lower_case,
        name=f"{encoder.name or 'encoder'}[layers {kept}]",
    )


def encoder_from_config(
    config: Mapping[str, Any] | PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    pooling: str = "mean",
    normalize: bool = False,
    max_seq_length: int | None = None,
    seed: int = 0,
) -> TextEncoder:
    """A freshly initialised encoder; a dict needs `model_type` ("bert", ...) and that model's fields.

    Seeded on a forked RNG, so building one neither depends on nor disturbs the global random state.
    """
    if not isinstance(config, PretrainedConfig):
        fields = dict(config)
        if "model_type" not in fields:
            raise ValueError("an encoder config dict needs 'model_type', e.g. {'model_type': 'bert', ...}")
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    return TextEncoder(
        model.eval(), tokenizer, pooling=pooling, normalize=normalize, max_seq_length=max_seq_length
    )


# ---------------------------------------------------------------- the static-embedding student


def pca_reduce(matrix: Tensor, dims: int) -> Tensor:
    """The rows of `matrix` (N, D) projected on their first `dims` principal components: (N, dims).

    Rows are centred (the column mean removed) and projected on the top eigenvectors of the (D, D)
    scatter matrix X^T X, computed in float64 (an eigendecomposition of D x D: 0.5 s for a 30k x 384
    vocabulary where a full SVD of the rows takes 12 s). Each component's sign is fixed so that its
    largest-magnitude coefficient is positive (deterministic output). Returned in the input's dtype.
    """
    n, d = matrix.shape
    if not 1 <= dims <= min(n, d):
        raise ValueError(f"dims must be between 1 and min(rows, width) = {min(n, d)}, got {dims}")
    x = matrix.detach().double()
    x = x - x.mean(dim=0, keepdim=True)
    _, vectors = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues; columns = components
    components = vectors[:, -dims:].flip(1).T  # (dims, D), largest variance first
    sign = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))  # (dims, 1)
    return (x @ (components * sign).T).to(matrix.dtype)


def sif_weights(tokenizer: Any, texts: Iterable[str], *, a: float = 1e-3) -> Tensor:
    """SIF weight per token id, a / (a + p(t)) (Arora et al., ICLR 2017), p(t) = frequency in `texts`.

    `tokenizer` is a `tokenizers.Tokenizer`; texts are tokenized without special tokens, as the static
    student reads them. Frequent tokens ("the", ",") get weights near a / p, unseen tokens the maximum 1.
    Returns (vocab_size,) float32.
    """
    counts: Counter[int] = Counter()
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        counts.update(encoding.ids)
    total = sum(counts.values())
    freq = torch.zeros(tokenizer.get_vocab_size(), dtype=torch.float64)
    if total:
        ids = torch.tensor(list(counts), dtype=torch.long)
        freq[ids] = torch.tensor([counts[i] for i in counts.keys()], dtype=torch.float64) / total
    return (a / (a + freq)).float()


class StaticEmbeddingStudent(nn.Module):
    """One trainable vector per vocabulary token; a text is the mean of its tokens' vectors (+ L2 norm).

        emb(text) = (1 / n) * sum_{t in tokens(text)} e_t,     then e / ||e|| if `normalize`

    Weighting: a per-token weight w_t (SIF, `sif_weights`) is folded into the vector at initialisation,
    e_t = w_t * v_t, and then learned with it (its norm is the token's weight, its direction the
    meaning). The pooling divides by the token count n, not by sum_t w_t, exactly as model2vec and
    sentence-transformers' `StaticEmbedding` (an `nn.EmbeddingBag` in "mean" mode) do, so the saved model
    computes the same numbers; with `normalize` the denominator cancels anyway and this *is* the weighted
    mean sum_t w_t v_t / sum_t w_t up to length. Tokens come from the teacher's fast tokenizer without
    special tokens, untruncated. An empty text embeds to zeros.
    """

    def __init__(self, tokenizer: Any, embeddings: Tensor, *, normalize: bool = True) -> None:
        super().__init__()
        from tokenizers import Tokenizer

        if not isinstance(tokenizer, Tokenizer):
            backend = getattr(tokenizer, "backend_tokenizer", None)
            if backend is None:
                raise TypeError("the static student needs a fast (tokenizers-backed) tokenizer")
            tokenizer = backend
        tokenizer = Tokenizer.from_str(tokenizer.to_str())  # a private copy: padding/truncation off
        tokenizer.no_padding()
        tokenizer.no_truncation()
        if embeddings.ndim != 2 or embeddings.shape[0] != tokenizer.get_vocab_size():
            raise ValueError(
                f"embeddings {tuple(embeddings.shape)} must have one row per token "
                f"({tokenizer.get_vocab_size()} in the tokenizer)"
            )
        self.tokenizer = tokenizer
        self.embedding = nn.EmbeddingBag.from_pretrained(
            embeddings.detach().float().clone(), freeze=False, mode="mean"
        )
        self.normalize = normalize

    @property
    def embedding_dim(self) -> int:
        return self.embedding.embedding_dim

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Flat token ids (N,) and each text's start offset (B,), the input of `nn.EmbeddingBag`."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        lengths = [len(e.ids) for e in encodings]
        offsets = torch.zeros(len(lengths), dtype=torch.long)
        if len(lengths) > 1:
            offsets[1:] = torch.cumsum(torch.tensor(lengths[:-1], dtype=torch.long), 0)
        input_ids = torch.tensor([i for e in encodings for i in e.ids], dtype=torch.long)
        return {"input_ids": input_ids, "offsets": offsets}

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        device = self.embedding.weight.device
        emb = self.embedding(batch["input_ids"].to(device), batch["offsets"].to(device))  # (B, D)
        return F.normalize(emb, p=2, dim=-1) if self.normalize else emb

    def embed(self, texts: Sequence[str]) -> Tensor:
        return self(self.tokenize(texts))

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        return _encode_batches(self, texts, batch_size)

    @classmethod
    def from_teacher(
        cls,
        teacher: TextEncoder,
        *,
        dims: int | None = None,
        init: str = "input",
        sif_texts: Iterable[str] | None = None,
        sif_a: float = 1e-3,
        normalize: bool | None = None,
        batch_size: int = 256,
        token_vectors: Tensor | None = None,
    ) -> StaticEmbeddingStudent:
        """A static student with the teacher's tokenizer and vectors initialised from the teacher.

        init: "input" = the teacher's input token embeddings (free); "pooled" = the teacher's text
        embedding of each token alone (the model2vec recipe: [CLS] t [SEP] through the whole teacher,
        pooled, not normalised; one forward per vocabulary entry, batched). dims: PCA-reduce to this width
        (`pca_reduce`), else keep the teacher's. sif_texts: fold SIF weights estimated on these texts
        into the vectors (after PCA). normalize: default the teacher's. token_vectors: the "pooled" vectors
        computed earlier by `pooled_token_vectors` (a cache), instead of computing them again.
        """
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(teacher.tokenizer.backend_tokenizer.to_str())
        # The teacher's backend keeps the truncation of its last call (128 tokens after any encode): SIF
        # frequencies would then depend on whether the teacher had run yet. The student reads whole texts.
        backend.no_truncation()
        backend.no_padding()
        vocab = backend.get_vocab_size()
        if init == "input":
            weight = teacher.model.get_input_embeddings().weight.detach()
            if weight.shape[0] < vocab:
                raise ValueError(f"the teacher has {weight.shape[0]} input embeddings for {vocab} tokens")
            vectors = weight[:vocab].float().clone()
        elif init == "pooled":
            vectors = (
                token_vectors if token_vectors is not None else pooled_token_vectors(teacher, batch_size)
            )
            if vectors.shape[0] != vocab:
                raise ValueError(f"token_vectors has {vectors.shape[0]} rows for {vocab} tokens")
            vectors = vectors.float().clone()
        else:
            raise ValueError(f"init must be 'input' or 'pooled', got {init!r}")
        if dims is not None:
            vectors = pca_reduce(vectors, dims)
        if sif_texts is not None:
            vectors = vectors * sif_weights(backend, sif_texts, a=sif_a).unsqueeze(1)
        return cls(backend, vectors, normalize=teacher.normalize if normalize is None else normalize)


def _special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text ([CLS] and [SEP] for BERT)."""
    probe = "hello"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ValueError("cannot tell where the tokenizer puts its special tokens")


@torch.inference_mode()
def pooled_token_vectors(teacher: TextEncoder, batch_size: int = 256) -> Tensor:
    """The teacher's embedding of every vocabulary token as its own text ([CLS] t [SEP] for BERT), pooled,
    not normalised: (vocab, D) float32, model2vec's starting point. One forward per token, batched."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(teacher.tokenizer.backend_tokenizer.to_str()).get_vocab_size()
    tok = teacher.tokenizer
    prefix, suffix = _special_tokens_around(tok)
    rows = [[*prefix, i, *suffix] for i in range(vocab)]
    width = max(len(r) for r in rows)
    was_training = teacher.training
    teacher.eval()
    out = []
    try:
        for start in range(0, vocab, batch_size):
            chunk = rows[start : start + batch_size]
            ids = torch.full((len(chunk), width), tok.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, row in enumerate(chunk):
                ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            batch = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in teacher._inputs:
                batch["token_type_ids"] = torch.zeros_like(ids)
            hidden = teacher.token_states(batch).last_hidden_state
            out.append(pool(hidden, mask.to(hidden.device), teacher.pooling).float().cpu())
    finally:
        teacher.train(was_training)
    return torch.cat(out)
