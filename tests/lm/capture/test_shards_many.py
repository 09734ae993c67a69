"""Many machines and many processes: `shard=i/N` captures read as one, torchrun writing one store, resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.lm.capture.cli_main import cli_app
from tests.lm.capture.helpers import write_config, write_generations
from typer.testing import CliRunner

from kdistill.generate.store import load_generations
from kdistill.lm.byte_signal import ByteSignal
from kdistill.lm.capture import capture_bytes, capture_topk, teacher_identity
from kdistill.lm.sft_data import tokenize_rows
from kdistill.lm.signal_store import (
    PARTS,
    TeacherSignal,
    TeacherSignalError,
    TeacherSignalWriter,
    read_manifest,
)
from kdistill.lm.tokenizers import tokenizer_fingerprint
from kdistill.runs.sharding import Shard

CLI = Path(__file__).with_name("cli_main.py")
runner = CliRunner()


@pytest.fixture
def examples(gens_dir, tokenizer):
    return tokenize_rows(tokenizer, load_generations(gens_dir), max_length=48).examples


@pytest.fixture
def key_inputs(model_dir, tokenizer):
    return {"teacher": teacher_identity(str(model_dir)), "tokenizer": tokenizer_fingerprint(tokenizer)}


def assert_same_rows(a, b) -> None:
    """Same example ids, and every field of every example bit-identical."""
    assert sorted(a.ids()) == sorted(b.ids())
    for example_id in a.ids():
        x, y = a.fields(example_id), b.fields(example_id)
        assert x.keys() == y.keys()
        for name in x:
            assert x[name].dtype == y[name].dtype and torch.equal(x[name], y[name]), (example_id, name)


def _capture(teacher, examples, out, key_inputs, **extra):
    settings = {"k": 5, "key_inputs": key_inputs, "batch_size": 2, "shard_examples": 2, **extra}
    return capture_topk(teacher, examples, out, **settings)


def test_capture_shards_read_as_one_equal_the_unsharded_capture(teacher, examples, key_inputs, tmp_path):
    whole = _capture(teacher, examples, tmp_path / "whole", key_inputs)
    cache = tmp_path / "cache"  # each shard's default directory is its own (its key hashes its examples)
    parts = [
        _capture(teacher, examples, None, key_inputs, shard=Shard(i, 3), cache_root=cache) for i in range(3)
    ]
    assert len({p.store_dir for p in parts}) == 3 and all(p.store_dir.parent.parent == cache for p in parts)
    assert sum(p.examples for p in parts) == whole.examples == len(examples)
    assert all(p.examples for p in parts)  # 7 batches of 2, dealt round robin: 3, 2, 2 batches

    read = TeacherSignal([p.store_dir for p in parts])
    assert_same_rows(read, TeacherSignal(whole.store_dir))  # the batches were the same: bit for bit
    assert read.complete and len(read) == len(examples)
    assert read.batch(read.ids()[:3])["topk_ids"].shape[0] == 3
    assert not TeacherSignal([p.store_dir for p in parts[:2]]).complete  # shard 2/3 is missing
    shard_inputs = [TeacherSignal(p.store_dir).key_inputs["shard"] for p in parts]
    assert [s["index"] for s in shard_inputs] == [0, 1, 2] and len({s["of_data"] for s in shard_inputs}) == 1


def test_stores_read_as_one_must_be_disjoint_parts_of_one_capture(teacher, examples, key_inputs, tmp_path):
    whole = _capture(teacher, examples, tmp_path / "whole", key_inputs)
    first = _capture(teacher, examples, tmp_path / "s0", key_inputs, shard=Shard(0, 2))
    an_id = TeacherSignal(first.store_dir).ids()[0]
    with pytest.raises(TeacherSignalError) as err:
        TeacherSignal([tmp_path / "s0", tmp_path / "whole"])
    assert f"example {an_id!r} is in both {tmp_path / 's0'} and {tmp_path / 'whole'}" in str(err.value)

    other_k = _capture(teacher, examples, tmp_path / "k3", key_inputs, shard=Shard(1, 2), k=3)
    with pytest.raises(TeacherSignalError, match="not parts of one capture .*k=3"):
        TeacherSignal([first.store_dir, other_k.store_dir])
    other_teacher = {**key_inputs, "teacher": {**key_inputs["teacher"], "weights": "0" * 16}}
    _capture(teacher, examples, tmp_path / "t2", other_teacher, shard=Shard(1, 2))
    with pytest.raises(TeacherSignalError, match="not parts of one capture: differs in teacher"):
        TeacherSignal([first.store_dir, tmp_path / "t2"])
    assert whole.complete


def test_byte_signal_shards_read_as_one(teacher, tokenizer, gens_dir, key_inputs, tmp_path):
    rows = [dict(r) for r in load_generations(gens_dir)]
    settings = {"k": 4, "key_inputs": key_inputs, "max_length": 48, "batch_size": 3}
    capture_bytes(teacher, tokenizer, rows, tmp_path / "whole", **settings)
    for i in range(2):
        capture_bytes(teacher, tokenizer, rows, tmp_path / f"s{i}", shard=Shard(i, 2), **settings)
    read, whole = ByteSignal([tmp_path / "s0", tmp_path / "s1"]), ByteSignal(tmp_path / "whole")
    assert_same_rows(read.store, whole.store)
    assert read.table.entries == whole.table.entries and read.store.complete


class _Stop(Exception):
    pass


def test_an_interrupted_shard_resumes_to_the_uninterrupted_shard(teacher, examples, key_inputs, tmp_path):
    shard = Shard(1, 2)
    reference = _capture(teacher, examples, tmp_path / "ref", key_inputs, shard=shard)

    def stop_after_first_shard(done: int, total: int) -> None:
        if read_manifest(tmp_path / "cut")["shards"]:
            raise _Stop

    with pytest.raises(_Stop):
        _capture(
            teacher, examples, tmp_path / "cut", key_inputs, shard=shard, progress=stop_after_first_shard
        )
    partial = len(TeacherSignal(tmp_path / "cut"))
    assert 0 < partial < reference.examples
    resumed = _capture(teacher, examples, tmp_path / "cut", key_inputs, shard=shard)
    assert (resumed.key, resumed.already, resumed.computed) == (
        reference.key,
        partial,
        reference.examples - partial,
    )
    assert_same_rows(TeacherSignal(tmp_path / "cut"), TeacherSignal(tmp_path / "ref"))
    shards = read_manifest(tmp_path / "cut")["shards"]
    assert [s["sha256"] for s in shards] == [s["sha256"] for s in read_manifest(tmp_path / "ref")["shards"]]


def test_parts_left_by_a_killed_multi_process_capture_are_adopted_once(
    teacher, examples, key_inputs, tmp_path
):
    """A torchrun capture killed before rank 0 adopted the ranks' parts: a rerun (here 1 process) adopts
    them, computes only the rest, and a second adoption of the same part adds nothing."""
    reference = _capture(teacher, examples, tmp_path / "ref", key_inputs)
    ref, manifest = TeacherSignal(tmp_path / "ref"), read_manifest(tmp_path / "ref")
    args = {"key": manifest["key"], "key_inputs": manifest["key_inputs"], "k": manifest["k"]}
    part_dir = tmp_path / "cut" / PARTS / "rank-1-of-2"
    TeacherSignalWriter(tmp_path / "cut", **args).open()  # rank 0 had created the store
    left = ref.ids()[:4]  # what rank 1 had committed
    with TeacherSignalWriter(part_dir, **args) as part:
        for example_id in left:
            part.add(example_id, ref[example_id])

    calls = []
    resumed = _capture(lambda: calls.append(1) or teacher, examples, tmp_path / "cut", key_inputs)
    assert resumed.already == 4 and resumed.computed == reference.examples - 4 and calls == [1]
    assert not (tmp_path / "cut" / PARTS).exists()
    cut = TeacherSignal(tmp_path / "cut")
    assert_same_rows(cut, ref) and cut.complete
    ids = [i for s in read_manifest(tmp_path / "cut")["shards"] for i in s["ids"]]
    assert len(ids) == len(set(ids)) == len(examples)  # none twice

    with TeacherSignalWriter(part_dir, **args) as part:  # the same part again, as after a kill before rmtree
        for example_id in left:
            part.add(example_id, ref[example_id])
    with TeacherSignalWriter(tmp_path / "cut", **args) as store:
        assert store.adopt(part_dir) == 0
    assert read_manifest(tmp_path / "cut")["examples"] == len(examples)


# ---------------------------------------------------------------- torchrun


def _torchrun(args: list[str], env: dict[str, str], **popen) -> subprocess.Popen:
    with socket.socket() as probe:  # a free port (torchrun's static rendezvous cannot take port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={port}", str(CLI), "capture", *args]
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, **popen)


def _config(tmp_path, model_dir, gens, **extra):
    settings = {"teacher": {"model": str(model_dir)}, "data": {"generations": str(gens)}, "top_k": 5}
    settings.update(max_length=48, batch_size=2, shard_examples=1, device="cpu", **extra)
    return write_config(tmp_path / "capture.yaml", **settings)


@pytest.mark.slow
def test_a_two_process_capture_writes_one_store_equal_to_one_process(tmp_path, model_dir, gens_dir):
    cfg = _config(tmp_path, model_dir, gens_dir)
    single = runner.invoke(cli_app(), ["capture", str(cfg), f"out={tmp_path / 'one'}", "--json"])
    assert single.exit_code == 0, single.output
    proc = _torchrun(
        [str(cfg), f"out={tmp_path / 'two'}", "--json"], {}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err.decode()[-3000:]
    summary = json.loads(out)  # printed once, by rank 0
    one, two = TeacherSignal(tmp_path / "one"), TeacherSignal(tmp_path / "two")
    assert summary["key"] == one.key == two.key and summary["examples"] == len(one) == 14
    assert_same_rows(one, two)
    assert two.complete and not (tmp_path / "two" / PARTS).exists()
    sources = {s["file"] for s in read_manifest(tmp_path / "two")["shards"]}
    assert len(sources) == 7  # one shard per batch (shard_examples=1), adopted from both ranks


@pytest.mark.slow
def test_a_killed_two_process_capture_resumes(tmp_path, model_dir):
    gens = write_generations(tmp_path / "gens", 16)
    cfg = _config(tmp_path, model_dir, gens, out=str(tmp_path / "cut"))
    log = (tmp_path / "first.log").open("w")
    proc = _torchrun(
        [str(cfg)], {"CAPTURE_TEST_FORWARD_DELAY": "0.4"}, stdout=log, stderr=log, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not any(
            (m := read_manifest(p)) and m["shards"] for p in (tmp_path / "cut" / PARTS).glob("rank-*")
        ):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no part committed a shard"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        proc.wait(timeout=10)
    assert not read_manifest(tmp_path / "cut")["complete"]

    rerun = runner.invoke(cli_app(), ["capture", str(cfg), "--json"])  # one process this time
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout)["already"] >= 1
    reference = runner.invoke(cli_app(), ["capture", str(cfg), f"out={tmp_path / 'whole'}", "--json"])
    assert reference.exit_code == 0, reference.output
    cut = TeacherSignal(tmp_path / "cut")
    assert_same_rows(cut, TeacherSignal(tmp_path / "whole")) and cut.complete and len(cut) == 16
    assert not (tmp_path / "cut" / PARTS).exists()
