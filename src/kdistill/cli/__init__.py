"""The `kdistill` command line: the typer app (`app.py`) and one module per command group."""

from kdistill.cli.app import app, main

__all__ = ["app", "main"]
