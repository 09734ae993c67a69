"""Running a teacher over examples into the store: values, determinism, resume, content keys."""

from __future__ import annotations

import shutil

import pytest
import torch

from kdistill.generate.store import load_generations
from kdistill.lm.capture import capture_topk, teacher_identity, tokenize_texts, weights_fingerprint
from kdistill.lm.sft_data import tokenize_rows
from kdistill.lm.signal_store import TeacherSignal, read_manifest
from kdistill.lm.tokenizers import tokenizer_fingerprint


@pytest.fixture
def examples(gens_dir, tokenizer):
    return tokenize_rows(tokenizer, load_generations(gens_dir), max_length=48).examples


@pytest.fixture
def key_inputs(model_dir, tokenizer):
    return {"teacher": teacher_identity(str(model_dir)), "tokenizer": tokenizer_fingerprint(tokenizer)}


def test_topk_equals_log_softmax_of_the_models_own_logits(teacher, examples, key_inputs, tmp_path):
    result = capture_topk(teacher, examples, tmp_path / "sig", k=7, key_inputs=key_inputs, batch_size=4)
    assert result.complete and result.examples == result.computed == len(examples)
    signal = TeacherSignal(result.store_dir)
    for e in examples:
        with torch.no_grad():  # one unpadded sequence at a time: an independent computation
            logits = teacher(torch.tensor([e["input_ids"]])).logits[0].double()
        reference = torch.log_softmax(logits, dim=-1)
        ids, logprobs, valid = signal.get(e["record_id"], length=len(e["input_ids"]))
        assert valid.all() and ids.shape == (len(e["input_ids"]), 7)
        expected_values, expected_ids = reference.topk(7, dim=-1)
        assert torch.equal(ids.long(), expected_ids)
        torch.testing.assert_close(logprobs.double(), expected_values, atol=2e-5, rtol=0)
        # the stored values are the reference's values at the stored ids, sorted, highest first
        assert (logprobs[:, :-1] >= logprobs[:, 1:]).all()


class _Stop(Exception):
    pass


def test_an_interrupted_capture_resumes_to_identical_tensors(teacher, examples, key_inputs, tmp_path):
    whole = capture_topk(
        teacher, examples, tmp_path / "whole", k=5, key_inputs=key_inputs, batch_size=2, shard_examples=4
    )

    def stop_after_first_shard(done: int, total: int) -> None:
        if read_manifest(tmp_path / "cut")["shards"]:
            raise _Stop

    with pytest.raises(_Stop):
        capture_topk(
            teacher,
            examples,
            tmp_path / "cut",
            k=5,
            key_inputs=key_inputs,
            batch_size=2,
            shard_examples=4,
            progress=stop_after_first_shard,
        )
    partial = TeacherSignal(tmp_path / "cut")
    assert 4 <= len(partial) < len(examples) and not partial.complete

    calls = []

    def loader():
        calls.append(1)
        return teacher

    resumed = capture_topk(
        loader, examples, tmp_path / "cut", k=5, key_inputs=key_inputs, batch_size=2, shard_examples=4
    )
    assert resumed.key == whole.key and resumed.already == len(partial)
    assert resumed.computed == len(examples) - len(partial) and calls == [1]
    a, b = TeacherSignal(tmp_path / "whole"), TeacherSignal(tmp_path / "cut")
    assert sorted(a.ids()) == sorted(b.ids()) and len(b) == len(examples) and b.complete
    for example_id in a.ids():
        for x, y in zip(a[example_id], b[example_id], strict=True):
            assert torch.equal(x, y)

    # a finished capture is not redone, and its teacher is not even loaded
    again = capture_topk(
        loader, examples, tmp_path / "cut", k=5, key_inputs=key_inputs, batch_size=2, shard_examples=4
    )
    assert again.computed == 0 and again.already == len(examples) and calls == [1]


def test_content_key_follows_k_data_tokenizer_and_weights(teacher, examples, key_inputs, model_dir, tmp_path):
    def key(k=3, data=examples, inputs=key_inputs):
        return capture_topk(teacher, data, None, k=k, key_inputs=inputs, batch_size=8).key

    base = key()
    assert key() == base  # same inputs, same key (and the default directory is found again)
    assert key(k=4) != base
    assert key(data=examples[:-1]) != base
    assert key(inputs={**key_inputs, "tokenizer": "0" * 16}) != base

    # the fingerprints themselves: a copy of the weights is the same teacher, other weights are not
    copy = shutil.copytree(model_dir, tmp_path / "copy")
    assert weights_fingerprint(copy) == weights_fingerprint(model_dir)
    from tests.fixtures.tiny_lm import tiny_llama

    tiny_llama(teacher.config.vocab_size, seed=1).save_pretrained(copy)
    assert weights_fingerprint(copy) != weights_fingerprint(model_dir)
    assert key(inputs={**key_inputs, "teacher": teacher_identity(str(model_dir), dtype="bfloat16")}) != base
    from tests.fixtures.tiny_lm import train_tokenizer

    other = train_tokenizer(384)
    assert tokenizer_fingerprint(other) != key_inputs["tokenizer"]


def test_texts_are_chunked_to_max_length_with_stable_ids(tokenizer):
    rows = [{"id": "doc", "text": " ".join(["object identity"] * 40)}, {"id": 7, "text": "x"}]
    examples = tokenize_texts(tokenizer, rows, max_length=16)
    whole = tokenizer(rows[0]["text"])["input_ids"]
    chunks = [e for e in examples if e["record_id"].startswith("doc#")]
    assert [e["record_id"] for e in chunks] == [f"doc#{i}" for i in range(len(chunks))]
    assert sum((e["input_ids"] for e in chunks), []) == whole[: sum(len(e["input_ids"]) for e in chunks)]
    assert all(2 <= len(e["input_ids"]) <= 16 for e in examples)
    assert len(tokenizer("x")["input_ids"]) == 1  # nothing to predict: row 7 gives no example
    assert not [e for e in examples if e["record_id"].startswith("7#")]
