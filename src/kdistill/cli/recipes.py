"""`kdistill recipes`: list the built-in recipes or print one."""

from __future__ import annotations

from typing import Annotated

import typer

from kdistill.cli.output import fail
from kdistill.config import builtin_recipes


def recipes(name: Annotated[str | None, typer.Argument(help="print this recipe's YAML")] = None) -> None:
    """List the built-in recipes, or print one to start your own config from.

    Example: kdistill recipes digits > my.yaml
    """
    from importlib import resources

    if name is None:
        for r in builtin_recipes():
            typer.echo(r)
        return
    if name not in builtin_recipes():
        raise fail(f"no built-in recipe {name!r}; built-in: {', '.join(builtin_recipes())}")
    typer.echo(resources.files("kdistill.recipes").joinpath(f"{name}.yaml").read_text(), nl=False)
