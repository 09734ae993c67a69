"""Every command answers --help with its usage; an unknown command is a usage error."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kdistill.cli import app

COMMANDS = [
    [],
    ["run"],
    ["validate"],
    ["methods"],
    ["models"],
    ["recipes"],
    ["generate"],
    ["capture"],
    ["provenance"],
    ["provenance", "detect"],
    ["provenance", "radioactivity"],
    ["provenance", "compare"],
    ["provenance", "suspect"],
    ["export"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "kdistill")
def test_help_shows_the_usage_of_each_command(command):
    result = CliRunner().invoke(app, [*command, "--help"], prog_name="kdistill")
    assert result.exit_code == 0, result.output
    assert "Usage: kdistill" in result.output
    assert " ".join(["kdistill", *command]) in " ".join(result.output.split())


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(app, ["distil"])
    assert result.exit_code == 2
