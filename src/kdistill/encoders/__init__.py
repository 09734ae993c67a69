"""Text-encoder distillation: a sentence-embedding teacher into a small transformer or static embeddings.

Components only (a recipe wires them):
    models    TextEncoder / load_encoder (teacher, pooling read from sentence-transformers files),
              cut_layers / choose_encoder_layers / encoder_from_config (transformer students),
              StaticEmbeddingStudent (one vector per token)
    corpus    distillation text from files, JSONL or records -> {id: text}
    cache     teacher embeddings of a corpus: content-addressed, resumable safetensors shards
    distill   EmbeddingDistiller (loss terms + projection) and train_embedding_student (the loop, driven
              by a student's `train:` section, EncoderTrainConfig)
    save      save_sentence_transformer: a directory `SentenceTransformer(path)` loads
    evaluate  recall@k, Spearman of pairwise similarities, throughput, footprint

Names are imported on first use, so reading a config of this task does not load torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CacheReport": "kdistill.encoders.cache",
    "EmbeddingCacheError": "kdistill.encoders.cache",
    "EmbeddingDistiller": "kdistill.encoders.distill",
    "StaticEmbeddingStudent": "kdistill.encoders.models",
    "TeacherEmbeddings": "kdistill.encoders.cache",
    "TextEncoder": "kdistill.encoders.models",
    "cache_teacher_embeddings": "kdistill.encoders.cache",
    "choose_encoder_layers": "kdistill.encoders.models",
    "corpus_from_files": "kdistill.encoders.corpus",
    "corpus_from_records": "kdistill.encoders.corpus",
    "cut_layers": "kdistill.encoders.models",
    "embedding_cache_key": "kdistill.encoders.cache",
    "encode_throughput": "kdistill.encoders.evaluate",
    "encoder_from_config": "kdistill.encoders.models",
    "evaluate_encoder": "kdistill.encoders.evaluate",
    "evenly_spaced_layers": "kdistill.encoders.models",
    "footprint": "kdistill.encoders.evaluate",
    "layer_influence": "kdistill.encoders.models",
    "load_encoder": "kdistill.encoders.models",
    "load_saved_encoder": "kdistill.encoders.save",
    "pca_reduce": "kdistill.encoders.models",
    "planned_steps": "kdistill.encoders.distill",
    "read_sentence_transformers_layout": "kdistill.encoders.models",
    "recall_at_k": "kdistill.encoders.evaluate",
    "save_sentence_transformer": "kdistill.encoders.save",
    "sif_weights": "kdistill.encoders.models",
    "similarity_spearman": "kdistill.encoders.evaluate",
    "text_id": "kdistill.encoders.corpus",
    "train_embedding_student": "kdistill.encoders.distill",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
