"""The `kdistill` command line: run, validate, methods, models, recipes.

User errors (bad config, unknown names, missing files) are one line per problem and exit code 2; only
bugs show a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kdistill.config import ConfigError, builtin_recipes, load_config

app = typer.Typer(
    help="Knowledge distillation: a small, fast student learns from a large teacher.\n\n"
    "Examples:\n\n  kdistill run                      # the built-in default (digits)\n\n"
    "  kdistill run my.yaml train.steps=200 loss.1.params.temperature=2\n\n"
    "  kdistill methods                  # every loss and method a config can name",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
if not console.is_terminal:  # logs and pipes: rich would assume 80 columns and squeeze the results table
    console = Console(width=160)
err_console = Console(stderr=True)


def _fail(message: str, hint: str | None = None) -> typer.Exit:
    for line in message.splitlines():
        err_console.print(f"[bold red]error:[/] {line}", highlight=False, markup=True, soft_wrap=True)
    if hint:
        err_console.print(f"[dim]hint: {hint}[/]", soft_wrap=True)
    return typer.Exit(code=2)


ConfigArg = Annotated[
    str | None,
    typer.Argument(help="a YAML config file or a built-in recipe name (default: digits)", show_default=False),
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="dotted overrides, e.g. train.steps=200 loss.1.weight=0.5", show_default=False),
]


def _load(config: str | None, overrides: list[str] | None):
    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        raise _fail(
            str(err), "`kdistill methods` lists loss names; `kdistill recipes` shows example configs"
        ) from None


@app.command()
def run(
    config: ConfigArg = None,
    overrides: OverridesArg = None,
    runs_dir: Annotated[Path, typer.Option(help="where run directories are created")] = Path("runs"),
    fresh: Annotated[bool, typer.Option(help="start a new run even if an unfinished one matches")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print metrics.json instead of the table")] = False,
) -> None:
    """Train the teacher (or load it), distil the student, compare with the student from scratch, report.

    Rerunning the same command after an interruption continues the unfinished run.

    Example: kdistill run digits train.steps=300 seeds=[0]
    """
    from kdistill.config import EncoderRunConfig, LMRunConfig
    from kdistill.evaluation import results_table
    from kdistill.runner import run as run_experiment
    from kdistill.training.loop import TrainingDiverged

    cfg = _load(config, overrides)
    if isinstance(cfg, LMRunConfig):
        from kdistill.lm_runner import run_lm as run_experiment
    elif isinstance(cfg, EncoderRunConfig):
        from kdistill.encoder_runner import run_encoder as run_experiment
    try:
        result = run_experiment(cfg, runs_dir=runs_dir, fresh=fresh, console=None if as_json else console)
    except (TrainingDiverged, FileNotFoundError, ValueError, KeyError) as err:
        raise _fail(str(err).strip("'\"")) from None
    if isinstance(cfg, LMRunConfig):
        from kdistill.lm.train import close_process_group

        close_process_group()  # under torchrun every process finished the run: leave the group cleanly
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun / accelerate launch only the main process prints
    if as_json:
        typer.echo(json.dumps(result.metrics, indent=2))
        return
    if result.resumed:
        console.print("[dim]continued an unfinished run[/]")
    console.print(results_table(result.metrics))  # its title is the headline
    console.print(f"report: {result.run_dir / 'report.html'}", soft_wrap=True, highlight=False)


@app.command()
def validate(config: ConfigArg = None, overrides: OverridesArg = None) -> None:
    """Check a config without running it; print the resolved config (every default filled in).

    Example: kdistill validate my.yaml
    """
    cfg = _load(config, overrides)
    typer.echo(cfg.to_yaml())


@app.command()
def methods(as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """List every loss term and distillation method a config can name.

    Example: kdistill methods
    """
    from kdistill.losses import LOSSES
    from kdistill.losses.embedding import EMBEDDING_LOSSES
    from kdistill.losses.token import TOKEN_DIVERGENCES
    from kdistill.methods import METHODS

    rows = [("loss", n, LOSSES.get(n).role, LOSSES.summary(n)) for n in LOSSES.names()]
    rows += [("method", n, "scheme", METHODS.summary(n)) for n in METHODS.names()]
    rows += [
        ("divergence", n, "token (task: lm)", TOKEN_DIVERGENCES.summary(n)) for n in TOKEN_DIVERGENCES.names()
    ]
    rows += [
        ("embedding loss", n, "text embedding (task: encoder)", (fn.__doc__ or "").strip().splitlines()[0])
        for n, fn in sorted(EMBEDDING_LOSSES.items())
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


@app.command()
def models() -> None:
    """List the model-zoo architectures a config can name as teacher.arch / student.arch."""
    from kdistill.models import MODELS

    table = Table("name", "what it is")
    for name in MODELS.names():
        table.add_row(name, MODELS.summary(name))
    console.print(table)


@app.command()
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
        raise _fail(f"no built-in recipe {name!r}; built-in: {', '.join(builtin_recipes())}")
    typer.echo(resources.files("kdistill.recipes").joinpath(f"{name}.yaml").read_text(), nl=False)


def _register_generate() -> None:
    # its own module: the generate command has many flags and imports the openai client lazily
    from kdistill.commands.generate import generate_command

    app.command("generate")(generate_command)


_register_generate()


def _register_capture() -> None:
    # its own module, like generate: the command wires a config to the capture components
    from kdistill.commands.capture import capture_command

    app.command("capture")(capture_command)


_register_capture()


def _register_provenance() -> None:
    # its own module: a command group (detect, radioactivity, compare) that imports torch lazily
    from kdistill.commands.provenance import provenance_app

    app.add_typer(provenance_app, name="provenance")


_register_provenance()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
