"""The deploy columns of an LM report: each model's size as GGUF and its generated tokens/s in llama.cpp.

PyTorch on a CPU is not where a small LM is deployed; llama.cpp (and Ollama, built on it) is, and a student
that is barely faster in PyTorch may be much faster there, or not. So every model of a run is written as a
GGUF (kdistill's exporter, `kdistill export --gguf`) and timed in llama.cpp in turns, on the run's held-out
prompts (kdistill.export.llama_speed). A model the exporter refuses (not a Llama, a tokenizer it cannot
carry) keeps its other columns and says why; a machine without llama-cpp-python gets the sizes and the
reason instead of speeds. The run never fails here: these are measurements beside the result, not the result.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from kdistill.lm.config import LMDeployConfig

__all__ = ["DEPLOY_KEYS", "deploy_metrics", "write_gguf"]

# what deploy_metrics gives each model, for its metrics.json row
DEPLOY_KEYS = (
    "gguf_bytes",
    "gguf_type",
    "deploy_tokens_per_s",
    "deploy_tokens_per_s_min",
    "deploy_tokens_per_s_max",
    "deploy_prompt_tokens_per_s",
)


def write_gguf(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path, *, type: str, work_dir: Path
) -> Path:
    """`model` as one GGUF at `out`, through a Hugging Face folder under `work_dir` that is removed after.

    A GGUF-loaded model (the teacher) is rebuilt as a plain one first: transformers will not save it as it
    is. Raises ValueError when the exporter refuses the model (not a Llama, tokenizer, rope scaling)."""
    from kdistill.export.gguf import SUPPORTED_MODEL_TYPES, export_gguf
    from kdistill.lm.models import is_saveable, rebuild
    from kdistill.lm.train import save_model

    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:  # refused before writing a folder the size of the model
        raise ValueError(
            f"model_type {model_type!r} cannot be exported to GGUF; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    folder = work_dir / f"{out.stem}-hf"
    try:
        save_model(model if is_saveable(model) else rebuild(model), folder, tokenizer)
        return export_gguf(folder, out, type=type)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "model"


def _prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str | Mapping[str, Any]], max_length: int | None
) -> list[list[int]]:
    """The ids each prompt has in training and evaluation (chat template's generation prompt), cut to the
    last `max_length` tokens: llama.cpp is timed on exactly what the PyTorch timing phase feeds."""
    from kdistill.lm.sft_data import encode_prompt

    rows = [{"prompt": p} if isinstance(p, str) else p for p in prompts]
    ids = [encode_prompt(tokenizer, row) for row in rows]
    return [i[-max_length:] if max_length else i for i in ids]


def deploy_metrics(
    models: Mapping[str, tuple[nn.Module, PreTrainedTokenizerBase]],
    prompts: Sequence[str | Mapping[str, Any]],
    cfg: LMDeployConfig,
    *,
    work_dir: Path,
    threads: int,
    max_prompt_length: int | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per model name its DEPLOY_KEYS (None where not measured), and the record for metrics["deploy"].

    `prompts`: prompt texts or rows ({"prompt"} or {"messages"}, as held-out rows are), rendered with each
    model's own tokenizer. GGUFs are written under `work_dir` (created) and deleted after timing unless
    `cfg.keep`. The record: runtime, llama-cpp-python version, settings, the machine's load and `busy`, and
    `not_exported` / `not_measured` saying why a size or the speeds are missing."""
    from kdistill.export.llama_speed import LlamaCppError, llama_cpp_speeds

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {name: dict.fromkeys(DEPLOY_KEYS) for name in models}
    ggufs: dict[str, Path] = {}
    ids: dict[str, list[list[int]]] = {}
    not_exported: dict[str, str] = {}
    record: dict[str, Any] = {"gguf_type": cfg.gguf, "new_tokens": cfg.new_tokens, "rounds": cfg.rounds}
    try:
        for name, (model, tokenizer) in models.items():
            out = work_dir / f"{_file_name(name)}.{cfg.gguf}.gguf"
            try:
                write_gguf(model, tokenizer, out, type=cfg.gguf, work_dir=work_dir)
            except (
                ValueError,
                OSError,
            ) as err:  # the exporter's refusals, a full disk: a reason, not a crash
                not_exported[name] = str(err)
                continue
            ggufs[name] = out
            rows[name] |= {"gguf_bytes": out.stat().st_size, "gguf_type": cfg.gguf}
            ids[name] = _prompt_ids(tokenizer, prompts, max_prompt_length)
        if not ggufs:
            record["not_measured"] = "no model could be exported to GGUF"
        else:
            try:
                speeds = llama_cpp_speeds(
                    ggufs,
                    ids,
                    new_tokens=cfg.new_tokens,
                    rounds=cfg.rounds,
                    threads=threads,
                    python=cfg.llama_cpp_python,
                )
            except LlamaCppError as err:
                speeds = {"models": None, "reason": str(err), "record": {}}
            record |= speeds["record"]
            if speeds["models"] is None:
                record["not_measured"] = speeds["reason"]
            else:
                for name, got in speeds["models"].items():
                    rows[name] |= {
                        "deploy_tokens_per_s": got["generated_tokens_per_s"],
                        "deploy_tokens_per_s_min": got["generated_tokens_per_s_min"],
                        "deploy_tokens_per_s_max": got["generated_tokens_per_s_max"],
                        "deploy_prompt_tokens_per_s": got["prompt_tokens_per_s"],
                    }
                record["models"] = {
                    name: {k: v for k, v in got.items() if k != "gguf"}
                    for name, got in speeds["models"].items()
                }
    finally:
        if not cfg.keep:
            for path in ggufs.values():
                path.unlink(missing_ok=True)
    record["busy"] = bool(record.get("busy", False))
    record["gguf_files"] = {name: str(path) for name, path in ggufs.items()} if cfg.keep else None
    if not_exported:
        record["not_exported"] = not_exported
    return rows, record
