"""Causal-LM students: teacher answers -> SFT data, layer pruning from the teacher, fine-tuning, evaluation.

Components only (no config reading): a recipe wires `tokenize_rows` -> `prune_layers(teacher, choose_layers(
block_influence(...)))` -> `train_sft` -> `evaluate_student`.
"""

from kdistill.lm.evaluate import (
    evaluate_student,
    exact_match,
    generate_answers,
    lcs_length,
    response_perplexity,
    rouge_l_f1,
    teacher_agreement,
)
from kdistill.lm.models import (
    count_parameters,
    directory_size_bytes,
    load_causal_lm,
    load_tokenizer,
    model_from_config,
    rebuild,
    size_on_disk_bytes,
)
from kdistill.lm.prune import (
    block_influence,
    calibration_batches,
    choose_layers,
    prune_layers,
    pruning_report,
)
from kdistill.lm.sft_data import IGNORE_INDEX, TokenizedRows, collate, encode_prompt, tokenize_rows
from kdistill.lm.train import (
    LoraSettings,
    SFTConfig,
    SFTResult,
    TrainingDiverged,
    merge_lora,
    save_model,
    train_sft,
)

__all__ = [
    "IGNORE_INDEX",
    "LoraSettings",
    "SFTConfig",
    "SFTResult",
    "TokenizedRows",
    "TrainingDiverged",
    "block_influence",
    "calibration_batches",
    "choose_layers",
    "collate",
    "count_parameters",
    "directory_size_bytes",
    "encode_prompt",
    "evaluate_student",
    "exact_match",
    "generate_answers",
    "lcs_length",
    "load_causal_lm",
    "load_tokenizer",
    "merge_lora",
    "model_from_config",
    "prune_layers",
    "pruning_report",
    "rebuild",
    "response_perplexity",
    "rouge_l_f1",
    "save_model",
    "size_on_disk_bytes",
    "teacher_agreement",
    "tokenize_rows",
    "train_sft",
]
