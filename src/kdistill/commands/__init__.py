"""CLI commands that live in their own module (registered on the typer app in `kdistill.cli`)."""
