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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace `path` with `data` atomically; on any error the old file is untouched and no temp file remains."""
    target = Path(path)
    # mkstemp creates the file private (0600); keep an existing file's mode, else the one open() would give.
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = new_file_mode()
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


def new_file_mode() -> int:
    """The mode `open()` gives a new file: 0666 less the process umask (0644 under the usual 022).

    Files written through a private temporary file (mkstemp, safetensors' `save_file`) are 0600; weights
    and checkpoints are chmod-ed to this so other users and tools read them like any other output.
    """
    try:  # Linux: read it without changing it (os.umask can only be read by setting it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def make_readable(directory: str | os.PathLike[str]) -> None:
    """Give every file under `directory` the mode of a new file (`new_file_mode`): writers that go through
    a private temporary file (safetensors' `save_file`, so `save_pretrained`) leave their files 0600."""
    mode = new_file_mode()
    for path in Path(directory).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that insists on a file name (safetensors, ONNX exporters):
    on success the file is synced, made readable like any other output (`new_file_mode`) and renamed onto
    `path`; on any error it is removed and `path` is untouched."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save_safetensors(path: str | os.PathLike[str], tensors: dict[str, Any]) -> Path:
    """`tensors` as a safetensors file at `path`, written beside it and renamed into place, readable like
    any other output (`new_file_mode`, not safetensors' private 0600)."""
    from safetensors.torch import save_file

    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp))
    return Path(path)


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


def lock_directory(
    lock_file: str | os.PathLike[str], busy: Callable[[], Exception] | None = None, *, wait: bool = False
) -> IO[bytes]:
    """Take an exclusive flock on `lock_file` (created if missing) and return its handle.

    One writer per store directory: a second process gets `busy()` raised at once instead of interleaving
    its rows (`wait`: it blocks until the holder releases instead; no `busy` needed). Closing the handle
    (or the process dying) releases the lock. Without fcntl (not POSIX) the file is opened but nothing is
    locked.
    """
    lock = Path(lock_file).open("ab")
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        return lock
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        lock.close()
        if busy is None:
            raise
        raise busy() from None
    except BaseException:  # Ctrl-C while waiting
        lock.close()
        raise
    return lock
