"""The `kdistill` CLI with the `generate` command, run as a process by the tests.

Uses `kdistill.cli.app` when it already has `generate` registered; otherwise registers
`generate_command` on a copy-free wrapper app, so these tests do not depend on cli.py's wiring.
"""

import typer

from kdistill.cli import app
from kdistill.cli.generate import generate_command


def cli_app() -> typer.Typer:
    if any(c.name == "generate" for c in app.registered_commands):
        return app
    wrapper = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    wrapper.callback()(lambda: None)  # a group, so the command is called by name
    wrapper.command("generate")(generate_command)
    return wrapper


if __name__ == "__main__":
    cli_app()()
