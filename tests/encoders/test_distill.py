"""The distiller's terms and projection, a short training run from the cache, and the corpus loaders."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdistill.encoders.cache import cache_teacher_embeddings
from kdistill.encoders.config import EncoderTrainConfig
from kdistill.encoders.corpus import corpus_from_files, corpus_from_records, text_id
from kdistill.encoders.distill import (
    EmbeddingDistiller,
    TrainingStopped,
    planned_steps,
    train_embedding_student,
)
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
        EmbeddingDistiller(student, teacher.embedding_dim, {"cosin": 1.0})


def test_static_student_learns_from_cached_teacher_embeddings(tmp_path, teacher, sentences) -> None:
    corpus = {f"t{i}": s for i, s in enumerate(sentences[:64])}
    cache, _ = cache_teacher_embeddings(teacher, corpus, store_dir=tmp_path / "cache", batch_size=16)
    student = StaticEmbeddingStudent.from_teacher(teacher, dims=16)
    distiller = EmbeddingDistiller(student, teacher.embedding_dim, {"cosine": 1.0, "similarity_matrix": 1.0})
    train = EncoderTrainConfig(steps=40, batch_size=16, lr=2e-2)
    torch.manual_seed(0)  # the projection's initialisation
    history = train_embedding_student(distiller, list(corpus.items()), cache, train, log_every=10)
    assert [h["step"] for h in history] == [10, 20, 30, 40]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    with pytest.raises(KeyError, match="no cached teacher embedding"):
        train_embedding_student(distiller, [("other", "text")], cache, train, log_every=10)


@pytest.fixture
def small_cache(tmp_path, teacher, sentences):
    corpus = {f"t{i}": s for i, s in enumerate(sentences[:24])}
    cache, _ = cache_teacher_embeddings(teacher, corpus, store_dir=tmp_path / "cache", batch_size=8)
    return list(corpus.items()), cache


def test_steps_come_from_the_train_section_unless_given(teacher, small_cache) -> None:
    pairs, cache = small_cache
    assert planned_steps(EncoderTrainConfig(epochs=2.5, batch_size=8), 24) == 8  # ceil(2.5 * 24 / 8)
    assert planned_steps(EncoderTrainConfig(steps=5, epochs=9), 24) == 5
    assert planned_steps(EncoderTrainConfig(epochs=0.01, batch_size=8), 24) == 1
    student = StaticEmbeddingStudent.from_teacher(teacher)
    with pytest.raises(ValueError, match="loss weights must be >= 0 with at least one > 0"):
        EmbeddingDistiller(student, teacher.embedding_dim, {"cosine": 0.0})
    distiller = EmbeddingDistiller(student, teacher.embedding_dim, {"cosine": 1.0})
    with pytest.raises(ValueError, match="need steps >= 1 and log_every >= 1, got steps=4, log_every=0"):
        train_embedding_student(distiller, pairs, cache, EncoderTrainConfig(), steps=4, log_every=0)


def test_the_lr_schedule_is_linear_warmup_then_cosine_to_zero(teacher, small_cache) -> None:
    pairs, cache = small_cache

    def lrs(train: EncoderTrainConfig, steps: int | None = None) -> list[float]:
        student = StaticEmbeddingStudent.from_teacher(teacher)
        distiller = EmbeddingDistiller(student, teacher.embedding_dim, {"cosine": 1.0})
        history = train_embedding_student(distiller, pairs, cache, train, steps=steps, log_every=1)
        return [h["lr"] for h in history]

    # 6 steps, 2 of warmup: lr/2, lr, then 0.5 (1 + cos(pi p)) at p = 0, 1/4, 2/4, 3/4 of the decay
    expected = [0.05, 0.1] + [0.1 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs(EncoderTrainConfig(steps=99, batch_size=4, lr=0.1, warmup_steps=2), steps=6) == pytest.approx(
        expected, rel=1e-12
    )
    # warmup longer than the run: capped at steps - 1, so the last step is at the peak
    assert lrs(EncoderTrainConfig(steps=3, batch_size=4, lr=0.1, warmup_steps=10)) == pytest.approx(
        [0.05, 0.1, 0.1], rel=1e-12
    )
    # epochs: 1.5 passes over 24 texts in batches of 8 -> 5 steps
    assert len(lrs(EncoderTrainConfig(epochs=1.5, batch_size=8, lr=0.1))) == 5


def test_an_interrupted_training_resumes_to_the_same_weights(tmp_path, teacher, small_cache) -> None:
    pairs, cache = small_cache
    train = EncoderTrainConfig(steps=6, batch_size=4, lr=0.05, warmup_steps=2, checkpoint_every=2)

    def distiller() -> EmbeddingDistiller:
        torch.manual_seed(0)  # the projection starts the same
        student = StaticEmbeddingStudent.from_teacher(teacher, dims=8)
        return EmbeddingDistiller(student, teacher.embedding_dim, {"cosine": 1.0, "rkd_angle": 0.5})

    reference = distiller()
    full = train_embedding_student(reference, pairs, cache, train, seed=3, log_every=2)
    resumed = distiller()
    with pytest.raises(TrainingStopped, match="stopped after step 3 of 6"):
        train_embedding_student(
            resumed, pairs, cache, train, seed=3, log_every=2, checkpoint_dir=tmp_path / "ck", stop_after=3
        )
    again, logged = distiller(), []
    history = train_embedding_student(
        again, pairs, cache, train, seed=3, log_every=2, checkpoint_dir=tmp_path / "ck", on_log=logged.append
    )
    assert [e["step"] for e in logged] == [4, 6]  # continued from step 3, not from the start
    assert [h["step"] for h in history] == [2, 4, 6]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in full], rel=1e-6)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, atol=1e-6, rtol=0)


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
