"""Retrieval recall@k, Spearman of pairwise similarities, throughput and footprint, on hand-computed cases."""

from __future__ import annotations

import math
import time

import pytest
import torch

from kdistill.encoders.evaluate import (
    encode_throughput,
    evaluate_encoder,
    footprint,
    pairwise_cosines,
    recall_at_k,
    similarity_spearman,
)
from kdistill.encoders.models import StaticEmbeddingStudent
from kdistill.encoders.save import save_sentence_transformer


def test_recall_at_k_hand_computed() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    docs = torch.tensor([[1.0, 0.1], [0.2, 1.0], [-1.0, 0.0]])
    # q0 -> d0 ranks 1st, q1 -> d1 1st, q2 -> d2 (cos -0.71) 3rd behind d1 (0.83) and d0 (0.77)
    assert recall_at_k(queries, docs, ks=(1, 2, 3)) == pytest.approx(
        {"recall@1": 2 / 3, "recall@2": 2 / 3, "recall@3": 1.0}
    )
    # q2's document is d1 instead: first; q0 -> d2 last, q1 -> d0 2nd (0.0995 > 0 = cos with d2)
    assert recall_at_k(queries, docs, relevant=[2, 0, 1], ks=(1, 2, 10)) == pytest.approx(
        {"recall@1": 1 / 3, "recall@2": 2 / 3, "recall@10": 1.0}
    )


def test_recall_counts_ties_against_the_query_and_ignores_scale() -> None:
    q = torch.tensor([[1.0, 0.0]])
    docs = torch.tensor([[1.0, 0.0], [5.0, 0.0], [0.0, 1.0]])  # d0 and d1 tie at cosine 1
    assert recall_at_k(q, docs, ks=(1, 2)) == {"recall@1": 0.0, "recall@2": 1.0}
    with pytest.raises(ValueError, match="relevant"):
        recall_at_k(q, docs, relevant=[3])


def _on_circle(degrees: list[float]) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def test_spearman_hand_computed() -> None:
    # pair angles, teacher: 10 30 70 20 60 40 -> ranks 1 3 6 2 5 4; student: 10 30 55 20 45 25 -> 1 4 6 2 5 3
    teacher = _on_circle([0, 10, 30, 70])
    student = _on_circle([0, 10, 30, 55])
    assert similarity_spearman(student, teacher) == pytest.approx(1 - 6 * 2 / (6 * 35))
    assert similarity_spearman(3 * teacher, teacher) == pytest.approx(1.0)
    # 3 texts, pair angles teacher 10 40 30 -> ranks 1 3 2, student 50 60 10 -> 2 3 1: rho = 1 - 6*2/(3*8)
    assert similarity_spearman(_on_circle([0, 50, 60]), _on_circle([0, 10, 40])) == pytest.approx(0.5)
    assert pairwise_cosines(_on_circle([0, 90, 180])).tolist() == pytest.approx([0.0, -1.0, 0.0], abs=1e-12)


class _SlowEncoder:
    """Sleeps 10 ms per call and records the thread count it ran with."""

    embedding_dim = 2

    def __init__(self) -> None:
        self.threads: list[int] = []

    def encode(self, texts, batch_size=32):
        self.threads.append(torch.get_num_threads())
        time.sleep(0.01)
        return torch.zeros(len(texts), 2)


def test_throughput_uses_the_given_threads_and_restores_them() -> None:
    enc = _SlowEncoder()
    before = torch.get_num_threads()
    rate = encode_throughput(enc, ["a"] * 50, batch_size=50, threads=2, repeats=3)
    assert enc.threads == [2, 2, 2, 2]  # warm-up + 3 timed passes
    assert torch.get_num_threads() == before
    assert 0 < rate <= 50 / 0.01  # each pass takes at least its 10 ms sleep


def test_footprint_of_a_static_student(tmp_path, teacher) -> None:
    student = StaticEmbeddingStudent.from_teacher(teacher, dims=8)
    path = save_sentence_transformer(student, tmp_path / "s")
    out = footprint(student, path)
    assert out["parameters"] == len(teacher.tokenizer) * 8
    assert out["parameters"] * 4 < out["state_bytes"] < out["parameters"] * 4 + 1024
    assert out["saved_bytes"] == sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_evaluate_teacher_against_itself(teacher, sentences) -> None:
    queries, docs = sentences[:6], sentences[6:12]
    out = evaluate_encoder(
        teacher,
        teacher,
        queries=queries,
        documents=docs,
        heldout_texts=sentences[12:20],
        batch_size=4,
        threads=1,
    )
    assert out["spearman_vs_teacher"] == pytest.approx(1.0)
    expected = recall_at_k(teacher.encode(queries), teacher.encode(docs))
    for side in ("student", "teacher"):
        assert {k: out[side][k] for k in expected} == expected
    assert out["student"]["parameters"] == sum(p.numel() for p in teacher.parameters())
    assert out["settings"] == {"batch_size": 4, "threads": 1}
