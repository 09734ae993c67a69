"""How long a training job took, across the sessions of a resumed run."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kdistill.io import atomic_write_text


class TrainClock:
    """Wall-clock seconds a training job has taken, summed over the sessions of a resumed run.

    `tick()` (called from the job's log callback) writes the running total to `path` atomically, so a
    killed job's time is kept up to its last log; steps redone after the resume count again, as they took
    time again. `write=False` (processes other than the main one) only measures.
    """

    def __init__(self, path: Path, *, write: bool = True) -> None:
        self.path, self.write = path, write
        self.before = float(json.loads(path.read_text())["seconds"]) if path.is_file() else 0.0
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def tick(self) -> None:
        if self.write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps({"seconds": round(self.seconds, 3)}))
