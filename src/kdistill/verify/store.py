"""Verdicts committed exactly once, so that a killed verification resumes and a changed config re-verifies
only what it changes.

A verdict is keyed by `verdict_key`: a hash of the record id (its answer never changes), the verifier's
name, version and options, and the prompt-file values that verifier reads for that record (its reference,
its tests). A rerun looks every key up and runs only the verifiers whose key has no verdict yet: change one
verifier's options, or one prompt's reference, and only those verdicts are computed again; the old ones
stay in the file (history), but no key is ever stored twice.

Layout of a verdicts directory::

    verdicts.log    one fsynced line per verdict, `<16 hex of sha256(json)> <json>\\n` (the journal format of
                    the generation store: a torn or corrupt line is never read as data)
    .lock           held (flock) by the one process writing here

A verdict line holds: key, record_id, prompt_id, sample_index, verifier, version, ok, reason, extracted,
detail, created. Verdicts are small (a few hundred bytes), so one append-only file serves millions of
answers; a directory that grew old verdicts can be deleted and verified again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO, Any

from kdistill.generate.records import canonical_json

JOURNAL = "verdicts.log"
LOCK = ".lock"


class VerdictStoreError(RuntimeError):
    """A verdicts directory that cannot be written (locked by another process)."""


def verdict_key(record_id: str, verifier: dict[str, Any], inputs: dict[str, Any]) -> str:
    """The key of one verifier's verdict on one record: what decides that verdict, hashed.

    `verifier`: {name, version, options}; `inputs`: the prompt-file values the verifier reads."""
    blob = canonical_json({"record_id": record_id, "verifier": verifier, "inputs": inputs})
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class VerdictStore:
    """A verdicts directory opened for writing by one process: `open()`, `append()` from one thread at a
    time, `close()` (or use it as a context manager)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.verdicts: dict[str, dict[str, Any]] = {}  # key -> verdict line
        self.lines_skipped = 0  # torn or corrupt lines found at open
        self._journal: IO[bytes] | None = None
        self._lock: IO[bytes] | None = None

    def open(self) -> VerdictStore:
        from kdistill.generate.store import cut_torn_tail, read_journal
        from kdistill.io import lock_directory

        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = lock_directory(
            self.out_dir / LOCK,
            lambda: VerdictStoreError(
                f"{self.out_dir}: another process is verifying into this directory (its {LOCK} is locked)"
            ),
        )
        path = self.out_dir / JOURNAL
        rows, self.lines_skipped = read_journal(path)
        cut_torn_tail(path)  # a line torn by a kill is cut, so the next append starts on a line of its own
        for row in rows:
            self.verdicts.setdefault(row["key"], row)
        self._journal = path.open("ab")
        return self

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> VerdictStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.verdicts.get(key)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Commit `rows` (one group: write, flush, fsync); a key already stored is a caller's bug."""
        from kdistill.generate.store import journal_line

        if self._journal is None:
            raise RuntimeError("verdict store is not open")
        keys = [r["key"] for r in rows]
        if len(set(keys)) != len(keys) or any(k in self.verdicts for k in keys):
            raise VerdictStoreError("a verdict key was committed twice (a bug in the caller)")
        self._journal.write(b"".join(journal_line(r) for r in rows))
        self._journal.flush()
        os.fsync(self._journal.fileno())
        for row in rows:
            self.verdicts[row["key"]] = row


def read_verdicts(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The committed verdicts of a directory by key, read without taking its lock."""
    from kdistill.generate.store import read_journal

    rows, _ = read_journal(Path(out_dir) / JOURNAL)
    verdicts: dict[str, dict[str, Any]] = {}
    for row in rows:
        verdicts.setdefault(row["key"], row)
    return verdicts
