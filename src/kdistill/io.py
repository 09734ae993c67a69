"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of either.

Run artefacts (reports, plots, metrics) are rewritten in place while other tools may be reading them,
and a run can be killed at any moment; writing to a temporary file in the same directory, fsyncing it
and then `os.replace`-ing it over the target gives all-or-nothing semantics on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace `path` with `data` atomically; on any error the old file is untouched and no temp file remains."""
    target = Path(path)
    # mkstemp creates the file private (0600); keep an existing file's mode, else the usual 0644.
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    # Same directory as the target: os.replace is only atomic within one filesystem.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp_file:
            tmp_file.write(data)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())  # data on disk before the rename makes it visible
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Text form of `atomic_write_bytes` (utf-8 by default, newlines written as given)."""
    return atomic_write_bytes(path, text.encode(encoding))


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside `path` survive a power loss (a no-op where directories cannot be fsynced)."""
    with contextlib.suppress(OSError):  # not supported on every platform/filesystem
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lock_directory(lock_file: str | os.PathLike[str], busy: Callable[[], Exception]) -> IO[bytes]:
    """Take an exclusive, non-blocking flock on `lock_file` (created if missing) and return its handle.

    One writer per store directory: a second process gets `busy()` raised at once instead of interleaving
    its rows. Closing the handle (or the process dying) releases the lock. Without fcntl (not POSIX) the
    file is opened but nothing is locked.
    """
    lock = Path(lock_file).open("ab")
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        return lock
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise busy() from None
    return lock
