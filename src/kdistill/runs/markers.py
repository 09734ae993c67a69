"""The "job finished" marker: a small JSON written atomically after a job's outputs, read before redoing it.

A job (one trained model, one evaluation) is done exactly when its marker exists; the marker holds what the
run needs from it afterwards (history, steps, seconds), so a rerun loads instead of recomputing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdistill.io import atomic_write_text

DONE = "done.json"


def read_done(job_dir: Path) -> dict[str, Any] | None:
    """The marker of a finished job, or None if the job has not finished."""
    path = job_dir / DONE
    return json.loads(path.read_text()) if path.is_file() else None


def mark_done(job_dir: Path, info: dict[str, Any]) -> None:
    """Mark the job finished; call only after its outputs are in place."""
    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job_dir / DONE, json.dumps(info))


def cached_json(path: Path, compute: Callable[[], Any]) -> Any:
    """`compute()` once: its JSON result is kept at `path`, and an interrupted run reads it back."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result))
    return result
