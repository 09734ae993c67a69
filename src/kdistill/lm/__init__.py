"""Causal-LM students: teacher answers -> SFT data, layer pruning from the teacher, fine-tuning, evaluation.

Components a recipe (`kdistill.lm.recipe`) wires: `tokenize_rows` -> `prune_layers(teacher, choose_layers(
block_influence(...)))` -> `train_sft(student, examples, cfg.train, steps=...)` -> `evaluate_student`. The
training loop and the objectives take their config section itself (`LMTrainConfig`, `LMDistillConfig`,
`LoraConfig` of `kdistill.lm.config`); nothing else reads a config.

Names are imported on first use, so reading a config of this task does not load torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IGNORE_INDEX": "kdistill.lm.sft_data",
    "SFTResult": "kdistill.lm.train",
    "TokenizedRows": "kdistill.lm.sft_data",
    "TrainingDiverged": "kdistill.lm.train",
    "block_influence": "kdistill.lm.prune",
    "calibration_batches": "kdistill.lm.prune",
    "choose_layers": "kdistill.lm.prune",
    "collate": "kdistill.lm.sft_data",
    "count_parameters": "kdistill.lm.models",
    "directory_size_bytes": "kdistill.lm.models",
    "encode_prompt": "kdistill.lm.sft_data",
    "evaluate_student": "kdistill.lm.evaluate",
    "exact_match": "kdistill.lm.evaluate",
    "generate_answers": "kdistill.lm.evaluate",
    "lcs_length": "kdistill.lm.evaluate",
    "load_causal_lm": "kdistill.lm.models",
    "load_tokenizer": "kdistill.lm.models",
    "merge_lora": "kdistill.lm.train",
    "model_from_config": "kdistill.lm.models",
    "prune_layers": "kdistill.lm.prune",
    "pruning_report": "kdistill.lm.prune",
    "rebuild": "kdistill.lm.models",
    "response_perplexity": "kdistill.lm.evaluate",
    "rouge_l_f1": "kdistill.lm.evaluate",
    "save_model": "kdistill.lm.train",
    "size_on_disk_bytes": "kdistill.lm.models",
    "teacher_agreement": "kdistill.lm.evaluate",
    "tokenize_rows": "kdistill.lm.sft_data",
    "train_sft": "kdistill.lm.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
