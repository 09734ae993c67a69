"""Teacher-embedding cache: killed mid-way and rerun == uninterrupted; rows joined by id; keys keep apart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdistill.encoders.cache import (
    EmbeddingCacheError,
    TeacherEmbeddings,
    cache_teacher_embeddings,
    default_embedding_dir,
    embedding_cache_key,
)
from kdistill.encoders.models import load_encoder


@pytest.fixture
def corpus(sentences) -> dict[str, str]:
    return {f"t{i:02d}": s for i, s in enumerate(sentences[:14])}  # shards of 4: 4 + 4 + 4 + 2


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, teacher_dir, teacher, corpus) -> None:
    store = tmp_path / "killed"
    corpus_file = tmp_path / "corpus.json"
    corpus_file.write_text(json.dumps(corpus))
    script = Path(__file__).with_name("cache_kill_main.py")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(teacher_dir), str(corpus_file), str(store)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    manifest = json.loads((store / "manifest.json").read_text())
    assert [s["ids"] for s in manifest["shards"]] == [["t00", "t01", "t02", "t03"]]
    assert manifest["complete"] is False
    # what a kill between writing a shard and listing it, or during a write, leaves behind
    (store / "shard-00001.safetensors").write_bytes(b"half a shard")
    (store / ".manifest.json.x1y2.tmp").write_text("{")

    cache, report = cache_teacher_embeddings(teacher, corpus, store_dir=store, shard_size=4, batch_size=2)
    assert (report.already_stored, report.embedded) == (4, 10)
    assert sorted(report.orphan_files_removed) == [".manifest.json.x1y2.tmp", "shard-00001.safetensors"]
    assert cache.complete and len(cache) == 14

    manifest = json.loads((store / "manifest.json").read_text())
    stored = [i for s in manifest["shards"] for i in s["ids"]]
    assert sorted(stored) == sorted(corpus) and len(stored) == len(set(stored))  # every id once

    whole, _ = cache_teacher_embeddings(
        teacher, corpus, store_dir=tmp_path / "whole", shard_size=4, batch_size=2
    )
    ids = sorted(corpus)
    assert torch.equal(cache.get(ids), whole.get(ids))
    # joined by id: each row is the teacher's embedding of that id's text
    expected = teacher.encode([corpus[i] for i in ids], batch_size=1)
    assert torch.allclose(cache.get(ids), expected, atol=1e-5)


def test_rerun_embeds_nothing_and_order_does_not_matter(tmp_path, teacher, corpus) -> None:
    cache, first = cache_teacher_embeddings(teacher, corpus, cache_root=tmp_path, shard_size=8)
    reordered = dict(reversed(list(corpus.items())))
    again, second = cache_teacher_embeddings(teacher, reordered, cache_root=tmp_path, shard_size=8)
    assert first.store_dir == second.store_dir == default_embedding_dir(first.key, tmp_path)
    assert (first.embedded, second.already_stored, second.embedded) == (14, 14, 0)
    assert torch.equal(again.get(["t05", "t01"]), cache.get(["t01", "t05"]).flip(0))
    with pytest.raises(KeyError, match="nope"):
        cache.get(["t01", "nope"])


def test_other_teacher_or_texts_never_share_rows(tmp_path, teacher_dir, teacher, corpus) -> None:
    store = tmp_path / "store"
    cache_teacher_embeddings(teacher, corpus, store_dir=store, shard_size=8)
    cls_teacher = load_encoder(teacher_dir, pooling="cls")
    with pytest.raises(EmbeddingCacheError, match="pooling"):
        cache_teacher_embeddings(cls_teacher, corpus, store_dir=store)
    edited = corpus | {"t03": corpus["t03"] + " (edited)"}
    with pytest.raises(EmbeddingCacheError, match="data"):
        cache_teacher_embeddings(teacher, edited, store_dir=store)
    pairs = list(corpus.items())
    assert embedding_cache_key(teacher, pairs)[0] != embedding_cache_key(cls_teacher, pairs)[0]
    TeacherEmbeddings(store).check_teacher(teacher)
    with pytest.raises(EmbeddingCacheError, match="teacher"):
        TeacherEmbeddings(store).check_teacher(cls_teacher)


def test_a_modified_shard_is_refused(tmp_path, teacher, corpus) -> None:
    store = tmp_path / "store"
    cache_teacher_embeddings(teacher, corpus, store_dir=store, shard_size=8)
    shard = store / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # flip bits of the last embedding value, size unchanged
    shard.write_bytes(bytes(data))
    with pytest.raises(EmbeddingCacheError, match="sha256"):
        TeacherEmbeddings(store)


def test_duplicate_ids_are_refused(teacher) -> None:
    with pytest.raises(EmbeddingCacheError, match="twice"):
        cache_teacher_embeddings(teacher, [("a", "x"), ("a", "y")])
