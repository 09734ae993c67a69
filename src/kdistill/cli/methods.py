"""`kdistill methods`: every loss, method, divergence, embedding loss, detection loss and verifier a config
can name."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from kdistill.cli.output import console


def methods(as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """List every loss term and distillation method a config can name.

    Example: kdistill methods
    """
    from kdistill.classic.methods import METHODS
    from kdistill.losses import LOSSES
    from kdistill.losses.embedding import EMBEDDING_LOSSES
    from kdistill.losses.token import DIVERGENCES

    rows = [("loss", n, LOSSES.get(n).role, LOSSES.summary(n)) for n in LOSSES.names()]
    rows += [("method", n, "scheme", METHODS.summary(n)) for n in METHODS.names()]
    for n in DIVERGENCES.names():
        params = ", ".join(f"{k}={v}" for k, v in DIVERGENCES.get(n).parameters.items())
        role = f"token (task: lm){'; ' + params if params else ''}"
        rows.append(("divergence", n, role, DIVERGENCES.summary(n)))
    rows += [
        ("embedding loss", n, "text embedding (task: encoder)", (fn.__doc__ or "").strip().splitlines()[0])
        for n, fn in sorted(EMBEDDING_LOSSES.items())
    ]
    from kdistill.detection.config import LOSS_PARAMS, LOSS_SUMMARIES

    rows += [
        (
            "detection loss",
            n,
            "detection (task: detection)"
            + (f"; params {', '.join(sorted(LOSS_PARAMS[n]))}" if LOSS_PARAMS[n] else ""),
            LOSS_SUMMARIES[n],
        )
        for n in sorted(LOSS_SUMMARIES)
    ]
    from kdistill.verify.registry import VERIFIERS

    rows += [
        (
            "verifier",
            n,
            f"verify: (kdistill verify, task: lm); v{VERIFIERS.get(n).version}",
            VERIFIERS.summary(n),
        )
        for n in VERIFIERS.names()
    ]
    if as_json:
        typer.echo(
            json.dumps(
                [dict(zip(("kind", "name", "role", "summary"), r, strict=True)) for r in rows], indent=2
            )
        )
        return
    table = Table("kind", "name", "role", "what it does")
    for row in rows:
        table.add_row(*row)
    console.print(table)
