"""Where the command line prints: one console for results, one for errors, and the one-line user error.

Commands import these from here (never from the app module), so no command imports back from the CLI.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import Progress, ProgressColumn, Task
from rich.table import Table

console = Console()
if not console.is_terminal:  # logs and pipes: rich would assume 80 columns and squeeze the results table
    console = Console(width=160)
err_console = Console(stderr=True)


def fail(message: str, hint: str | None = None, *, code: int = 2) -> typer.Exit:
    """Print a user error (one line per problem, optional hint) and return the exception that exits with
    `code` (2: bad input; 1: a run that failed for another reason). Messages quote the user's own text
    (paths, values), so they are printed as written, never read as rich markup."""
    for line in message.splitlines():
        err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, markup=True, soft_wrap=True)
    if hint:
        err_console.print(f"[dim]hint: {escape(hint)}[/]", soft_wrap=True)
    return typer.Exit(code=code)


class FittingProgress(Progress):
    """A rich `Progress` whose line fits the console: while it is too wide, the columns of `drop_first` are
    left out in that order (the bar first), so that the count, rate, elapsed time and ETA stay whole.

    Rich itself would crop the line at the right edge, which loses exactly those (the last columns) in a
    log file or pipe (80 columns) or a narrow terminal.
    """

    def __init__(self, *columns: ProgressColumn, drop_first: Sequence[ProgressColumn] = (), **kwargs: Any):
        self.drop_first = list(drop_first)  # first: rich renders once while it is being built
        super().__init__(*columns, **kwargs)

    def make_tasks_table(self, tasks: Iterable[Task]) -> Table:
        shown = [t for t in tasks if t.visible]
        every = [c for c in self.columns if isinstance(c, ProgressColumn)]
        columns, dropped = list(every), []
        # no task yet (rich renders once while it is built): nothing to fit
        for column in self.drop_first if shown else ():
            if self._width(columns, shown) <= self.console.width:
                break
            columns.remove(column)
            dropped.append(column)
        for column in reversed(dropped[:-1]):  # a more useful column dropped early may fit again now
            fuller = [c for c in every if c in columns or c is column]
            if self._width(fuller, shown) <= self.console.width:
                columns = fuller
        table = Table.grid(
            *(c.get_table_column().copy() for c in columns), padding=(0, 1), expand=self.expand
        )
        for task in shown:
            table.add_row(*(c(task) for c in columns))
        return table

    def _width(self, columns: list[ProgressColumn], tasks: list[Task]) -> int:
        """The widest line these columns make of these tasks (cells and the one space between them)."""
        options = self.console.options
        widths = [
            sum(Measurement.get(self.console, options, c(task)).maximum for c in columns) + len(columns) - 1
            for task in tasks
        ]
        return max(widths, default=0)


class CountBar:
    """A rich progress bar fed by a job's progress(done, total) callback: `label`, bar, done/total `unit`,
    elapsed time. Starts at the first call (nothing is drawn for a job with nothing to do); `stop()` ends it."""

    def __init__(self, console: Any, label: str, unit: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        self.label = label
        bar = BarColumn()
        self.progress = FittingProgress(
            TextColumn(f"[bold]{label}"),
            bar,
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            console=console,
            drop_first=[bar],
        )
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total, completed=done)
        else:
            self.progress.update(self.task, total=total, completed=done)

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()
