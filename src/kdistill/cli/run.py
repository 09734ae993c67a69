"""`kdistill run`: run (or continue) the experiment a config describes, print its results table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from kdistill.cli.args import ConfigArg, OverridesArg, load_or_fail
from kdistill.cli.output import console, fail


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
    from kdistill.classic.recipe import run as run_experiment
    from kdistill.encoders.config import EncoderRunConfig
    from kdistill.evaluation import results_table
    from kdistill.lm.config import LMRunConfig
    from kdistill.runs.steps import TrainingDiverged

    cfg = load_or_fail(config, overrides)
    if isinstance(cfg, LMRunConfig):
        from kdistill.lm.recipe import run_lm as run_experiment
    elif isinstance(cfg, EncoderRunConfig):
        from kdistill.encoders.recipe import run_encoder as run_experiment
    try:
        result = run_experiment(cfg, runs_dir=runs_dir, fresh=fresh, console=None if as_json else console)
    except (TrainingDiverged, FileNotFoundError, ValueError, KeyError) as err:
        raise fail(str(err).strip("'\"")) from None
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
