"""The `kdistill` command line: one module per command, registered here.

User errors (bad config, unknown names, missing files) are one line per problem and exit code 2; only
bugs show a traceback. Commands import torch and the task packages lazily, so `--help` stays quick.
"""

from __future__ import annotations

import typer

from kdistill.cli.capture import capture_command
from kdistill.cli.export import export_command
from kdistill.cli.generate import generate_command
from kdistill.cli.methods import methods
from kdistill.cli.models import models
from kdistill.cli.provenance import provenance_app
from kdistill.cli.recipes import recipes
from kdistill.cli.run import run
from kdistill.cli.validate import validate
from kdistill.cli.verify import verify_command

app = typer.Typer(
    help="Knowledge distillation: a small, fast student learns from a large teacher.\n\n"
    "Examples:\n\n  kdistill run                      # the built-in default (digits)\n\n"
    "  kdistill run my.yaml train.steps=200 loss.1.params.temperature=2\n\n"
    "  kdistill methods                  # every loss and method a config can name",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(run)
app.command()(validate)
app.command()(methods)
app.command()(models)
app.command()(recipes)
app.command("generate")(generate_command)
app.command("capture")(capture_command)
app.command("verify")(verify_command)
app.command("export")(export_command)
app.add_typer(provenance_app, name="provenance")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
