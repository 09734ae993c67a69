"""Teacher embeddings of a distillation corpus, computed once, stored by content key, resumable.

Each text (keyed by its string id) gets one row: the teacher's text embedding, float32 (D,). Epochs then
read rows instead of running the teacher again. The habits are those of `kdistill.lm.signal_store`,
sharing its shard protocol (`kdistill.runs.shards`).

Layout of a cache directory::

    manifest.json             format, content key and its inputs, dim, shards (file, sha256, bytes, ids),
                              totals, complete
    shard-00000.safetensors   `embeddings` float32 (n, D), row i = ids[i]; the ids also in its metadata
    .lock                     held (flock) by the one process writing

**Commit protocol.** A shard is written to a temp file, fsynced and renamed, the directory fsynced, and
only then is `manifest.json` atomically rewritten to list it. A kill at any point leaves at most an
unlisted shard or a temp file, which the next writer deletes; listed shards are never rewritten. A
resumed run embeds only the ids no listed shard holds, so no id is stored twice.

**Content key.** `embedding_cache_key` hashes what decides the numbers: the teacher's fingerprint (its
weights, tokenizer, pooling, normalisation and max_seq_length), the corpus fingerprint (the sorted
(id, text) pairs) and the dtype. The default directory is `<cache root>/teacher_embeddings/<key>/`; a
writer refuses a directory whose manifest holds another key, so embeddings of different teachers, pooling
or texts never mix.

**Reading.** `TeacherEmbeddings(dir)` checks every listed shard (bytes, sha256, ids in its metadata
against the manifest) and serves rows *by id*: `cache.get(ids) -> (n, D)`; a training batch is joined to
its teacher rows by text id, never by position.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from kdistill.encoders.models import TextEncoder
from kdistill.io import atomic_write_bytes, atomic_write_text, fsync_dir, lock_directory
from kdistill.runs.shards import (
    MANIFEST,
    OWN_FILES,
    SHARD_NAME,
    content_key,
    differing_inputs,
    utc_now,
    verify_shard,
)

__all__ = [
    "FORMAT",
    "CacheReport",
    "EmbeddingCacheError",
    "TeacherEmbeddings",
    "cache_teacher_embeddings",
    "corpus_fingerprint",
    "corpus_pairs",
    "default_embedding_dir",
    "embedding_cache_key",
]

FORMAT = "kdistill.teacher_embeddings/1"
LOCK = ".lock"


class EmbeddingCacheError(ValueError):
    """A problem with a teacher-embedding cache directory (corrupt shard, other key, missing id); names it."""


# ---------------------------------------------------------------- corpus and keys


def corpus_pairs(texts: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(id, text) pairs from a dict id -> text or an iterable of pairs; ids must be unique strings."""
    items = texts.items() if isinstance(texts, Mapping) else texts
    pairs, seen = [], set()
    for text_id, text in items:
        text_id = str(text_id)
        if text_id in seen:
            raise EmbeddingCacheError(f"text id {text_id!r} appears twice; ids must be unique")
        if not isinstance(text, str):
            raise TypeError(f"text {text_id!r} is a {type(text).__name__}, not a str")
        seen.add(text_id)
        pairs.append((text_id, text))
    return pairs


def corpus_fingerprint(pairs: Iterable[tuple[str, str]]) -> str:
    """16 hex of sha256 over the (id, text) pairs sorted by id: reordering the corpus keeps it."""
    h = hashlib.sha256()
    for text_id, text in sorted(pairs):
        h.update(json.dumps([text_id, text], ensure_ascii=False, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def embedding_cache_key(teacher: TextEncoder, pairs: Sequence[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
    """The content key of `teacher`'s embeddings of `pairs`, and the inputs it hashes."""
    inputs = {
        "format": FORMAT,
        "teacher": teacher.fingerprint(),
        "pooling": teacher.pooling,
        "normalize": teacher.normalize,
        "max_seq_length": teacher.max_seq_length,
        "data": corpus_fingerprint(pairs),
        "dtype": "float32",
    }
    return content_key(inputs), inputs


def default_embedding_dir(key: str, cache_root: Path | None = None) -> Path:
    from kdistill.runs.locations import default_cache_root

    return (cache_root or default_cache_root()) / "teacher_embeddings" / key


def read_manifest(store_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a cache directory, None if it has none; raises on a foreign or broken one."""
    path = Path(store_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as err:
        raise EmbeddingCacheError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EmbeddingCacheError(f"{path}: not a kdistill teacher-embedding manifest (format {FORMAT!r})")
    return manifest


def _verify(store_dir: Path, entry: Mapping[str, Any], *, sha: bool) -> Path:
    """The shared shard check (exists, bytes, sha256), raising this module's error."""
    return verify_shard(store_dir, entry, sha=sha, error=EmbeddingCacheError)


# ---------------------------------------------------------------- the writer


@dataclass
class CacheReport:
    """What one `cache_teacher_embeddings` call did."""

    store_dir: Path
    key: str
    already_stored: int  # texts found in listed shards when the call started
    embedded: int  # texts this call ran the teacher on
    orphan_files_removed: tuple[str, ...] = ()  # unlisted shards and temp files of a killed writer


class _Writer:
    """One cache directory opened for writing under its flock: recover, commit shards, mark complete."""

    def __init__(
        self, store_dir: Path, key: str, key_inputs: Mapping[str, Any], dim: int, info: Mapping
    ) -> None:
        self.store_dir, self.key, self.key_inputs, self.dim, self.info = (
            store_dir,
            key,
            dict(key_inputs),
            dim,
            info,
        )
        self.manifest: dict[str, Any] = {}
        self.done_ids: set[str] = set()
        self._lock: IO[bytes] | None = None

    def open(self) -> tuple[str, ...]:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if read_manifest(self.store_dir) is None:
            strangers = [p.name for p in self.store_dir.iterdir() if not OWN_FILES.match(p.name)]
            if strangers:
                raise EmbeddingCacheError(
                    f"{self.store_dir}: not empty and not a teacher-embedding cache (holds {sorted(strangers)[:3]})"
                )
        self._acquire_lock()
        try:
            return self._recover()
        except BaseException:
            self.close()
            raise

    def _acquire_lock(self) -> None:
        self._lock = lock_directory(
            self.store_dir / LOCK,
            lambda: EmbeddingCacheError(f"{self.store_dir}: another process is writing this cache"),
        )

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _recover(self) -> tuple[str, ...]:
        manifest = read_manifest(self.store_dir)
        if manifest is not None and not manifest["shards"] and manifest.get("key") != self.key:
            manifest = None  # an empty cache of another key: nothing to mix with
        if manifest is not None and (manifest.get("key") != self.key or manifest.get("dim") != self.dim):
            raise EmbeddingCacheError(
                f"{self.store_dir} holds teacher embeddings with key {manifest.get('key')}, this corpus and "
                f"teacher have key {self.key}: {differing_inputs(manifest.get('key_inputs', {}), self.key_inputs)}. "
                "Embeddings of different teachers or texts never share a directory: use another one, or "
                "leave it unset for the per-key default"
            )
        self.manifest = manifest or {
            "format": FORMAT,
            "key": self.key,
            "key_inputs": self.key_inputs,
            "dim": self.dim,
            "info": dict(self.info),
            "shards": [],
            "texts": 0,
            "next_shard": 0,
            "complete": False,
            "created": utc_now(),
        }
        listed = {s["file"] for s in self.manifest["shards"]}
        removed = []
        for path in sorted(self.store_dir.iterdir()):
            if (SHARD_NAME.match(path.name) and path.name not in listed) or path.name.endswith(".tmp"):
                path.unlink()  # written but never listed, or a temp file: a killed writer's leftovers
                removed.append(path.name)
        for entry in self.manifest["shards"]:
            _verify(self.store_dir, entry, sha=True)
            self.done_ids.update(entry["ids"])
        if manifest is None:
            self._write_manifest()
        return tuple(removed)

    def commit(self, ids: Sequence[str], embeddings: Tensor) -> None:
        """One new listed shard: temp file, fsync, rename, directory fsync, then the manifest."""
        from safetensors.torch import save

        if embeddings.shape != (len(ids), self.dim):
            raise ValueError(f"expected ({len(ids)}, {self.dim}) embeddings, got {tuple(embeddings.shape)}")
        if dup := self.done_ids.intersection(ids):
            raise EmbeddingCacheError(f"ids {sorted(dup)[:3]} are stored already (a bug in the caller)")
        # one metadata key: safetensors writes its metadata map in hash order; one key keeps the bytes stable
        meta = json.dumps({"format": FORMAT, "key": self.key, "ids": list(ids)}, separators=(",", ":"))
        data = save(
            {"embeddings": embeddings.detach().to("cpu", torch.float32).contiguous()},
            metadata={"kdistill": meta},
        )
        number = self.manifest["next_shard"]
        name = f"shard-{number:05d}.safetensors"
        atomic_write_bytes(self.store_dir / name, data)
        fsync_dir(self.store_dir)
        entry = {
            "file": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "ids": list(ids),
        }
        self.manifest["shards"].append(entry)
        self.manifest["texts"] += len(ids)
        self.manifest["next_shard"] = number + 1
        self._write_manifest()
        self.done_ids.update(ids)

    def mark_complete(self) -> None:
        if not self.manifest["complete"]:
            self.manifest["complete"] = True
            self._write_manifest()

    def _write_manifest(self) -> None:
        self.manifest["updated"] = utc_now()
        atomic_write_text(self.store_dir / MANIFEST, json.dumps(self.manifest, indent=1) + "\n")
        fsync_dir(self.store_dir)


def cache_teacher_embeddings(
    teacher: TextEncoder,
    texts: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    store_dir: str | Path | None = None,
    cache_root: Path | None = None,
    shard_size: int = 1024,
    batch_size: int = 32,
    on_commit: Callable[[int, int], None] | None = None,
) -> tuple[TeacherEmbeddings, CacheReport]:
    """Embed every text the cache does not hold yet, one shard per `shard_size` texts; open the result.

    `texts`: id -> text, or (id, text) pairs. A rerun after a kill (or on a finished cache) embeds only the
    missing ids, in corpus order. `on_commit(stored, total)` is called after each committed shard.
    Returns the opened cache and a report of what this call did.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    pairs = corpus_pairs(texts)
    key, key_inputs = embedding_cache_key(teacher, pairs)
    directory = Path(store_dir) if store_dir is not None else default_embedding_dir(key, cache_root)
    writer = _Writer(directory, key, key_inputs, teacher.embedding_dim, {"teacher": teacher.name})
    removed = writer.open()
    try:
        already = len(writer.done_ids)
        todo = [(i, t) for i, t in pairs if i not in writer.done_ids]
        for start in range(0, len(todo), shard_size):
            chunk = todo[start : start + shard_size]
            embeddings = teacher.encode([t for _, t in chunk], batch_size=batch_size)
            writer.commit([i for i, _ in chunk], embeddings)
            if on_commit is not None:
                on_commit(len(writer.done_ids), len(pairs))
        writer.mark_complete()
    finally:
        writer.close()
    report = CacheReport(directory, key, already, len(todo), removed)
    return TeacherEmbeddings(directory), report


# ---------------------------------------------------------------- the reader


class TeacherEmbeddings:
    """A cache directory opened for reading: `get(ids) -> (n, D)` rows joined by text id.

    Every listed shard is checked on open: its size and (unless `verify=False`) sha256 against the
    manifest, and the ids in its own metadata against the manifest's. Rows are held in memory (float32,
    N x D: 1.5 GB for a million 384-wide texts).
    """

    def __init__(self, store_dir: str | Path, *, verify: bool = True) -> None:
        from safetensors import safe_open

        self.store_dir = Path(store_dir)
        manifest = read_manifest(self.store_dir)
        if manifest is None:
            raise EmbeddingCacheError(f"{self.store_dir}: not a teacher-embedding cache (no {MANIFEST})")
        self.manifest = manifest
        self._index: dict[str, int] = {}
        blocks = []
        for entry in manifest["shards"]:
            path = _verify(self.store_dir, entry, sha=verify)
            with safe_open(str(path), framework="pt") as handle:
                stored_ids = json.loads(handle.metadata()["kdistill"])["ids"]
                rows = handle.get_tensor("embeddings")
            if stored_ids != entry["ids"] or rows.shape != (len(stored_ids), self.dim):
                raise EmbeddingCacheError(f"{path}: its ids or shape do not match {MANIFEST}")
            for text_id in stored_ids:
                if text_id in self._index:
                    raise EmbeddingCacheError(f"{path}: text {text_id!r} is stored twice")
                self._index[text_id] = len(self._index)
            blocks.append(rows)
        self._rows = torch.cat(blocks) if blocks else torch.zeros(0, self.dim)

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def key_inputs(self) -> dict[str, Any]:
        return dict(self.manifest.get("key_inputs", {}))

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, text_id: object) -> bool:
        return text_id in self._index

    def ids(self) -> list[str]:
        """Text ids in storage order."""
        return list(self._index)

    def get(self, ids: Sequence[str]) -> Tensor:
        """(len(ids), D) float32: row k is the teacher embedding of text ids[k]."""
        try:
            rows = [self._index[str(i)] for i in ids]
        except KeyError as err:
            raise KeyError(
                f"text {err.args[0]!r} has no teacher embedding in {self.store_dir} ({len(self)} stored"
                f"{'' if self.complete else ', caching incomplete'})"
            ) from None
        return self._rows[torch.tensor(rows, dtype=torch.long)]

    def check_teacher(self, teacher: TextEncoder) -> None:
        """Raise when `teacher` is not the encoder these embeddings came from."""
        stored, actual = self.key_inputs.get("teacher"), teacher.fingerprint()
        if stored != actual:
            raise EmbeddingCacheError(
                f"{self.store_dir}: embeddings of teacher {stored}, this teacher is {actual}"
            )
