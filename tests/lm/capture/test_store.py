"""The teacher-signal store: round trip, memory-mapped reads, hashes, join by id, key refusal, recovery."""

from __future__ import annotations

import json
import random

import pytest
import torch

from kdistill.lm.signal_store import (
    MANIFEST,
    SignalRows,
    TeacherSignal,
    TeacherSignalError,
    TeacherSignalWriter,
    data_fingerprint,
    read_manifest,
    signal_key,
)

K = 4


def _rows(seed: int, length: int, k: int = K) -> SignalRows:
    g = torch.Generator().manual_seed(seed)
    ids = torch.rand((length, 500), generator=g).argsort(dim=-1)[:, :k].to(torch.int32)  # distinct per row
    logprobs = -torch.rand((length, k), generator=g) * 10
    valid = torch.rand(length, generator=g) > 0.3
    ids[0, -1], logprobs[0, -1] = -1, float("-inf")  # an absent entry round-trips too
    return SignalRows(ids, logprobs, valid)


def _write(store_dir, examples: dict[str, SignalRows], *, key="k1", shard_examples=3, k=K):
    with TeacherSignalWriter(store_dir, key=key, key_inputs={"what": key}, k=k) as writer:
        for example_id, rows in examples.items():
            writer.add(example_id, rows)
            if writer.buffered >= shard_examples:
                writer.commit()
    return store_dir


@pytest.fixture
def examples():
    return {f"ex-{i}": _rows(i, 3 + i) for i in range(8)}


def test_round_trip_through_memory_mapped_shards(tmp_path, examples):
    store = _write(tmp_path / "sig", examples)
    manifest = read_manifest(store)
    assert [s["file"] for s in manifest["shards"]] == [f"shard-0000{i}.safetensors" for i in range(3)]
    assert [s["examples"] for s in manifest["shards"]] == [3, 3, 2]
    assert manifest["examples"] == 8 and manifest["rows"] == sum(3 + i for i in range(8))

    signal = TeacherSignal(store)
    assert len(signal) == 8 and signal.k == K and signal.key == "k1"
    assert signal.ids() == list(examples) and "ex-3" in signal and "ex-99" not in signal
    for example_id, expected in examples.items():
        got = signal[example_id]
        assert got.topk_ids.dtype == torch.int32 and got.topk_logprobs.dtype == torch.float32
        assert got.valid.dtype == torch.bool
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b)
        assert signal.length(example_id) == expected.valid.shape[0]


def test_reader_slices_lazily_from_the_mapped_file(tmp_path, examples):
    """The reader keeps safetensors handles (memory maps), not tensors: nothing is loaded until asked."""
    from safetensors import safe_open

    signal = TeacherSignal(_write(tmp_path / "sig", examples))
    assert all(
        type(h) is type(safe_open(str(tmp_path / "sig" / "shard-00000.safetensors"), "pt"))
        for h in signal._shards
    )
    assert not any(isinstance(v, torch.Tensor) for v in vars(signal).values())


def test_a_corrupted_shard_is_named_on_open(tmp_path, examples):
    store = _write(tmp_path / "sig", examples)
    shard = store / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside the tensor data: the file still parses
    shard.write_bytes(bytes(data))
    with pytest.raises(TeacherSignalError, match=r"shard-00001\.safetensors: sha256 mismatch"):
        TeacherSignal(store)
    TeacherSignal(store, verify=False)  # the check can be skipped (the size still matches)
    with pytest.raises(TeacherSignalError, match="sha256 mismatch"):  # a writer refuses it too
        TeacherSignalWriter(store, key="k1", key_inputs={"what": "k1"}, k=K).open()

    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(TeacherSignalError, match=r"shard-00001\.safetensors: \d+ bytes, manifest says"):
        TeacherSignal(store, verify=False)
    shard.unlink()
    with pytest.raises(TeacherSignalError, match="listed in manifest.json but missing"):
        TeacherSignal(store)


def test_batch_joins_by_id_in_any_order_and_pads(tmp_path, examples):
    signal = TeacherSignal(_write(tmp_path / "sig", examples))
    order = list(examples)
    random.Random(0).shuffle(order)
    lengths = [examples[i].valid.shape[0] for i in order]
    batch = signal.batch(order, lengths=lengths, pad_to=16)
    assert batch["topk_ids"].shape == (8, 16, K) and batch["valid"].shape == (8, 16)
    for n, example_id in enumerate(order):
        length = lengths[n]
        assert torch.equal(batch["topk_ids"][n, :length], examples[example_id].topk_ids)
        assert torch.equal(batch["topk_logprobs"][n, :length], examples[example_id].topk_logprobs)
        assert torch.equal(batch["valid"][n, :length], examples[example_id].valid)
        assert (batch["topk_ids"][n, length:] == -1).all() and not batch["valid"][n, length:].any()
        assert torch.isneginf(batch["topk_logprobs"][n, length:]).all()
    assert signal.batch(order[:2])["valid"].shape == (2, max(lengths[:2]))
    with pytest.raises(ValueError, match="pad_to=2 is shorter than the longest example"):
        signal.batch(order, pad_to=2)


def test_unknown_id_and_length_mismatch_are_clear(tmp_path, examples):
    store = _write(tmp_path / "sig", examples)
    signal = TeacherSignal(store)
    with pytest.raises(KeyError, match=rf"example 'nope' has no teacher signal in {store}"):
        signal["nope"]
    with pytest.raises(KeyError, match="'nope'"):
        signal.batch(["ex-0", "nope"])
    with pytest.raises(
        TeacherSignalError, match="example 'ex-2' has 6 tokens but its teacher signal .* has 5 rows"
    ):
        signal.batch(["ex-0", "ex-2"], lengths=[3, 6])


def test_a_directory_with_another_key_is_refused(tmp_path, examples):
    store = _write(tmp_path / "sig", examples, key="k1")
    with pytest.raises(
        TeacherSignalError, match=r"holds the teacher signal with key k1 \(k=4\), this capture has key k2"
    ):
        TeacherSignalWriter(store, key="k2", key_inputs={"what": "k2"}, k=K).open()
    with pytest.raises(TeacherSignalError, match="differs in what"):
        TeacherSignalWriter(store, key="k2", key_inputs={"what": "k2"}, k=K).open()
    assert len(TeacherSignal(store)) == 8  # untouched

    empty = tmp_path / "empty"  # a store whose capture failed before its first shard holds nothing to mix
    with TeacherSignalWriter(empty, key="k1", key_inputs={"what": "k1"}, k=K):
        pass
    writer = TeacherSignalWriter(empty, key="k2", key_inputs={"what": "k2"}, k=3)
    writer.open()
    writer.close()
    assert read_manifest(empty)["key"] == "k2" and read_manifest(empty)["k"] == 3

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TeacherSignalError, match="not empty and not a teacher-signal store"):
        TeacherSignalWriter(tmp_path / "other", key="k1", key_inputs={}, k=K).open()


def test_reopen_removes_orphans_and_refuses_duplicates(tmp_path, examples):
    store = _write(tmp_path / "sig", dict(list(examples.items())[:3]))
    # what a writer killed between the rename and the manifest (or mid-write) leaves behind
    (store / "shard-00007.safetensors").write_bytes(b"unlisted")
    (store / ".shard-00008.safetensors.abc.tmp").write_bytes(b"torn")
    (store / f".{MANIFEST}.xyz.tmp").write_text("{")
    writer = TeacherSignalWriter(store, key="k1", key_inputs={"what": "k1"}, k=K)
    report = writer.open()
    assert report.examples == 3
    assert sorted(report.orphan_files_removed) == sorted(
        [".manifest.json.xyz.tmp", ".shard-00008.safetensors.abc.tmp", "shard-00007.safetensors"]
    )
    with pytest.raises(TeacherSignalError, match="'ex-1' is stored already"):
        writer.add("ex-1", examples["ex-1"])
    with pytest.raises(ValueError, match=r"expected topk_ids \(L, 4\), topk_logprobs \(L, 4\), valid \(L,\)"):
        writer.add("bad", _rows(0, 5, k=3))
    writer.add("ex-5", examples["ex-5"])
    with pytest.raises(TeacherSignalError, match="another process is writing"):
        TeacherSignalWriter(store, key="k1", key_inputs={"what": "k1"}, k=K).open()
    writer.close(complete=True)
    signal = TeacherSignal(store)
    assert signal.ids() == ["ex-0", "ex-1", "ex-2", "ex-5"] and signal.complete
    assert json.loads((store / MANIFEST).read_text())["next_shard"] == 2


def test_data_fingerprint_hashes_ids_and_tokens_not_order():
    a = [{"record_id": "a", "input_ids": [1, 2, 3]}, {"record_id": "b", "input_ids": [4]}]
    assert data_fingerprint(a) == data_fingerprint(list(reversed(a)))
    assert data_fingerprint(a) != data_fingerprint([a[0], {"record_id": "b", "input_ids": [5]}])
    assert data_fingerprint(a) != data_fingerprint([a[0], {"record_id": "c", "input_ids": [4]}])
    with pytest.raises(TeacherSignalError, match="'a' appears twice"):
        data_fingerprint([a[0], a[0]])
    assert signal_key({"k": 1, "d": "x"}) == signal_key({"d": "x", "k": 1}) != signal_key({"k": 2, "d": "x"})
