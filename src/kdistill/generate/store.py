"""The generation output directory: rows committed exactly once, immutable shards, a verified manifest.

Layout of an output directory::

    manifest.json       shard list: file, sha256, rows, bytes; the teachers/sampling that wrote here
    shards/shard-00000.parquet ...   immutable; written to a temp file, fsynced, renamed, then listed
    journal.log         rows committed since the last shard: one fsynced line per row
    rejects.jsonl       answers that must not become training rows, each with a reason code
    errors.jsonl        requests that failed (retries exhausted, or not retryable), each with a code
    .lock               held (flock) by the one process writing this directory

**Commit protocol.** A row is committed when its journal line is on disk: lines are appended in groups
and fsynced before anyone is told (group commit). A journal line is `<16 hex of sha256(json)> <json>\n`;
a line without its newline (the process died mid-write) or whose checksum does not match is never read
as data. When the journal holds `shard_rows` rows, and whenever a writer opens the directory (after a
crash) or closes it, the journal is *sealed*: its valid rows, minus any record id already in a shard,
become a new shard (temp file, fsync, rename, directory fsync), then `manifest.json` is atomically
rewritten to list it, then the journal is truncated. A crash between those steps leaves either an
unlisted shard (deleted at the next open) or journal rows that are already in a shard (dropped at the
next seal), never a lost or a doubled row. `rejects.jsonl` and `errors.jsonl` are append-only JSONL
logs (a torn last line is cut off when a writer opens the directory); a record's reject line makes it
final for later runs, and a row committed later for the same record id (`retry_rejects`) supersedes it.

**Row schema** (the columns of `load_generations`; other tools consume these names):

=================== ============================================================================
record_id           str: hash of (prompt id, canonical prompt, teacher identity, sampling, sample index)
prompt_id           str: the prompt's id (or its line/row number)
sample_index        int: 0 .. samples-1
prompt              str or null: the plain prompt (null for chats)
messages            list of {role, content} or null: the chat (null for plain prompts)
completion          str: the teacher's answer
finish_reason       str: "stop" (or the server's own word for a natural end; "length" only if allowed)
teacher             str: JSON of the teacher identity (kind, base_url/model, api; never a key)
sampling            str: JSON of the sampling parameters
prompt_tokens       int or null
completion_tokens   int or null
logprobs            str or null: JSON list, one entry per generated token:
                    {"token": str, "logprob": float, "top": [{"token": str, "logprob": float}, ...]}
created             str: ISO 8601 UTC time the row was committed
=================== ============================================================================

`load_generations(DIR)` returns the committed rows (shards, verified against the manifest's sha256, plus
any rows still in the journal) as a `datasets.Dataset`, sorted by prompt id (numeric ids numerically)
then sample index, so the order does not depend on concurrency or crashes. `export_generations(DIR,
PATH)` writes them to `.jsonl` or `.parquet`.

**Several directories.** The N jobs of a sharded run (`kdistill generate --shard i/N`) each fill their own
directory; every reader here also takes a list of directories and reads them as one data set, in the same
order, after checking that no record id is in two of them (the error names both directories and the id).

**Streaming.** `load_generations(DIR, streaming=True)` (a `datasets.IterableDataset`) and
`iter_generations(DIR)` (plain dicts) give the same rows in the same order without loading the store:
shards are merged by that order, and a shard is read, checked against its sha256 and sorted only when
the merge first needs one of its rows, then dropped once its rows are yielded. A shard that is missing
or corrupt raises the same `GenerationStoreError` as the eager path, when the merge reaches it. Memory
is about one shard per shard the current position falls into: for the shards of one run (consecutive
prompts) one or two; for a directory that later runs filled with more samples of the same prompts,
every such shard at once. Before the merge starts, the prompt id and sample index columns of every shard
are read (unverified, only to plan the merge; rows are yielded from verified bytes only).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from kdistill.io import atomic_write_text, fsync_dir, lock_directory

FORMAT = "kdistill.generations/1"
MANIFEST = "manifest.json"
JOURNAL = "journal.log"
REJECTS = "rejects.jsonl"
ERRORS = "errors.jsonl"
SHARDS = "shards"
LOCK = ".lock"
_SHARD_NAME = re.compile(r"^shard-(\d{5,})\.parquet$")

COLUMNS = (
    "record_id",
    "prompt_id",
    "sample_index",
    "prompt",
    "messages",
    "completion",
    "finish_reason",
    "teacher",
    "sampling",
    "prompt_tokens",
    "completion_tokens",
    "logprobs",
    "created",
)


def row_schema():
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema(
        [
            ("record_id", pa.string()),
            ("prompt_id", pa.string()),
            ("sample_index", pa.int64()),
            ("prompt", pa.string()),
            ("messages", pa.list_(message)),
            ("completion", pa.string()),
            ("finish_reason", pa.string()),
            ("teacher", pa.string()),
            ("sampling", pa.string()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("logprobs", pa.string()),
            ("created", pa.string()),
        ]
    )


class GenerationStoreError(ValueError):
    """A problem with an output directory (corrupt shard, missing file, another writer); names the path."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- journal lines


def journal_line(row: dict[str, Any]) -> bytes:
    payload = json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(payload).hexdigest()[:16].encode() + b" " + payload + b"\n"


def read_journal(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The valid rows of a journal and how many lines were skipped (torn tail, bad checksum)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    lines = data.split(b"\n")
    skipped = 1 if lines[-1] else 0  # bytes after the last newline: a torn write
    rows = []
    for line in lines[:-1]:
        if not line:
            continue
        digest, _, payload = line.partition(b" ")
        try:
            if hashlib.sha256(payload).hexdigest()[:16].encode() != digest:
                raise ValueError("checksum")
            row = json.loads(payload)
            if not isinstance(row, dict) or "record_id" not in row:
                raise ValueError("not a row")
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            skipped += 1
            continue
        rows.append(row)
    return rows, skipped


def read_jsonl_log(path: Path) -> list[dict[str, Any]]:
    """The complete, parseable lines of rejects.jsonl / errors.jsonl (a torn last line is ignored)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    entries = []
    for line in data.split(b"\n")[:-1]:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


def cut_torn_tail(path: Path) -> int:
    """Truncate `path` after its last newline; returns the number of bytes cut."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    keep = data.rfind(b"\n") + 1
    if keep == len(data):
        return 0
    with path.open("r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return len(data) - keep


# ---------------------------------------------------------------- manifest and shards


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as err:
        raise GenerationStoreError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GenerationStoreError(f"{path}: not a kdistill generation manifest (format {FORMAT!r})")
    return manifest


def _rows_to_parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=row_schema())
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _verified_shard_table(out_dir: Path, entry: dict[str, Any]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = out_dir / entry["file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GenerationStoreError(f"{path}: listed in {MANIFEST} but missing") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry["sha256"]:
        raise GenerationStoreError(
            f"{path}: sha256 mismatch (manifest {entry['sha256'][:12]}..., file {actual[:12]}...): "
            "the shard was modified or corrupted after it was written"
        )
    table = pq.read_table(pa.BufferReader(data))
    if table.num_rows != entry["rows"]:
        raise GenerationStoreError(f"{path}: {table.num_rows} rows, manifest says {entry['rows']}")
    return table.select(list(COLUMNS)).cast(row_schema())


# ---------------------------------------------------------------- the writer


@dataclass
class OpenReport:
    """What opening (recovering) a directory found."""

    shard_rows: int = 0
    journal_rows_sealed: int = 0
    journal_lines_skipped: int = 0  # torn tail or corrupt lines in the journal
    duplicate_rows_dropped: int = 0  # journal rows already in a shard (crash between seal steps)
    orphan_files_removed: list[str] = field(default_factory=list)
    log_bytes_cut: int = 0  # torn tails cut from rejects.jsonl / errors.jsonl


class GenerationStore:
    """An output directory opened for writing by one process (the `.lock` flock says which).

    Call `open()` first (recovers after a crash), then `append_rows` / `append_rejects` /
    `append_errors` from one thread at a time, then `close()` (seals the journal).
    """

    def __init__(self, out_dir: str | Path, *, shard_rows: int = 10_000) -> None:
        self.out_dir = Path(out_dir)
        self.shard_rows = shard_rows
        self.done_ids: set[str] = set()  # record ids committed (shards + journal)
        self.rejected_ids: set[str] = set()  # record ids with a reject line
        self.manifest: dict[str, Any] = {}
        self._journal_rows: list[dict[str, Any]] = []  # rows in the journal since the last seal
        self._journal: IO[bytes] | None = None
        self._lock: IO[bytes] | None = None

    # -- open / close

    def open(self) -> OpenReport:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / SHARDS).mkdir(exist_ok=True)
        self._acquire_lock()
        report = OpenReport()
        manifest = read_manifest(self.out_dir)
        self.manifest = manifest or {
            "format": FORMAT,
            "shards": [],
            "rows": 0,
            "next_shard": 0,
            "sources": [],
            "created": utc_now(),
        }
        listed = {s["file"] for s in self.manifest["shards"]}
        for path in sorted((self.out_dir / SHARDS).iterdir()):
            if f"{SHARDS}/{path.name}" not in listed:  # a shard written but never listed, or a temp file
                path.unlink()
                report.orphan_files_removed.append(str(path.relative_to(self.out_dir)))
        for path in self.out_dir.glob(f".{MANIFEST}.*.tmp"):
            path.unlink()
            report.orphan_files_removed.append(path.name)
        for entry in self.manifest["shards"]:
            table = _verified_shard_table(self.out_dir, entry)
            self.done_ids.update(table.column("record_id").to_pylist())
        report.shard_rows = len(self.done_ids)

        rows, report.journal_lines_skipped = read_journal(self.out_dir / JOURNAL)
        for row in rows:
            if row["record_id"] in self.done_ids:
                report.duplicate_rows_dropped += 1
            else:
                self.done_ids.add(row["record_id"])
                self._journal_rows.append(row)
        report.journal_rows_sealed = len(self._journal_rows)
        self._seal()  # also truncates a journal that held only torn or duplicate lines
        if manifest is None:
            self._write_manifest()  # marks the directory as an output directory from the start

        for name in (REJECTS, ERRORS):
            report.log_bytes_cut += cut_torn_tail(self.out_dir / name)
        self.rejected_ids = {
            e["record_id"] for e in read_jsonl_log(self.out_dir / REJECTS) if "record_id" in e
        }
        self._journal = (self.out_dir / JOURNAL).open("ab")
        return report

    def close(self) -> None:
        """Seal the journal into a shard and release the lock. Safe to call twice."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
            self._seal()
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def _acquire_lock(self) -> None:
        self._lock = lock_directory(
            self.out_dir / LOCK,
            lambda: GenerationStoreError(
                f"{self.out_dir}: another process is writing this directory (its {LOCK} is locked)"
            ),
        )

    # -- sources (which teacher and sampling wrote rows here)

    @property
    def sources(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("sources", []))

    def add_source(self, source: dict[str, Any]) -> None:
        if source not in self.manifest.setdefault("sources", []):
            self.manifest["sources"].append(source)
            self._write_manifest()

    # -- appends (each call is one group commit: write, flush, fsync)

    def append_rows(self, rows: list[dict[str, Any]]) -> None:
        if self._journal is None:
            raise RuntimeError("store is not open")
        fresh = [r for r in rows if r["record_id"] not in self.done_ids]
        if len(fresh) != len(rows) or len({r["record_id"] for r in fresh}) != len(fresh):
            raise GenerationStoreError("a record id was committed twice (a bug in the caller)")
        self._journal.write(b"".join(journal_line(r) for r in fresh))
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self.done_ids.update(r["record_id"] for r in fresh)
        self._journal_rows.extend(fresh)
        if len(self._journal_rows) >= self.shard_rows:
            self._journal.close()
            self._seal()
            self._journal = (self.out_dir / JOURNAL).open("ab")

    def append_rejects(self, entries: list[dict[str, Any]]) -> None:
        self._append_log(REJECTS, entries)
        self.rejected_ids.update(e["record_id"] for e in entries)

    def append_errors(self, entries: list[dict[str, Any]]) -> None:
        self._append_log(ERRORS, entries)

    def _append_log(self, name: str, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode()
        with (self.out_dir / name).open("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    # -- sealing

    def _seal(self) -> None:
        """Journal rows -> a new listed shard -> truncate the journal (see the module docstring)."""
        if self._journal_rows:
            number = self.manifest["next_shard"]
            name = f"{SHARDS}/shard-{number:05d}.parquet"
            data = _rows_to_parquet(self._journal_rows)
            _atomic_write_fsynced(self.out_dir / name, data)
            self.manifest["shards"].append(
                {
                    "file": name,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "rows": len(self._journal_rows),
                    "bytes": len(data),
                }
            )
            self.manifest["rows"] += len(self._journal_rows)
            self.manifest["next_shard"] = number + 1
            self._write_manifest()
            self._journal_rows = []
        journal = self.out_dir / JOURNAL
        if journal.exists() and journal.stat().st_size:
            with journal.open("r+b") as f:
                f.truncate(0)
                os.fsync(f.fileno())

    def _write_manifest(self) -> None:
        self.manifest["updated"] = utc_now()
        atomic_write_text(self.out_dir / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")
        fsync_dir(self.out_dir)


def _atomic_write_fsynced(path: Path, data: bytes) -> None:
    from kdistill.io import atomic_write_bytes

    atomic_write_bytes(path, data)
    fsync_dir(path.parent)  # the rename itself survives a power loss


# ---------------------------------------------------------------- reading and exporting


def _prompt_order_key(prompt_id: str, sample_index: int) -> tuple:
    return ((0, int(prompt_id), "") if prompt_id.isdigit() else (1, 0, prompt_id), sample_index)


def _in_order(table):
    """`table` sorted by prompt id, then sample index; rows that tie keep their order (a stable sort)."""
    import pyarrow as pa

    ids = table.column("prompt_id").to_pylist()
    samples = table.column("sample_index").to_pylist()
    order = sorted(range(len(ids)), key=lambda i: _prompt_order_key(ids[i], samples[i]))
    return table.take(pa.array(order, type=pa.int64()))


def _read_manifest_of_output(out_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise GenerationStoreError(f"{out_dir}: not a generation output directory (no {MANIFEST})")
    return manifest


def _journal_only_rows(journal_rows: list[dict[str, Any]], shard_ids: set[str]) -> list[dict[str, Any]]:
    """Journal rows not already in a shard, the first copy of each record, in the schema's columns."""
    seen = set(shard_ids)
    fresh = []
    for row in journal_rows:
        if row["record_id"] not in seen:
            seen.add(row["record_id"])
            fresh.append({c: row.get(c) for c in COLUMNS})
    return fresh


OutDirs = str | os.PathLike | Sequence[str | os.PathLike]
"""One output directory, or several read as one (the parts of a sharded run: `--shard i/N`)."""


def output_dirs(out_dir: OutDirs) -> list[Path]:
    """`out_dir` as a list of directories (one, or the several given); none at all is an error."""
    if isinstance(out_dir, str | os.PathLike):
        return [Path(out_dir)]
    dirs = [Path(d) for d in out_dir]
    if not dirs:
        raise GenerationStoreError("no output directory given (expected one or more)")
    return dirs


def check_disjoint(ids_by_dir: Sequence[tuple[Path, Iterator[str] | Sequence[str] | set[str]]]) -> None:
    """Raise `GenerationStoreError` naming both directories and the id when a record id is in two of them.

    The parts of a sharded run never share a record; two that do are the same part twice, or parts of
    runs that overlap, and reading them as one would train on a row twice.
    """
    owner: dict[str, int] = {}
    for n, (directory, ids) in enumerate(ids_by_dir):
        for rid in ids:
            first = owner.setdefault(rid, n)
            if first != n:
                raise GenerationStoreError(
                    f"record {rid} is in both {ids_by_dir[first][0]} and {directory}: the directories "
                    "overlap (the same shard twice, or runs whose shards overlap); read each record's "
                    "directory once"
                )


def load_generations_table(out_dir: OutDirs, *, include_journal: bool = True):
    """The committed rows as a pyarrow Table (see `load_generations`); several directories read as one."""
    import pyarrow as pa

    dirs = output_dirs(out_dir)
    if len(dirs) == 1:
        return _one_table(dirs[0], include_journal)
    tables = [_one_table(d, include_journal) for d in dirs]
    check_disjoint([(d, t.column("record_id").to_pylist()) for d, t in zip(dirs, tables, strict=True)])
    return _in_order(pa.concat_tables(tables))  # a stable sort: equal keys keep the directories' order


def _one_table(out_dir: Path, include_journal: bool):
    import pyarrow as pa

    # The journal before the manifest: a row sealed by a concurrent writer in between is then in the
    # shard list we read next, and a row read twice is dropped by record id. Never one missed.
    journal_rows = read_journal(out_dir / JOURNAL)[0] if include_journal else []
    manifest = _read_manifest_of_output(out_dir)
    tables = [_verified_shard_table(out_dir, entry) for entry in manifest["shards"]]
    shard_ids = {rid for t in tables for rid in t.column("record_id").to_pylist()}
    fresh = _journal_only_rows(journal_rows, shard_ids)
    if fresh:
        tables.append(pa.Table.from_pylist(fresh, schema=row_schema()))
    table = pa.concat_tables(tables) if tables else row_schema().empty_table()
    return _in_order(table)


def iter_generations(out_dir: OutDirs, *, include_journal: bool = True) -> Iterator[dict[str, Any]]:
    """The rows of `load_generations`, in its order, one dict at a time, shard by shard (module docstring).

    Nothing is read until the first row is asked for; a shard is verified just before its first row.
    Several directories: their record ids (journal rows and the shards' id columns) are checked for
    overlap before the first row, then their streams are merged by the same order.
    """
    dirs = output_dirs(out_dir)
    if len(dirs) == 1:
        yield from _iter_one(dirs[0], include_journal)
        return
    check_disjoint([(d, _record_ids(d, include_journal)) for d in dirs])
    streams = [_iter_one(d, include_journal) for d in dirs]
    # heapq.merge is stable: equal keys come in the directories' order, as in the eager path
    yield from heapq.merge(*streams, key=lambda row: _prompt_order_key(row["prompt_id"], row["sample_index"]))


def _record_ids(out_dir: Path, include_journal: bool) -> list[str]:
    """Every record id of a directory, sorted (journal and shards' id columns; unverified: to check overlap)."""
    ids = {row["record_id"] for row in read_journal(out_dir / JOURNAL)[0]} if include_journal else set()
    for entry in _read_manifest_of_output(out_dir)["shards"]:
        ids.update(_unverified_shard_keys(out_dir, entry, with_ids=True).column("record_id").to_pylist())
    return sorted(ids)


def _iter_one(out_dir: Path, include_journal: bool) -> Iterator[dict[str, Any]]:
    import pyarrow as pa

    journal_rows = read_journal(out_dir / JOURNAL)[0] if include_journal else []  # before the manifest
    shards = _read_manifest_of_output(out_dir)["shards"]
    in_journal = {row["record_id"] for row in journal_rows}
    # Plan the merge: the first key of every shard, and which journal rows a shard already holds.
    heap: list[tuple[tuple, int, dict[str, Any] | None]] = []  # (key, stream, row; None = shard unread)
    in_shards: set[str] = set()
    for n, entry in enumerate(shards):
        keys = _unverified_shard_keys(out_dir, entry, with_ids=bool(in_journal))
        if keys.num_rows == 0:
            _verified_shard_table(out_dir, entry)  # nothing to merge, but it must still be intact
            continue
        ids, samples = keys.column("prompt_id").to_pylist(), keys.column("sample_index").to_pylist()
        first = min(_prompt_order_key(p, i) for p, i in zip(ids, samples, strict=True))
        heap.append((first, n, None))
        if in_journal:
            in_shards.update(in_journal.intersection(keys.column("record_id").to_pylist()))
    streams: dict[int, Iterator[tuple[tuple, dict[str, Any]]]] = {}
    fresh = _journal_only_rows(journal_rows, in_shards)
    if fresh:  # the journal merges last among equal keys, as it is concatenated last in the eager path
        journal = len(shards)
        streams[journal] = _keyed_rows(pa.Table.from_pylist(fresh, schema=row_schema()))
        key, row = next(streams[journal])
        heap.append((key, journal, row))
    heapq.heapify(heap)
    while heap:
        key, n, row = heapq.heappop(heap)
        if row is None:  # the merge reached this shard: read and verify it now, then its first row
            streams[n] = _keyed_rows(_verified_shard_table(out_dir, shards[n]))
            key, row = next(streams[n])
        yield row
        following = next(streams[n], None)
        if following is None:
            del streams[n]  # the shard's rows are all out: let it go
        else:
            heapq.heappush(heap, (following[0], n, following[1]))


def _keyed_rows(table) -> Iterator[tuple[tuple, dict[str, Any]]]:
    """(order key, row) for the rows of `table`, sorted; converted to dicts a batch at a time."""
    table = _in_order(table)  # the unsorted table is not kept alive beside the sorted one
    for batch in table.to_batches(max_chunksize=1024):
        for row in batch.to_pylist():
            yield _prompt_order_key(row["prompt_id"], row["sample_index"]), row


def _unverified_shard_keys(out_dir: Path, entry: dict[str, Any], *, with_ids: bool):
    """The order columns of a shard (and record ids), read without the hash check, to plan a merge."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = ["prompt_id", "sample_index", *(["record_id"] if with_ids else [])]
    try:
        return pq.read_table(out_dir / entry["file"], columns=columns)
    except (OSError, pa.ArrowException):
        _verified_shard_table(out_dir, entry)  # missing, or no longer the Parquet file that was hashed
        raise


def load_generations(out_dir: OutDirs, *, include_journal: bool = True, streaming: bool = False):
    """The committed rows of an output directory as a `datasets.Dataset` (schema: module docstring).

    `out_dir` may be a list of directories (the parts of a `--shard i/N` run): their rows are read as
    one data set in the same order, after checking that no record id is in two of them
    (`GenerationStoreError` naming both directories and the id).

    Every shard is checked against the sha256 and row count in manifest.json; a mismatch raises
    `GenerationStoreError` naming the file. Rows still in the journal (a run in progress, or one that
    crashed and was not restarted) are included unless `include_journal=False`; their lines carry
    their own checksums and a torn last line is ignored.

    `streaming=True`: a `datasets.IterableDataset` of the same rows in the same order, read shard by
    shard each time it is iterated (`iter_generations`), for directories larger than memory. Only the
    manifest is read now; a corrupt shard raises when the iteration reaches it.
    """
    import datasets

    if streaming:
        dirs = output_dirs(out_dir)
        for d in dirs:
            _read_manifest_of_output(d)  # a wrong directory fails here, not at the first row
        return datasets.IterableDataset.from_generator(
            iter_generations,
            features=datasets.Features.from_arrow_schema(row_schema()),
            # a tuple, not a list: datasets would split a list among shards of the generator
            gen_kwargs={"out_dir": tuple(str(d) for d in dirs), "include_journal": include_journal},
        )
    return datasets.Dataset(load_generations_table(out_dir, include_journal=include_journal))


def export_generations(out_dir: OutDirs, path: str | Path) -> Path:
    """Write the committed rows to `path`: `.jsonl` (one JSON object per row) or `.parquet`, atomically."""
    import pyarrow.parquet as pq

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise GenerationStoreError(f"{path}: export format by suffix: .jsonl or .parquet, got {suffix!r}")
    table = load_generations_table(out_dir)
    with _atomic_file(path) as f:
        if suffix == ".parquet":
            pq.write_table(table, f, compression="zstd")
        else:
            for batch in table.to_batches(max_chunksize=1024):
                for row in batch.to_pylist():
                    f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
    return path


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Stream into a temp file beside `path`; fsync and rename over it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
