"""Text-encoder distillation: a sentence-embedding teacher into a small transformer or static embeddings.

Components only (a recipe wires them):
    models    TextEncoder / load_encoder (teacher, pooling read from sentence-transformers files),
              cut_layers / choose_encoder_layers / encoder_from_config (transformer students),
              StaticEmbeddingStudent (one vector per token)
    corpus    distillation text from files, JSONL or records -> {id: text}
    cache     teacher embeddings of a corpus: content-addressed, resumable safetensors shards
    distill   EmbeddingDistiller (loss terms + projection) and train_embedding_student (the loop)
    save      save_sentence_transformer: a directory `SentenceTransformer(path)` loads
    evaluate  recall@k, Spearman of pairwise similarities, throughput, footprint
"""

from kdistill.encoders.cache import (
    CacheReport,
    EmbeddingCacheError,
    TeacherEmbeddings,
    cache_teacher_embeddings,
    embedding_cache_key,
)
from kdistill.encoders.corpus import corpus_from_files, corpus_from_records, text_id
from kdistill.encoders.distill import EmbeddingDistillConfig, EmbeddingDistiller, train_embedding_student
from kdistill.encoders.evaluate import (
    encode_throughput,
    evaluate_encoder,
    footprint,
    recall_at_k,
    similarity_spearman,
)
from kdistill.encoders.models import (
    StaticEmbeddingStudent,
    TextEncoder,
    choose_encoder_layers,
    cut_layers,
    encoder_from_config,
    evenly_spaced_layers,
    layer_influence,
    load_encoder,
    pca_reduce,
    read_sentence_transformers_layout,
    sif_weights,
)
from kdistill.encoders.save import load_saved_encoder, save_sentence_transformer

__all__ = [
    "CacheReport",
    "EmbeddingCacheError",
    "EmbeddingDistillConfig",
    "EmbeddingDistiller",
    "StaticEmbeddingStudent",
    "TeacherEmbeddings",
    "TextEncoder",
    "cache_teacher_embeddings",
    "choose_encoder_layers",
    "corpus_from_files",
    "corpus_from_records",
    "cut_layers",
    "embedding_cache_key",
    "encode_throughput",
    "encoder_from_config",
    "evaluate_encoder",
    "evenly_spaced_layers",
    "footprint",
    "layer_influence",
    "load_encoder",
    "load_saved_encoder",
    "pca_reduce",
    "read_sentence_transformers_layout",
    "recall_at_k",
    "save_sentence_transformer",
    "similarity_spearman",
    "sif_weights",
    "text_id",
    "train_embedding_student",
]
