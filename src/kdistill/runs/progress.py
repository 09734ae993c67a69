"""The one progress display of every task: a rich bar per job (or nothing when there is no console)."""

from __future__ import annotations

import contextlib
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


class RunProgress:
    """Bars for the jobs of one run; without a console every call is a no-op (tests, `--json`, other ranks)."""

    def __init__(self, console: Console | None) -> None:
        self.bars = (
            Progress(
                TextColumn("{task.description:<24}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            if console is not None
            else None
        )

    @contextlib.contextmanager
    def shown(self) -> Iterator[RunProgress]:
        with self.bars if self.bars is not None else contextlib.nullcontext():
            yield self

    def warn(self, text: str) -> None:
        """A warning line above the bars (nothing without a console)."""
        if self.bars is not None:
            self.bars.console.print(f"[yellow]warning:[/] {text}", soft_wrap=True)

    def bar(self, label: str, total: int | None = None) -> Callable[..., None]:
        """A new bar; the returned `update(done, total=None)` moves it."""
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
