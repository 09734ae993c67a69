"""One logger per run, with sinks: every task's training and evaluation log entries go through it.

Sinks: the console (a progress bar per job, `RunProgress`), and the experiment trackers a config names in
`report_to` (`tensorboard`, `mlflow`). metrics.json and the history lists stay the recipes' own records, as
before; trackers receive the same numbers, flattened to `job/key` names.

    logger = RunLogger.for_run(run_dir, cfg, console=console, main=is_main_process)
    with logger.shown():
        log = logger.job("kd-cached", "student KD", total=steps)
        train(..., on_log=log.log)      # each entry: {"step": 10, "loss": 2.3, "terms": {...}, ...}
        log.done()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from kdistill.runs.progress import RunProgress
from kdistill.runs.trackers import MLflowSink, TensorBoardSink, config_params
from kdistill.schema import TRACKER_SINKS, ConfigError


class Sink(Protocol):
    """Where log entries go. Every method may be a no-op; `close` may be called more than once."""

    def start_job(self, job: str, label: str, total: int | None) -> None: ...

    def log(self, job: str, step: int, values: Mapping[str, float], entry: Mapping[str, Any]) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def numeric_leaves(entry: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested dicts to `a/b` keys, keeping only finite-or-not real numbers (bools and text dropped)."""
    out: dict[str, float] = {}
    for key, value in entry.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= numeric_leaves(value, f"{name}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class ProgressSink:
    """The console: one bar per job, moved to each entry's step."""

    def __init__(self, progress: RunProgress) -> None:
        self.progress = progress
        self.bars: dict[str, Callable[..., None]] = {}

    def start_job(self, job: str, label: str, total: int | None) -> None:
        self.bars[job] = self.progress.bar(label, total)

    def log(self, job: str, step: int, values: Mapping[str, float], entry: Mapping[str, Any]) -> None:
        self.move(job, step)

    def move(self, job: str, step: int, total: int | None = None) -> None:
        """Put the job's bar at `step` (and set its total, for a spinner that ends)."""
        if job in self.bars:
            self.bars[job](step, total=total)

    def close(self, failed: bool = False) -> None:
        pass


class JobLog:
    """The log of one job (a training, an evaluation): `log(entry)` sends an entry with a `step` to all sinks."""

    def __init__(self, logger: RunLogger, job: str, total: int | None) -> None:
        self.logger, self.job, self.total = logger, job, total

    def log(self, entry: Mapping[str, Any]) -> None:
        step = int(entry.get("step", 0))
        values = numeric_leaves({k: v for k, v in entry.items() if k != "step"})
        for sink in self.logger.sinks:
            sink.log(self.job, step, values, entry)

    def advance(self, step: int) -> None:
        """Move the console bar only (every step; trackers get the logged entries, not every step)."""
        self.logger.progress_sink.move(self.job, step)

    def done(self) -> None:
        """Show the job as complete (a finished job loaded from an earlier session, or a spinner's end)."""
        if self.total is None:
            self.logger.progress_sink.move(self.job, 1, total=1)
        else:
            self.logger.progress_sink.move(self.job, self.total)


class RunLogger:
    def __init__(self, progress: RunProgress, trackers: Sequence[Sink] = ()) -> None:
        self.progress = progress
        self.progress_sink = ProgressSink(progress)
        self.sinks: list[Sink] = [self.progress_sink, *trackers]

    @classmethod
    def for_run(cls, run_dir: Path, cfg: Any, *, console: Console | None, main: bool = True) -> RunLogger:
        """The console (main process only) and the trackers of `cfg.report_to` (main process only). The run's
        folder is named first, as an absolute path on its own line, so a log shows where the run is going."""
        progress = RunProgress(console if main else None)
        progress.note(f"run directory: {Path(run_dir).absolute()}")
        trackers = tracker_sinks(run_dir, cfg) if main else []
        return cls(progress, trackers)

    @contextlib.contextmanager
    def shown(self) -> Iterator[RunLogger]:
        """Bars visible while the block runs; the trackers are closed (flushed) when it ends, and told
        whether it failed (an MLflow run ends FAILED, not FINISHED)."""
        try:
            with self.progress.shown():
                yield self
        except BaseException:
            self.close(failed=True)
            raise
        self.close()

    def job(self, job: str, label: str, total: int | None = None) -> JobLog:
        for sink in self.sinks:
            sink.start_job(job, label, total)
        return JobLog(self, job, total)

    def close(self, failed: bool = False) -> None:
        for sink in self.sinks:
            sink.close(failed=failed)


def tracker_sinks(run_dir: Path, cfg: Any) -> list[Sink]:
    """The sinks named by `cfg.report_to` (a config without that field has none), MLflow's at
    `cfg.tracking_uri` (None: a store in the run dir), in an experiment named after the config."""
    sinks: list[Sink] = []
    try:
        for name in getattr(cfg, "report_to", None) or []:
            if name == "tensorboard":
                sinks.append(TensorBoardSink(run_dir))
            elif name == "mlflow":
                params = config_params(cfg.model_dump(mode="json")) if hasattr(cfg, "model_dump") else {}
                experiment = getattr(cfg, "name", None) or "kdistill"
                sinks.append(
                    MLflowSink(
                        run_dir,
                        getattr(cfg, "tracking_uri", None),
                        run_name=Path(run_dir).name,
                        experiment=experiment,
                        params=params,
                    )
                )
            else:
                raise ConfigError(f"report_to: unknown sink {name!r}; known: {', '.join(TRACKER_SINKS)}")
    except BaseException:
        for sink in sinks:  # e.g. tensorboard opened, then mlflow's package missing: leave nothing open
            sink.close(failed=True)
        raise
    return sinks
