"""`kdistill validate`: check a config and print it resolved."""

from __future__ import annotations

import typer

from kdistill.cli.args import ConfigArg, OverridesArg, load_or_fail


def validate(config: ConfigArg = None, overrides: OverridesArg = None) -> None:
    """Check a config without running it; print the resolved config (every default filled in).

    Example: kdistill validate my.yaml
    """
    cfg = load_or_fail(config, overrides)
    typer.echo(cfg.to_yaml())
