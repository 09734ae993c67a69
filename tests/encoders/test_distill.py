"""The distiller's terms and projection, a short training run from the cache, and the corpus loaders."""

from __future__ import annotations

import json

import pytest
import torch

from kdistill.encoders.cache import cache_teacher_embeddings
from kdistill.encoders.corpus import corpus_from_files, corpus_from_records, text_id
from kdistill.encoders.distill import EmbeddingDistillConfig, EmbeddingDistiller, train_embedding_student
from kdistill.encoders.models import StaticEmbeddingStudent, cut_layers
from kdistill.losses.embedding import embedding_cosine, similarity_matrix_loss


def test_terms_are_weighted_losses_with_a_projection_only_for_row_wise_terms(teacher, sentences) -> None:
    student = StaticEmbeddingStudent.from_teacher(teacher, dims=8)
    distiller = EmbeddingDistiller(
        student, teacher.embedding_dim, {"cosine": 2.0, "similarity_matrix": 0.5, "mse": 0}
    )
    assert distiller.extra_parameters() == 8 * teacher.embedding_dim
    texts = sentences[:6]
    t = teacher.encode(texts)
    terms = distiller(student.tokenize(texts), t)
    s = student(student.tokenize(texts))
    assert set(terms) == {"emb/cosine", "emb/similarity_matrix"}
    assert terms["emb/cosine"].item() == pytest.approx(
        2.0 * embedding_cosine(distiller.projection(s), t).item()
    )
    assert terms["emb/similarity_matrix"].item() == pytest.approx(0.5 * similarity_matrix_loss(s, t).item())
    # same width, or only relation terms: no projection
    assert (
        EmbeddingDistiller(cut_layers(teacher, [0]), teacher.embedding_dim, {"mse": 1.0}).projection is None
    )
    assert EmbeddingDistiller(student, teacher.embedding_dim, {"rkd_distance": 1.0}).projection is None
    with pytest.raises(ValueError, match="unknown embedding loss"):
        EmbeddingDistillConfig(losses={"cosin": 1.0})


def test_static_student_learns_from_cached_teacher_embeddings(tmp_path, teacher, sentences) -> None:
    corpus = {f"t{i}": s for i, s in enumerate(sentences[:64])}
    cache, _ = cache_teacher_embeddings(teacher, corpus, store_dir=tmp_path / "cache", batch_size=16)
    student = StaticEmbeddingStudent.from_teacher(teacher, dims=16)
    distiller = EmbeddingDistiller(student, teacher.embedding_dim, {"cosine": 1.0, "similarity_matrix": 1.0})
    cfg = EmbeddingDistillConfig(
        steps=40, batch_size=16, lr=2e-2, log_every=10, losses={"cosine": 1.0, "similarity_matrix": 1.0}
    )
    torch.manual_seed(0)  # the projection's initialisation
    history = train_embedding_student(distiller, list(corpus.items()), cache, cfg)
    assert [h["step"] for h in history] == [10, 20, 30, 40]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    with pytest.raises(KeyError, match="no cached teacher embedding"):
        train_embedding_student(distiller, [("other", "text")], cache, cfg)


def test_corpus_from_files_and_records(tmp_path) -> None:
    txt = tmp_path / "a.txt"
    txt.write_text("first line\n\n  \nsecond line\nfirst line\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(
        json.dumps({"text": "third", "id": "x"}) + "\n" + json.dumps({"text": "", "id": "y"}) + "\n"
    )
    corpus = corpus_from_files([txt, jsonl])
    assert corpus == {text_id(t): t for t in ["first line", "second line", "third"]}  # duplicates collapse
    assert corpus_from_files(jsonl, id_field="id") == {"x": "third"}
    records = [{"body": "one", "k": 1}, {"body": "two", "k": 2}]
    assert corpus_from_records(records, field="body", id_field="k") == {"1": "one", "2": "two"}
    with pytest.raises(ValueError, match="twice"):
        corpus_from_records([{"text": "a", "id": 1}, {"text": "b", "id": 1}], id_field="id")
