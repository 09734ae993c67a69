"""The `kdistill` CLI with the `capture` command, run as a process by the kill test.

CAPTURE_TEST_FORWARD_DELAY (seconds) makes every teacher forward pass sleep first, so that a test can
kill the process between two shard commits of a tiny model. Uses `kdistill.cli.app` when it has
`capture` registered; otherwise registers `capture_command` on a wrapper app.
"""

import os
import time

import typer

import kdistill.lm.models as models
from kdistill.cli import app
from kdistill.cli.capture import capture_command


def cli_app() -> typer.Typer:
    if any(c.name == "capture" for c in app.registered_commands):
        return app
    wrapper = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    wrapper.callback()(lambda: None)  # a group, so the command is called by name
    wrapper.command("capture")(capture_command)
    return wrapper


def _slowed(load):
    def load_slow_model(*args, **kwargs):
        model = load(*args, **kwargs)
        delay = float(os.environ.get("CAPTURE_TEST_FORWARD_DELAY", "0"))
        model.register_forward_pre_hook(lambda *_: time.sleep(delay))
        return model

    return load_slow_model


if __name__ == "__main__":
    models.load_causal_lm = _slowed(models.load_causal_lm)
    cli_app()()
