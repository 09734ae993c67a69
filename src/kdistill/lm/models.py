"""Causal language models and their tokenizers: load, build small ones, measure them.

Everything goes through `from_pretrained`/`from_config`, so a local directory, a hub id (offline when
HF_HUB_OFFLINE=1) and a GGUF file inside either all load the same way. Remote code never runs unless the
caller asks for it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kdistill.evaluation.metrics import count_parameters, size_on_disk_bytes
from kdistill.runs.locations import ModelRef, gguf_files, resolve_model
from kdistill.weight_files import refuse_pickle_weights

__all__ = [
    "backbone_and_head",
    "count_parameters",
    "directory_size_bytes",
    "is_saveable",
    "load_causal_lm",
    "load_causal_lm_ref",
    "load_tokenizer",
    "load_tokenizer_ref",
    "model_from_config",
    "rebuild",
    "size_on_disk_bytes",
]


def load_tokenizer(
    name_or_path: str | os.PathLike[str],
    *,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """A tokenizer with a pad token: batching needs one, and many causal-LM tokenizers ship without it.

    When the tokenizer has no pad token, eos is used; masks, not token ids, decide what is padding, so
    this never hides an eos from the loss.
    """
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str | os.PathLike[str],
    *,
    gguf_file: str | None = None,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    saveable: bool = True,
) -> PreTrainedModel:
    """A causal LM in eval mode, on the CPU; a local folder with pickled weights only (pytorch_model.bin)
    is refused (PreflightError, a ValueError) without being opened.

    GGUF weights are dequantised by transformers, but the model keeps its GGUF quantizer, whose
    `is_serializable()` is False, so `save_pretrained` raises ("quantized with gguf and is not
    serializable"); with `saveable=True` it is rebuilt as a plain model holding the same tensors, so a
    student pruned or fine-tuned from it can be saved and reloaded without the GGUF file.
    """
    if gguf_file is None:  # transformers would torch.load a folder's pytorch_model.bin: a pickle runs code
        refuse_pickle_weights(name_or_path)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    if saveable and not is_saveable(model):
        model = rebuild(model)
    return model.eval()


def load_tokenizer_ref(
    ref: str, *, gguf_file: str | None = None, field: str = "model", trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """`load_tokenizer` for any model reference `resolve_model` reads (folder, hub id, .gguf file, pkg:).

    A failure is one ValueError naming `field`, the reference, what was tried and the first line of
    transformers' message (on its own that can be a bare "Couldn't instantiate the backend tokenizer").
    """
    resolved = resolve_model(ref, gguf_file=gguf_file, field=field)
    try:
        return load_tokenizer(
            resolved.path, gguf_file=resolved.gguf_file, trust_remote_code=trust_remote_code
        )
    except _LOAD_ERRORS as err:
        raise ValueError(
            f"{field} {ref!r}: cannot load a tokenizer from {_tried(resolved)}: {_first_line(err)}"
        ) from err


def load_causal_lm_ref(
    ref: str,
    *,
    gguf_file: str | None = None,
    field: str = "model",
    dtype: torch.dtype | str | None = torch.float32,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """`load_causal_lm` (saveable, eval mode, CPU) for any model reference `resolve_model` reads; a failure
    is one ValueError naming `field`, the reference, what was tried and the first line of the cause."""
    resolved = resolve_model(ref, gguf_file=gguf_file, field=field)
    try:
        return load_causal_lm(
            resolved.path, gguf_file=resolved.gguf_file, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except _LOAD_ERRORS as err:
        raise ValueError(
            f"{field} {ref!r}: cannot load a causal LM from {_tried(resolved)}: {_first_line(err)}"
        ) from err


# what transformers and gguf raise for a folder, hub id or GGUF file they cannot read (KeyError: metadata)
_LOAD_ERRORS = (OSError, ValueError, KeyError)


def _tried(model: ModelRef) -> str:
    """`folder /x, gguf file m.gguf`: what a load looked at, with the likely fix for a folder of GGUFs."""
    folder = Path(model.path)
    tried = f"folder {folder}" if folder.is_dir() else f"hub id {model.path}"
    if model.gguf_file is not None:
        return f"{tried}, gguf file {model.gguf_file}"
    if folder.is_dir() and not (folder / "config.json").exists() and len(ggufs := gguf_files(folder)) > 1:
        return f"{tried} (no config.json; it holds {len(ggufs)} .gguf files: name one with gguf_file)"
    return tried


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    line = lines[0].strip().rstrip(":") if lines else ""  # "... from one of:" announces lines we drop
    return f"{type(err).__name__} {line}".strip() if isinstance(err, KeyError) or not line else line


def is_saveable(model: PreTrainedModel) -> bool:
    """False for models transformers will not serialise (GGUF-loaded ones carry a GGUF quantizer)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return True
    serializable = getattr(quantizer, "is_serializable", True)  # a method now, a property in some versions
    return bool(serializable() if callable(serializable) else serializable)


def rebuild(
    model: PreTrainedModel,
    config: PretrainedConfig | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> PreTrainedModel:
    """A fresh plain model of `model`'s class built from `config` and loaded with `state_dict`.

    Defaults: the model's own config (without any quantization config) and its own tensors. The result
    shares no storage with `model`, has no hooks or quantizer, is in eval mode and keeps `model`'s dtype
    and generation config. Used to make GGUF-loaded models saveable and to build pruned copies.
    """
    config = copy.deepcopy(config if config is not None else model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    source = model.state_dict() if state_dict is None else state_dict
    dtype = next(model.parameters()).dtype
    fresh = type(model)(config).to(dtype)
    missing, unexpected = fresh.load_state_dict(dict(source), strict=False)
    # Tied weights (lm_head = embed_tokens) may be absent from a state dict; load_state_dict restored the
    # shared tensor through its other name, so only a missing tied key is acceptable.
    tied = set(_tied_parameter_names(fresh))
    untied_missing = [k for k in missing if k not in tied]
    if untied_missing or unexpected:
        raise ValueError(
            f"state dict does not fit the model: missing {untied_missing}, unexpected {unexpected}"
        )
    fresh.generation_config = copy.deepcopy(model.generation_config)
    return fresh.eval()


def _tied_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names under which an already-seen parameter appears again (the second name of a tied weight)."""
    seen: set[int] = set()
    names = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            names.append(name)
        seen.add(id(param))
    return names


def model_from_config(
    config: Mapping[str, Any] | PretrainedConfig,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """A freshly initialised causal LM; a dict needs `model_type` (e.g. "llama") and that model's fields.

    The initialisation is seeded on a forked RNG, so building a model neither depends on nor disturbs
    the caller's global random state.
    """
    if not isinstance(config, PretrainedConfig):
        fields = dict(config)
        if "model_type" not in fields:
            raise ValueError("a model config dict needs 'model_type', e.g. {'model_type': 'llama', ...}")
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def directory_size_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of every file under `path`: what a saved model directory costs to ship."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder stack (returns last_hidden_state, after the final norm) and the output head of a
    transformers causal LM, through a peft wrapper if there is one."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone, head = core.base_model, core.get_output_embeddings()
    if backbone is core or head is None:
        raise ValueError(f"{type(core).__name__} is not a causal LM with a separate backbone and output head")
    # the chunked loss forms logits as hidden @ head^T (+ bias); models that transform them after the head
    # would silently get the wrong distributions, so they are refused until the loss applies the transform
    config = getattr(core, "config", None)
    # multimodal models keep the language model's settings in a sub-config (get_text_config)
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    changed = {
        key: value
        for c in configs
        for key, neutral in _LOGIT_TRANSFORMS.items()
        if (value := getattr(c, key, neutral)) not in (neutral, None)
    }
    if changed:
        settings = ", ".join(f"{k}={v}" for k, v in changed.items())
        raise ValueError(
            f"{type(core).__name__} transforms its logits after the output head ({settings}); the chunked "
            "token loss does not apply that yet, so white-box distillation of this model is not supported"
        )
    return backbone, head


# config field -> its neutral value: Gemma 2/3 soft-cap the logits, Cohere scales them, Granite divides them
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0}
