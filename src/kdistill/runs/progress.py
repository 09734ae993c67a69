"""The one progress display of every task: a rich bar per job on a terminal, plain periodic lines when the
output goes to a file or a pipe (rich would print nothing until the end there), nothing without a console."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# (label, total) -> update(done): how components report progress without knowing about rich
ProgressFactory = Callable[[str, int | None], Callable[[int], None]]


# Seconds between two plain lines of one job when the output is not a terminal.
PLAIN_INTERVAL_S = 30.0


class PlainLines:
    """Progress as lines a log file keeps: `label: done/total (rate/s, ETA ...)` at most every `interval_s`
    per job, and always at the first update and when the job completes. `clock` is injectable for tests."""

    def __init__(
        self,
        console: Console,
        *,
        interval_s: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console, self.interval_s, self.clock = console, interval_s, clock

    def bar(self, label: str, total: int | None) -> Callable[..., None]:
        started = self.clock()
        state: dict[str, float | int | None] = {"printed": None, "total": total, "done": None}

        def update(done: int, total: int | None = None) -> None:
            if total is not None:
                state["total"] = total
            now, last, whole = self.clock(), state["printed"], state["total"]
            finished = whole is not None and done >= whole
            if done == state["done"] or (last is not None and not finished and now - last < self.interval_s):
                return
            state["printed"], state["done"] = now, done
            self.console.print(
                plain_line(label, done, whole, now - started), markup=False, highlight=False, soft_wrap=True
            )

        return update


def plain_line(label: str, done: int, total: int | None, elapsed_s: float) -> str:
    """One progress line: count, rate, elapsed time and (when the total is known) the time left."""
    count = f"{done}/{total}" if total is not None else str(done)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    parts = [f"{rate:.3g}/s", f"elapsed {_clock_time(elapsed_s)}"]
    if total is not None and done >= total:
        parts.append("done")
    elif total is not None and rate > 0:
        parts.append(f"ETA {_clock_time((total - done) / rate)}")
    return f"{label}: {count} ({', '.join(parts)})"


def _clock_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunProgress:
    """Bars for the jobs of one run: rich bars on a terminal, `PlainLines` when the console is not one (output
    redirected), and without a console every call is a no-op (tests, `--json`, other ranks)."""

    def __init__(self, console: Console | None, *, plain_interval_s: float = PLAIN_INTERVAL_S) -> None:
        self.plain = (
            PlainLines(console, interval_s=plain_interval_s)
            if console is not None and not console.is_terminal
            else None
        )
        self.bars = (
            Progress(
                TextColumn("{task.description:<24}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            if console is not None and self.plain is None
            else None
        )

    @contextlib.contextmanager
    def shown(self) -> Iterator[RunProgress]:
        with self.bars if self.bars is not None else contextlib.nullcontext():
            yield self

    def warn(self, text: str) -> None:
        """A warning line above the bars (nothing without a console)."""
        if self.plain is not None:
            self.plain.console.print(f"warning: {text}", markup=False, highlight=False, soft_wrap=True)
        elif self.bars is not None:
            self.bars.console.print(f"[yellow]warning:[/] {text}", soft_wrap=True)

    def note(self, text: str) -> None:
        """A plain line above the bars (nothing without a console), e.g. where the run's folder is."""
        console = self.plain.console if self.plain is not None else self.bars.console if self.bars else None
        if console is not None:
            console.print(text, markup=False, highlight=False, soft_wrap=True)

    def bar(self, label: str, total: int | None = None) -> Callable[..., None]:
        """A new bar; the returned `update(done, total=None)` moves it."""
        if self.plain is not None:
            return self.plain.bar(label, total)
        if self.bars is None:
            return lambda done, total=None: None
        task = self.bars.add_task(label, total=total)
        bars = self.bars

        def update(done: int, total: int | None = None) -> None:
            if total is not None:
                bars.update(task, completed=done, total=total)
            else:
                bars.update(task, completed=done)

        return update

    def spinner(self, label: str) -> Callable[[], None]:
        """A bar for work of unknown length; call the returned function when it is done."""
        update = self.bar(label, None)
        return lambda: update(1, total=1)

    def factory(self) -> ProgressFactory:
        return lambda label, total: self.bar(label, total)
