"""Where the command line prints: one console for results, one for errors, and the one-line user error.

Commands import these from here (never from the app module), so no command imports back from the CLI.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

console = Console()
if not console.is_terminal:  # logs and pipes: rich would assume 80 columns and squeeze the results table
    console = Console(width=160)
err_console = Console(stderr=True)


def fail(message: str, hint: str | None = None) -> typer.Exit:
    """Print a user error (one line per problem, optional hint) and return the exit-code-2 exception."""
    for line in message.splitlines():
        err_console.print(f"[bold red]error:[/] {line}", highlight=False, markup=True, soft_wrap=True)
    if hint:
        err_console.print(f"[dim]hint: {hint}[/]", soft_wrap=True)
    return typer.Exit(code=2)


class CountBar:
    """A rich progress bar fed by a job's progress(done, total) callback: `label`, bar, done/total `unit`,
    elapsed time. Starts at the first call (nothing is drawn for a job with nothing to do); `stop()` ends it."""

    def __init__(self, console: Any, label: str, unit: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.label = label
        self.progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            console=console,
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
