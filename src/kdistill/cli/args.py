"""Arguments several commands share: a config (file or built-in recipe) with dotted overrides."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kdistill.cli.output import fail
from kdistill.config import load_config
from kdistill.schema import ConfigError

ConfigArg = Annotated[
    str | None,
    typer.Argument(help="a YAML config file or a built-in recipe name (default: digits)", show_default=False),
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="dotted overrides, e.g. train.steps=200 loss.1.weight=0.5", show_default=False),
]


def load_or_fail(config: str | None, overrides: list[str] | None) -> Any:
    """The validated config, or a one-line-per-problem user error (exit 2)."""
    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        raise fail(
            str(err), "`kdistill methods` lists loss names; `kdistill recipes` shows example configs"
        ) from None
