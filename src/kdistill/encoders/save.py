"""Save a distilled encoder so that `sentence_transformers.SentenceTransformer(path)` loads it directly.

Both students are written in sentence-transformers' classic layout (module types named
`sentence_transformers.models.*`, legacy pooling keys), which every sentence-transformers version since
2.x reads, 6.x included; writing the files needs no sentence-transformers install.

Transformer student (`TextEncoder`)::

    config.json, model.safetensors, tokenizer files     the Hugging Face model (save_pretrained)
    sentence_bert_config.json                            max_seq_length, do_lower_case
    modules.json                                         Transformer -> Pooling (-> Normalize)
    1_Pooling/config.json                                word_embedding_dimension, pooling_mode_*_tokens
    2_Normalize/config.json                              "{}", only when the encoder normalises

Static student (`StaticEmbeddingStudent`), the files `sentence_transformers.models.StaticEmbedding.load`
reads::

    model.safetensors                                    "embedding.weight" (vocab, dims) float32 or float16
    tokenizer.json                                       the fast tokenizer (no padding, no truncation)
    modules.json                                         StaticEmbedding (-> Normalize)
    1_Normalize/config.json                              "{}", only when the student normalises

A float16 static student (`dtype="float16"`, as model2vec ships its vectors) is half the bytes;
`load_saved_encoder` computes with it in float32, while sentence-transformers' `StaticEmbedding` keeps the
float16 weight and computes in float16 (its embeddings are float16 and differ from ours by float16
rounding of the mean and the norm).

Plus `config_sentence_transformers.json` (cosine similarity, no prompts) and `kdistill_encoder.json`
(what kdistill saved, for `load_saved_encoder`). The directory is written beside the target and renamed
into place, so a crash leaves the old directory or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import torch

from kdistill.encoders.models import StaticEmbeddingStudent, TextEncoder, load_encoder
from kdistill.io import make_readable

__all__ = ["load_saved_encoder", "save_sentence_transformer"]

KDISTILL_FILE = "kdistill_encoder.json"
SaveDtype = Literal["float32", "float16"]
_TYPES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Normalize": "sentence_transformers.models.Normalize",
    "StaticEmbedding": "sentence_transformers.models.StaticEmbedding",
}


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _modules(*kinds_and_paths: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"idx": i, "name": str(i), "path": path, "type": _TYPES[kind]}
        for i, (kind, path) in enumerate(kinds_and_paths)
    ]


def _pooling_config(dim: int, mode: str) -> dict[str, Any]:
    return {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }


def _write_transformer(encoder: TextEncoder, out: Path) -> dict[str, Any]:
    encoder.model.save_pretrained(out)
    encoder.tokenizer.save_pretrained(out)
    _write_json(
        out / "sentence_bert_config.json",
        {"max_seq_length": encoder.max_seq_length, "do_lower_case": encoder.do_lower_case},
    )
    modules = [("Transformer", ""), ("Pooling", "1_Pooling")]
    _write_json(out / "1_Pooling" / "config.json", _pooling_config(encoder.embedding_dim, encoder.pooling))
    if encoder.normalize:
        modules.append(("Normalize", "2_Normalize"))
        _write_json(out / "2_Normalize" / "config.json", {})
    _write_json(out / "modules.json", _modules(*modules))
    return {"kind": "transformer", "pooling": encoder.pooling}


def _write_static(student: StaticEmbeddingStudent, out: Path, dtype: SaveDtype) -> dict[str, Any]:
    from safetensors.torch import save_file

    source = student.embedding.weight.detach().to("cpu", torch.float32)
    weight = source.to(getattr(torch, dtype)).contiguous()
    if (torch.isinf(weight) & torch.isfinite(source)).any():
        raise ValueError(
            f"static student: a vector value of magnitude {source.abs().max().item():g} overflows {dtype} "
            f"(at most {torch.finfo(weight.dtype).max:g}); save it as float32"
        )
    save_file({"embedding.weight": weight}, str(out / "model.safetensors"))
    student.tokenizer.save(str(out / "tokenizer.json"))
    modules = [("StaticEmbedding", "")]
    if student.normalize:
        modules.append(("Normalize", "1_Normalize"))
        _write_json(out / "1_Normalize" / "config.json", {})
    _write_json(out / "modules.json", _modules(*modules))
    return {"kind": "static", "vocab_size": int(weight.shape[0]), "dtype": dtype}


def save_sentence_transformer(
    encoder: TextEncoder | StaticEmbeddingStudent,
    path: str | os.PathLike[str],
    *,
    dtype: SaveDtype = "float32",
) -> Path:
    """Write `encoder` to `path` (replaced if it exists) in sentence-transformers' layout; returns the path.
    `dtype` float16 applies to static students only (their vectors, rounded to nearest)."""
    import transformers

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    if dtype != "float32" and not isinstance(encoder, StaticEmbeddingStudent):
        raise ValueError(f"dtype {dtype} applies to static students only, got a {type(encoder).__name__}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if isinstance(encoder, TextEncoder):
            info = _write_transformer(encoder, tmp)
        elif isinstance(encoder, StaticEmbeddingStudent):
            info = _write_static(encoder, tmp, dtype)
        else:
            raise TypeError(
                f"cannot save a {type(encoder).__name__}; expected a TextEncoder or StaticEmbeddingStudent"
            )
        _write_json(
            tmp / "config_sentence_transformers.json",
            {
                "__version__": {"transformers": transformers.__version__, "pytorch": torch.__version__},
                "prompts": {},
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            },
        )
        info |= {
            "format": "kdistill.encoder/1",
            "embedding_dim": encoder.embedding_dim,
            "normalize": encoder.normalize,
        }
        _write_json(tmp / KDISTILL_FILE, info)
        make_readable(tmp)  # safetensors' save_file (and save_pretrained) leave their files 0600
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_saved_encoder(path: str | os.PathLike[str]) -> TextEncoder | StaticEmbeddingStudent:
    """Load a directory written by `save_sentence_transformer` (or any Transformer -> Pooling model); a
    static student's vectors, float32 or float16 on disk, are computed with in float32."""
    root = Path(path)
    modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[:1] != ["StaticEmbedding"]:
        return load_encoder(root)
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    weight = load_file(str(root / "model.safetensors"))["embedding.weight"].float()
    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    return StaticEmbeddingStudent(tokenizer, weight, normalize="Normalize" in kinds[1:])
