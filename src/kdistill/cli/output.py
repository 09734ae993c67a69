"""Where the command line prints: one console for results, one for errors, and the one-line user error.

Commands import these from here (never from the app module), so no command imports back from the CLI.
"""

from __future__ import annotations

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
