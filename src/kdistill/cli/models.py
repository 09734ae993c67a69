"""`kdistill models`: the classifier task's model zoo."""

from __future__ import annotations

from rich.table import Table

from kdistill.cli.output import console


def models() -> None:
    """List the model-zoo architectures a config can name as teacher.arch / student.arch."""
    from kdistill.classic.zoo import MODELS

    table = Table("name", "what it is")
    for name in MODELS.names():
        table.add_row(name, MODELS.summary(name))
    console.print(table)
