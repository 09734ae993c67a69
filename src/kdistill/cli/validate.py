"""`kdistill validate`: check a config, and the files and models it names, and print it resolved."""

from __future__ import annotations

from typing import Any

import typer

from kdistill.cli.args import ConfigArg, OverridesArg, load_or_fail
from kdistill.cli.output import fail


def validate(config: ConfigArg = None, overrides: OverridesArg = None) -> None:
    """Check a config without running it: its fields, then what it names (checkpoints, model folders, layers
    to tap, the device); print the resolved config (every default filled in).

    Example: kdistill validate my.yaml
    """
    cfg = load_or_fail(config, overrides)
    preflight_or_fail(cfg)
    typer.echo(cfg.to_yaml())


def preflight_or_fail(cfg: Any) -> None:
    """Every problem the files and models a config names reveal (kdistill.preflight), as a user error
    (exit 2): `validate` reports them, and `run` before it makes a run folder."""
    from kdistill.preflight import PreflightError, preflight

    try:
        preflight(cfg)
    except PreflightError as err:
        raise fail(str(err)) from None
