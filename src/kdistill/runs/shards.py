"""What the two content-addressed safetensors stores share (teacher signals, teacher embeddings).

Both keep `shard-NNNNN.safetensors` files listed with their bytes and sha256 in a `manifest.json` that is
rewritten atomically after each shard is committed, under a content key computed from what decides their
numbers. These are the pieces of that protocol that do not depend on what a shard holds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kdistill.io import sha256_file

MANIFEST = "manifest.json"
SHARD_NAME = re.compile(r"^shard-(\d{5,})\.safetensors$")
OWN_FILES = re.compile(
    r"^(manifest\.json|\.lock|shard-\d{5,}\.safetensors|candidates\.safetensors|\..*\.tmp)$"
)
"""Every file a store writes; anything else in its directory means the directory is not a store."""


def content_key(inputs: Mapping[str, Any]) -> str:
    """16 hex of sha256 over the JSON of `inputs` (key order does not matter)."""
    blob = json.dumps(dict(inputs), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def differing_inputs(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Which key inputs differ between a store's manifest and the caller (for the refusal message)."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not keys:
        return "same inputs, another key format"
    return "differs in " + ", ".join(f"{k} ({old.get(k)!r} vs {new.get(k)!r})" for k in keys[:4])


def verify_shard(
    store_dir: Path, entry: Mapping[str, Any], *, sha: bool, error: type[Exception] = ValueError
) -> Path:
    """The path of a listed shard after checking it exists, has the listed bytes and (if `sha`) sha256;
    raises `error` naming the file otherwise."""
    path = store_dir / entry["file"]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise error(f"{path}: listed in {MANIFEST} but missing") from None
    if size != entry["bytes"]:
        raise error(
            f"{path}: {size} bytes, manifest says {entry['bytes']}: "
            "the shard was modified or truncated after it was written"
        )
    if sha:
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise error(
                f"{path}: sha256 mismatch (manifest {entry['sha256'][:12]}..., file {actual[:12]}...): "
                "the shard was modified or corrupted after it was written"
            )
    return path
