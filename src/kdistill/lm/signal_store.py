"""The teacher-signal store: top-k log-probabilities per token, captured once, memory-mapped on read.

For every example (keyed by its string id, e.g. the generation record_id) the store holds three tensors
aligned with the example's input_ids (length L):

    topk_ids       int32   (L, k)  the teacher's k most likely next tokens, distinct within a row (checked
                                   when written); -1 = absent entry
    topk_logprobs  float32 (L, k)  their log-probabilities under the teacher's full softmax; -inf if absent
    valid          bool    (L,)    rows that carry a signal

Row t is the teacher's distribution over the token at position t + 1, i.e. it is aligned with the
model's logits[t]; the last row (beyond the example) is stored too. A teacher run over the examples
marks every row valid; a signal converted from an endpoint's `top_logprobs` only the rows that predict
an answer token the endpoint scored.

Layout of a store directory::

    manifest.json             format, content key and its inputs, k, shards (file, sha256, bytes, ids,
                              lengths), totals, complete
    shard-00000.safetensors   one committed group of examples: their rows concatenated, plus
    shard-00001.safetensors   `offsets` int64 (n + 1,) (example i = rows offsets[i]:offsets[i + 1])
    .lock                     held (flock) by the one process writing

**Commit protocol** (as in `generation_store`): a shard is written to a temp file, fsynced and renamed,
the directory fsynced, and only then is `manifest.json` atomically rewritten to list it. A kill between
those steps leaves an unlisted shard or a temp file, which the next writer deletes; a listed shard is
never rewritten. A resumed capture computes only the examples no listed shard holds, so no example is
stored twice. An example is in exactly one shard.

**Content key.** `signal_key(inputs)` is a stable hash of everything that decides the numbers: the
teacher's identity (model reference and a fingerprint of its weight files), the tokenizer fingerprint,
the data fingerprint (the (id, input_ids) pairs), k, the dtype and the source (model or endpoint). The
default directory is `<cache root>/teacher_signal/<key>/`; a writer refuses a directory whose manifest
holds another key, so signals from different teachers or data never mix.

**Reading.** `TeacherSignal(dir)` checks every shard's sha256 against the manifest (skip with
`verify=False`), then opens the shards with `safetensors.safe_open` (memory-mapped) and reads an
example's rows by slicing, so opening a large store costs no more memory than its index. Training joins
signals to examples by id, never by position: `signal.batch(ids, lengths=...)` checks that each stored
signal has as many rows as the example has tokens.

**Several stores read as one.** `TeacherSignal([dir_a, dir_b, ...])` reads the parts of one capture
(`kdistill capture --shard i/N` on N machines, each into its own store) as one signal. The parts must
agree on everything that decides the numbers except which examples they hold: key inputs equal but for
`data` (each part's own examples) and `shard` (which part it is), the same k, layout and attachments (a
byte signal's candidate table, byte for byte); and no example id may be in two parts (the error names
both directories). `complete` is then true when every part is complete and, for sharded parts, all N
parts of the same data are there.

**Parts of one store.** A capture under torchrun writes one store from several processes: each rank
writes its own store under `<store>/.parts/rank-<r>-of-<W>/` (same key), and rank 0 then `adopt`s their
committed shards into the store (hard links, listed in one manifest write; see `TeacherSignalWriter.adopt`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import torch
from torch import Tensor

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

FORMAT = "kdistill.teacher_signal/1"
LOCK = ".lock"
PARTS = ".parts"
"""Where the ranks of a torchrun capture write their own stores before rank 0 adopts them."""
PART_INPUTS = ("data", "shard")
"""Key inputs that differ between the parts of one capture (which examples, which part)."""
ABSENT_ID = -1


class TeacherSignalError(ValueError):
    """A problem with a teacher-signal directory (corrupt shard, other key, missing example); names it."""


class SignalRows(NamedTuple):
    """One example's signal: (L, k) ids, (L, k) log-probabilities, (L,) valid."""

    topk_ids: Tensor
    topk_logprobs: Tensor
    valid: Tensor


@dataclass(frozen=True)
class RowLayout:
    """What each stored row holds: (field, dtype, width) with width None = one value per row, "k" = k values,
    an int = that many. Every field of an example has the same number of rows L."""

    name: str
    fields: tuple[tuple[str, torch.dtype, int | str | None], ...]

    def shape(self, field_name: str, rows: int, k: int) -> tuple[int, ...]:
        width = next(w for n, _, w in self.fields if n == field_name)
        return (rows,) if width is None else (rows, k if width == "k" else int(width))


TOKEN_IDS = RowLayout(
    "token_ids",
    (("topk_ids", torch.int32, "k"), ("topk_logprobs", torch.float32, "k"), ("valid", torch.bool, None)),
)
"""Rows aligned with the example's input_ids (the teacher's and student's shared tokenizer)."""

BYTES = RowLayout(
    "bytes",
    (
        ("spans", torch.int32, 2),
        ("token_ids", torch.int32, None),
        ("token_logprobs", torch.float32, None),
        ("topk_ids", torch.int32, "k"),
        ("topk_logprobs", torch.float32, "k"),
    ),
)
"""Tokenizer-agnostic rows, one per teacher token of the answer text (`kdistill.lm.byte_signal`)."""

LAYOUTS = {layout.name: layout for layout in (TOKEN_IDS, BYTES)}


# ---------------------------------------------------------------- keys and fingerprints


def signal_key(inputs: Mapping[str, Any]) -> str:
    """16 hex of sha256 over the JSON of `inputs` (key order does not matter)."""
    return content_key(inputs)


def data_fingerprint(examples: Iterable[Mapping[str, Any]], *, extra_field: str | None = None) -> str:
    """16 hex of sha256 over the examples' (record_id, input_ids) pairs, sorted by id.

    Sorted by id: the signal of an example does not depend on where it sits in the data, so reordering
    the data keeps the key. `extra_field` names one more per-example value hashed with it (the endpoint
    conversion hashes each row's logprobs). Duplicate ids raise: an id must name one example.
    """
    pairs = []
    seen: set[str] = set()
    for e in examples:
        example_id = str(e["record_id"])
        if example_id in seen:
            raise TeacherSignalError(f"example id {example_id!r} appears twice; ids must be unique")
        seen.add(example_id)
        pairs.append((example_id, list(e["input_ids"]), e.get(extra_field) if extra_field else None))
    h = hashlib.sha256()
    for example_id, ids, extra in sorted(pairs, key=lambda p: p[0]):
        h.update(json.dumps([example_id, ids, extra], separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def default_signal_dir(key: str, cache_root: Path | None = None) -> Path:
    from kdistill.runs.locations import default_cache_root

    return (cache_root or default_cache_root()) / "teacher_signal" / key


# ---------------------------------------------------------------- small file helpers


def read_manifest(store_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a store directory, None if it has none; raises on a foreign or broken one."""
    path = Path(store_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as err:
        raise TeacherSignalError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TeacherSignalError(f"{path}: not a kdistill teacher-signal manifest (format {FORMAT!r})")
    return manifest


def _verify_shard(store_dir: Path, entry: Mapping[str, Any], *, sha: bool) -> Path:
    return verify_shard(store_dir, entry, sha=sha, error=TeacherSignalError)


def _check_rows(example_id: str, rows: Mapping[str, Tensor], layout: RowLayout, k: int) -> dict[str, Tensor]:
    names = [name for name, _, _ in layout.fields]
    if sorted(rows) != sorted(names):
        raise ValueError(f"example {example_id!r}: expected the fields {names}, got {sorted(rows)}")
    first = rows[names[0]]
    n = first.shape[0] if first.ndim >= 1 else -1
    shapes = {name: tuple(rows[name].shape) for name in names}
    expected = {name: layout.shape(name, n, k) for name in names}
    if shapes != expected:

        def spell(shape: tuple[int, ...]) -> str:
            return "(" + ", ".join(["L", *map(str, shape[1:])]) + ("," if len(shape) == 1 else "") + ")"

        wanted = ", ".join(f"{name} {spell(expected[name])}" for name in names)
        got = ", ".join(f"{name} {shapes[name]}" for name in names)
        raise ValueError(f"example {example_id!r}: expected {wanted}; got {got}")
    checked = {name: rows[name].detach().to("cpu", dtype).contiguous() for name, dtype, _ in layout.fields}
    if "topk_ids" in checked:
        _check_distinct_ids(example_id, checked["topk_ids"])
    return checked


def _check_distinct_ids(example_id: str, topk_ids: Tensor) -> None:
    """Refuse a row that lists a token id twice: a sparse loss would count the student's mass there twice."""
    if topk_ids.shape[-1] < 2:
        return
    ids = topk_ids.sort(dim=-1).values  # (L, k); absent entries (-1) first
    repeated = (ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] != ABSENT_ID)  # (L, k - 1)
    if not bool(repeated.any()):
        return
    row, col = (int(i) for i in repeated.nonzero()[0])
    token = int(ids[row, col + 1])
    entries = (topk_ids[row] == token).nonzero().flatten().tolist()
    raise ValueError(
        f"example {example_id!r}: topk_ids row {row} lists token id {token} more than once (entries "
        f"{', '.join(map(str, entries))}); the ids of a row must be distinct"
    )


# ---------------------------------------------------------------- the writer


@dataclass
class WriterOpenReport:
    """What opening (recovering) a store directory found."""

    examples: int = 0  # examples already committed
    orphan_files_removed: tuple[str, ...] = ()  # unlisted shards and temp files of a killed writer


class TeacherSignalWriter:
    """A store directory opened for writing by one process (its `.lock` flock says which).

    `open()` creates or recovers the directory and refuses one whose manifest holds another key; then
    `add(id, rows)` buffers examples and `commit()` writes the buffer as one shard; `close(complete=)`
    commits what is left and records whether every example of the data is now stored.
    """

    def __init__(
        self,
        store_dir: str | Path,
        *,
        key: str,
        key_inputs: Mapping[str, Any],
        k: int,
        info: Mapping[str, Any] | None = None,
        layout: RowLayout = TOKEN_IDS,
        attachments: Mapping[str, bytes] | None = None,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.store_dir = Path(store_dir)
        self.key = key
        self.key_inputs = dict(key_inputs)
        self.k = k
        self.info = dict(info or {})
        self.layout = layout
        self.attachments = dict(attachments or {})  # files written once with the first manifest
        self.done_ids: set[str] = set()
        self.manifest: dict[str, Any] = {}
        self._buffer: list[tuple[str, dict[str, Tensor]]] = []
        self._lock: IO[bytes] | None = None

    def __enter__(self) -> TeacherSignalWriter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # commits what was added; `complete` is the caller's to set

    # -- open / close

    def open(self) -> WriterOpenReport:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if read_manifest(self.store_dir) is None:
            strangers = [
                p.name for p in self.store_dir.iterdir() if not OWN_FILES.match(p.name) and p.name != PARTS
            ]
            if strangers:
                raise TeacherSignalError(
                    f"{self.store_dir}: not empty and not a teacher-signal store (holds {sorted(strangers)[:3]}); "
                    "choose an empty or new directory"
                )
        self._acquire_lock()
        try:
            return self._recover()
        except BaseException:
            self._release_lock()
            raise

    def _recover(self) -> WriterOpenReport:
        """Under the lock: check the key, delete a killed writer's leftovers, verify the listed shards."""
        manifest = read_manifest(self.store_dir)
        if manifest is not None and not manifest["shards"] and manifest.get("key") != self.key:
            manifest = None  # an empty store (its capture failed before a shard): nothing to mix with
        if manifest is not None and (manifest.get("key") != self.key or manifest.get("k") != self.k):
            raise TeacherSignalError(
                f"{self.store_dir} holds the teacher signal with key {manifest.get('key')} "
                f"(k={manifest.get('k')}), this capture has key {self.key} (k={self.k}): "
                f"{differing_inputs(manifest.get('key_inputs', {}), self.key_inputs)}. "
                "Signals of different teachers, tokenizers or data never share a directory: "
                "use another output directory, or leave `out` unset for the per-key default"
            )
        if manifest is not None and manifest.get("layout", TOKEN_IDS.name) != self.layout.name:
            raise TeacherSignalError(
                f"{self.store_dir} holds rows of layout {manifest.get('layout', TOKEN_IDS.name)!r}, "
                f"this capture writes {self.layout.name!r}"
            )
        self.manifest = manifest or {
            "format": FORMAT,
            "layout": self.layout.name,
            "key": self.key,
            "key_inputs": self.key_inputs,
            "k": self.k,
            "info": self.info,
            "shards": [],
            "examples": 0,
            "rows": 0,
            "next_shard": 0,
            "complete": False,
            "created": utc_now(),
        }
        listed = {s["file"] for s in self.manifest["shards"]}
        removed = []
        for path in sorted(self.store_dir.iterdir()):
            stale_shard = SHARD_NAME.match(path.name) and path.name not in listed
            if stale_shard or path.name.endswith(".tmp"):  # written but never listed, or a temp file
                path.unlink()
                removed.append(path.name)
        for entry in self.manifest["shards"]:
            _verify_shard(self.store_dir, entry, sha=True)
            self.done_ids.update(entry["ids"])
        if manifest is None:
            listed_files = {}
            for name, data in sorted(self.attachments.items()):
                atomic_write_bytes(self.store_dir / name, data)
                listed_files[name] = {
                    "file": name,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "bytes": len(data),
                }
            if listed_files:
                fsync_dir(self.store_dir)
                self.manifest["attachments"] = listed_files
            self._write_manifest()  # marks the directory as a store (of this key) from the start
        else:
            for entry in self.manifest.get("attachments", {}).values():
                _verify_shard(self.store_dir, entry, sha=True)
        return WriterOpenReport(examples=len(self.done_ids), orphan_files_removed=tuple(removed))

    def close(self, *, complete: bool | None = None) -> None:
        """Commit buffered examples, record `complete` (if given), release the lock. Safe to call twice."""
        if self._lock is None:
            return
        try:
            self.commit()
            if complete is not None and complete != self.manifest["complete"]:
                self.manifest["complete"] = complete
                self._write_manifest()
        finally:
            self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def _acquire_lock(self) -> None:
        self._lock = lock_directory(
            self.store_dir / LOCK,
            lambda: TeacherSignalError(
                f"{self.store_dir}: another process is writing this directory (its {LOCK} is locked)"
            ),
        )

    # -- adding examples

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def add(self, example_id: str, rows: Mapping[str, Tensor] | Sequence[Tensor]) -> None:
        """Buffer one example's rows (a mapping of the layout's fields, or a tuple in their order, e.g.
        `SignalRows`); committed by the next `commit()`."""
        if self._lock is None:
            raise RuntimeError("store is not open")
        example_id = str(example_id)
        if example_id in self.done_ids:
            raise TeacherSignalError(f"example {example_id!r} is stored already (a bug in the caller)")
        if not isinstance(rows, Mapping):
            names = [name for name, _, _ in self.layout.fields]
            if len(rows) != len(names):
                raise ValueError(
                    f"example {example_id!r}: expected {len(names)} tensors ({names}), got {len(rows)}"
                )
            rows = dict(zip(names, rows, strict=True))
        self._buffer.append((example_id, _check_rows(example_id, rows, self.layout, self.k)))
        self.done_ids.add(example_id)

    def commit(self) -> None:
        """Buffered examples -> a new listed shard (temp file, fsync, rename, then the manifest)."""
        if not self._buffer:
            return
        from safetensors.torch import save

        ids = [example_id for example_id, _ in self._buffer]
        first_field = self.layout.fields[0][0]
        lengths = [rows[first_field].shape[0] for _, rows in self._buffer]
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
        tensors = {
            name: torch.cat([rows[name] for _, rows in self._buffer]) for name, _, _ in self.layout.fields
        }
        tensors["offsets"] = offsets
        # One metadata entry: safetensors writes its metadata map in hash order, so a single key keeps
        # the bytes (and the sha256) of a shard a function of its contents.
        meta = json.dumps({"format": FORMAT, "key": self.key, "ids": ids}, separators=(",", ":"))
        data = save(tensors, metadata={"kdistill": meta})
        number = self.manifest["next_shard"]
        name = f"shard-{number:05d}.safetensors"
        atomic_write_bytes(self.store_dir / name, data)
        fsync_dir(self.store_dir)  # the rename itself survives a power loss
        self.manifest["shards"].append(
            {
                "file": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
                "examples": len(ids),
                "rows": int(offsets[-1]),
                "ids": ids,
                "lengths": lengths,
            }
        )
        self.manifest["examples"] += len(ids)
        self.manifest["rows"] += int(offsets[-1])
        self.manifest["next_shard"] = number + 1
        self._write_manifest()
        self._buffer = []

    def _write_manifest(self) -> None:
        self.manifest["updated"] = utc_now()
        atomic_write_text(self.store_dir / MANIFEST, json.dumps(self.manifest, indent=1) + "\n")
        fsync_dir(self.store_dir)

    def adopt(self, part_dir: str | Path) -> int:
        """List the committed shards of `part_dir` (a store of this very key) as shards of this store.

        Each shard file is hard-linked (copied where links are not possible) under the next shard number;
        then one manifest write lists them all. A kill before that write leaves unlisted files, deleted at
        the next open, and the part still whole; a kill after it leaves a part whose shards are all stored,
        which a second `adopt` skips. So adopting is exactly once however often it is interrupted. Returns
        the number of examples adopted; the part directory is the caller's to delete afterwards.
        """
        if self._lock is None:
            raise RuntimeError("store is not open")
        part_dir = Path(part_dir)
        manifest = read_manifest(part_dir)
        if manifest is None:
            return 0
        if manifest.get("key") != self.key or manifest.get("k") != self.k:
            raise TeacherSignalError(
                f"{part_dir}: holds key {manifest.get('key')} (k={manifest.get('k')}), not this store's "
                f"{self.key} (k={self.k}): not a part of {self.store_dir}"
            )
        self.commit()
        added = []
        for entry in manifest["shards"]:
            stored = sum(example_id in self.done_ids for example_id in entry["ids"])
            if stored == len(entry["ids"]):
                continue  # adopted before an interruption
            if stored:
                raise TeacherSignalError(
                    f"{part_dir / entry['file']}: some of its examples are stored in {self.store_dir} already "
                    "and some not (two writers computed the same examples)"
                )
            source = _verify_shard(part_dir, entry, sha=True)
            number = self.manifest["next_shard"] + len(added)
            name = f"shard-{number:05d}.safetensors"
            try:
                os.link(source, self.store_dir / name)
            except OSError:  # a file system without hard links
                shutil.copyfile(source, self.store_dir / name)
                with (self.store_dir / name).open("rb+") as f:
                    os.fsync(f.fileno())
            added.append({**entry, "file": name})
        if not added:
            return 0
        fsync_dir(self.store_dir)
        for entry in added:
            self.manifest["shards"].append(entry)
            self.manifest["examples"] += len(entry["ids"])
            self.manifest["rows"] += int(entry["rows"])
            self.done_ids.update(entry["ids"])
        self.manifest["next_shard"] += len(added)
        self._write_manifest()
        return sum(len(entry["ids"]) for entry in added)


# ---------------------------------------------------------------- the reader


def signal_dirs(store_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """One store directory or several (the parts of a sharded capture) as a list; none is an error."""
    if isinstance(store_dir, str | os.PathLike):
        return [Path(store_dir)]
    dirs = [Path(d) for d in store_dir]
    if not dirs:
        raise TeacherSignalError("no teacher-signal directory given (expected one or more)")
    return dirs


def common_inputs(key_inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The key inputs every part of one capture shares (all but `PART_INPUTS`)."""
    return {name: value for name, value in key_inputs.items() if name not in PART_INPUTS}


def _parts_complete(parts: Sequence[Mapping[str, Any]]) -> bool:
    """Every part complete, and when they are shards of one capture, every shard of it there."""
    if not all(p.get("complete") for p in parts):
        return False
    shards = [p.get("key_inputs", {}).get("shard") for p in parts]
    if all(s is None for s in shards):
        return True
    if any(s is None for s in shards):
        return False
    whole = {(s["count"], s["batch_size"], s["of_data"]) for s in shards}
    return len(whole) == 1 and sorted(s["index"] for s in shards) == list(range(shards[0]["count"]))


class TeacherSignal:
    """A store directory opened for reading: `signal[example_id] -> SignalRows`, memory-mapped.

    Every listed shard is checked against the manifest's byte count and (unless `verify=False`) its
    sha256 on open. Only committed shards are read; a writer running at the same time is not seen.
    """

    def __init__(
        self, store_dir: str | os.PathLike | Sequence[str | os.PathLike], *, verify: bool = True
    ) -> None:
        self.store_dirs = signal_dirs(store_dir)
        self.store_dir = self.store_dirs[0]
        self.parts: list[dict[str, Any]] = []  # the manifest of each directory
        for directory in self.store_dirs:
            manifest = read_manifest(directory)
            if manifest is None:
                raise TeacherSignalError(f"{directory}: not a teacher-signal store (no {MANIFEST})")
            self.parts.append(manifest)
        self.manifest = self.parts[0]
        self.layout = LAYOUTS.get(self.manifest.get("layout", TOKEN_IDS.name))
        if self.layout is None:
            raise TeacherSignalError(
                f"{self.store_dir}: unknown row layout {self.manifest.get('layout')!r} (known: {sorted(LAYOUTS)})"
            )
        for directory, manifest in zip(self.store_dirs[1:], self.parts[1:], strict=True):
            self._check_part(directory, manifest)
        self._shards: list[Any] = []
        self._shard_dirs: list[Path] = []
        self._index: dict[str, tuple[int, int, int]] = {}  # id -> (shard, first row, end row)
        for directory, manifest in zip(self.store_dirs, self.parts, strict=True):
            for entry in manifest.get("attachments", {}).values():
                _verify_shard(directory, entry, sha=verify)
            self._open_shards(directory, manifest, verify)

    def _check_part(self, directory: Path, manifest: Mapping[str, Any]) -> None:
        """Refuse a directory that is not another part of the first one's capture (module docstring)."""
        first, where = self.manifest, f"{directory} and {self.store_dir}"
        if (manifest.get("layout", TOKEN_IDS.name), manifest.get("k")) != (self.layout.name, first.get("k")):
            raise TeacherSignalError(
                f"{where}: not parts of one capture (layout {manifest.get('layout', TOKEN_IDS.name)!r} "
                f"k={manifest.get('k')} vs {self.layout.name!r} k={first.get('k')})"
            )
        ours, theirs = (
            common_inputs(first.get("key_inputs", {})),
            common_inputs(manifest.get("key_inputs", {})),
        )
        if ours != theirs:
            raise TeacherSignalError(
                f"{where}: not parts of one capture: {differing_inputs(ours, theirs)}; only the examples "
                "(key inputs data, shard) may differ between stores read as one"
            )
        shas = [{n: e["sha256"] for n, e in m.get("attachments", {}).items()} for m in (first, manifest)]
        if shas[0] != shas[1]:
            raise TeacherSignalError(
                f"{where}: their attachments (a byte signal's candidate table) differ, so equal candidate ids "
                "would name different bytes"
            )

    def _open_shards(self, directory: Path, manifest: Mapping[str, Any], verify: bool) -> None:
        from safetensors import safe_open

        for entry in manifest["shards"]:
            path = _verify_shard(directory, entry, sha=verify)
            handle = safe_open(str(path), framework="pt")
            offsets = handle.get_tensor("offsets").tolist()
            expected = [0]
            for n in entry["lengths"]:
                expected.append(expected[-1] + n)
            if offsets != expected or len(entry["ids"]) != len(entry["lengths"]):
                raise TeacherSignalError(f"{path}: its offsets do not match the lengths in {MANIFEST}")
            number = len(self._shards)
            for i, example_id in enumerate(entry["ids"]):
                if example_id in self._index:
                    holder = self._index[example_id][0]
                    other = self._shard_dirs[holder] if holder < len(self._shard_dirs) else directory
                    if other == directory:
                        raise TeacherSignalError(f"{path}: example {example_id!r} is stored twice")
                    raise TeacherSignalError(
                        f"example {example_id!r} is in both {other} and {directory}: stores read as one must "
                        "hold disjoint examples (the same shard twice, or overlapping captures)"
                    )
                self._index[example_id] = (number, offsets[i], offsets[i + 1])
            self._shards.append(handle)
            self._shard_dirs.append(directory)

    # -- what is stored

    @property
    def key(self) -> str:
        """The content key; for several stores, a key of their keys (it changes when any part does)."""
        if len(self.parts) == 1:
            return self.manifest["key"]
        return content_key({"parts": sorted(p["key"] for p in self.parts)})

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def key_inputs(self) -> dict[str, Any]:
        """What the key hashes; for several stores, what they share, with `data` the list of theirs."""
        if len(self.parts) == 1:
            return dict(self.manifest.get("key_inputs", {}))
        data = sorted(str(p.get("key_inputs", {}).get("data")) for p in self.parts)
        return {**common_inputs(self.manifest.get("key_inputs", {})), "data": data}

    @property
    def complete(self) -> bool:
        """True once a capture stored every example of its data (several stores: every part of it)."""
        if len(self.parts) == 1:
            return bool(self.manifest.get("complete"))
        return _parts_complete(self.parts)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, example_id: object) -> bool:
        return example_id in self._index

    def ids(self) -> list[str]:
        """Example ids in storage order."""
        return list(self._index)

    def length(self, example_id: str) -> int:
        _, start, end = self._locate(example_id)
        return end - start

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise ValueError when `tokenizer` (the student's) is not the one the signal was captured with."""
        from kdistill.lm.tokenizers import UNSUPPORTED, tokenizer_fingerprint

        stored = self.key_inputs.get("tokenizer")
        actual = tokenizer_fingerprint(tokenizer)
        if stored is not None and stored != actual:
            raise ValueError(
                f"{self.store_dir}: the teacher signal was captured with tokenizer {stored}, this "
                f"tokenizer is {actual}; its token ids mean other text. {UNSUPPORTED}"
            )

    # -- reading

    def _locate(self, example_id: str) -> tuple[int, int, int]:
        try:
            return self._index[example_id]
        except KeyError:
            where = ", ".join(map(str, self.store_dirs))
            raise KeyError(
                f"example {example_id!r} has no teacher signal in {where} "
                f"({len(self)} examples stored{'' if self.complete else ', capture incomplete'})"
            ) from None

    def __getitem__(self, example_id: str) -> SignalRows:
        return self.get(example_id)

    def attachment(self, name: str) -> Path:
        """The path of a file written with the store (checked on open), e.g. the candidate table."""
        if name not in self.manifest.get("attachments", {}):
            raise TeacherSignalError(f"{self.store_dir}: the store has no {name}")
        return self.store_dir / name

    def fields(self, example_id: str) -> dict[str, Tensor]:
        """Every field of the example's rows, whatever the layout (read from the memory-mapped shard)."""
        number, start, end = self._locate(example_id)
        shard = self._shards[number]
        return {name: shard.get_slice(name)[start:end] for name, _, _ in self.layout.fields}

    def get(self, example_id: str, *, length: int | None = None) -> SignalRows:
        """The example's rows (read from the memory-mapped shard); `length` = its input_ids length, checked."""
        if self.layout is not TOKEN_IDS:
            raise TeacherSignalError(
                f"{self.store_dir} holds {self.layout.name!r} rows (a cross-tokenizer signal): read it with "
                "kdistill.lm.byte_signal.ByteSignal"
            )
        number, start, end = self._locate(example_id)
        if length is not None and length != end - start:
            raise TeacherSignalError(
                f"example {example_id!r} has {length} tokens but its teacher signal in {self.store_dir} "
                f"has {end - start} rows: the signal was captured for other token ids (another "
                "tokenizer, max_length or text); recapture for this data"
            )
        shard = self._shards[number]
        return SignalRows(
            shard.get_slice("topk_ids")[start:end],
            shard.get_slice("topk_logprobs")[start:end],
            shard.get_slice("valid")[start:end],
        )

    def batch(
        self,
        example_ids: Sequence[str],
        *,
        lengths: Sequence[int] | None = None,
        pad_to: int | None = None,
    ) -> dict[str, Tensor]:
        """Right-padded (B, T, k) topk_ids / topk_logprobs and (B, T) valid for a batch joined by id.

        `lengths` are the examples' input_ids lengths (checked against the stored rows); T = `pad_to`
        (at least the longest) or the longest. Padding rows: id -1, log-probability -inf, valid False.
        """
        if lengths is not None and len(lengths) != len(example_ids):
            raise ValueError(f"{len(example_ids)} example ids but {len(lengths)} lengths")
        rows = [
            self.get(i, length=None if lengths is None else int(lengths[n]))
            for n, i in enumerate(example_ids)
        ]
        longest = max((r.valid.shape[0] for r in rows), default=0)
        width = longest if pad_to is None else pad_to
        if width < longest:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest example ({longest} rows)")
        b, k = len(rows), self.k
        ids = torch.full((b, width, k), ABSENT_ID, dtype=torch.int32)
        logprobs = torch.full((b, width, k), float("-inf"), dtype=torch.float32)
        valid = torch.zeros((b, width), dtype=torch.bool)
        for n, r in enumerate(rows):
            length = r.valid.shape[0]
            ids[n, :length], logprobs[n, :length], valid[n, :length] = r
        return {"topk_ids": ids, "topk_logprobs": logprobs, "valid": valid}


def store_size_bytes(store_dir: str | Path) -> int:
    """Bytes of the listed shards (what the signal costs on disk)."""
    manifest = read_manifest(store_dir) or {"shards": []}
    return sum(int(s["bytes"]) for s in manifest["shards"])


__all__ = [
    "ABSENT_ID",
    "BYTES",
    "FORMAT",
    "LAYOUTS",
    "TOKEN_IDS",
    "RowLayout",
    "MANIFEST",
    "PARTS",
    "PART_INPUTS",
    "SignalRows",
    "TeacherSignal",
    "TeacherSignalError",
    "TeacherSignalWriter",
    "WriterOpenReport",
    "data_fingerprint",
    "common_inputs",
    "default_signal_dir",
    "read_manifest",
    "signal_dirs",
    "signal_key",
    "store_size_bytes",
]
