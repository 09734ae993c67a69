"""The shard protocol shared by the teacher-signal store and the teacher-embedding cache."""

from __future__ import annotations

import hashlib

import pytest

from kdistill.runs.shards import OWN_FILES, SHARD_NAME, content_key, differing_inputs, verify_shard


class _Mine(ValueError):
    pass


def test_verify_shard_checks_presence_bytes_and_sha_with_the_callers_error(tmp_path) -> None:
    data = b"shard bytes"
    (tmp_path / "shard-00000.safetensors").write_bytes(data)
    entry = {
        "file": "shard-00000.safetensors",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert verify_shard(tmp_path, entry, sha=True, error=_Mine) == tmp_path / entry["file"]
    with pytest.raises(_Mine, match="listed in manifest.json but missing"):
        verify_shard(tmp_path, {**entry, "file": "shard-00001.safetensors"}, sha=False, error=_Mine)
    with pytest.raises(_Mine, match="12 bytes, manifest says 11"):
        (tmp_path / "shard-00000.safetensors").write_bytes(data + b"!")
        verify_shard(tmp_path, entry, sha=False, error=_Mine)
    (tmp_path / "shard-00000.safetensors").write_bytes(b"shard bytez")  # same size, other content
    assert verify_shard(tmp_path, entry, sha=False, error=_Mine)  # size alone cannot tell
    with pytest.raises(_Mine, match="sha256 mismatch"):
        verify_shard(tmp_path, entry, sha=True, error=_Mine)


def test_keys_names_and_messages() -> None:
    assert (
        content_key({"a": 1, "b": [2]}) == content_key({"b": [2], "a": 1}) != content_key({"a": 2, "b": [2]})
    )
    assert len(content_key({})) == 16
    assert SHARD_NAME.match("shard-00012.safetensors").group(1) == "00012"
    assert not SHARD_NAME.match("shard-12.safetensors")
    assert all(OWN_FILES.match(n) for n in ("manifest.json", ".lock", "shard-00000.safetensors", ".x.tmp"))
    assert not OWN_FILES.match("notes.txt")
    assert differing_inputs({"k": 1, "t": "a"}, {"k": 2, "t": "a"}) == "differs in k (1 vs 2)"
    assert differing_inputs({"k": 1}, {"k": 1}) == "same inputs, another key format"
