"""`kdistill run`: run (or continue) the experiment a config describes, print its results table."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from kdistill.cli.args import ConfigArg, OverridesArg, load_or_fail
from kdistill.cli.output import console, err_console, fail
from kdistill.cli.validate import preflight_or_fail

EXIT_FAILED = 1  # the config is fine but the run could not finish (a full or read-only disk)
EXIT_INTERRUPTED = 130
FULL = {errno.ENOSPC, errno.EDQUOT}
NOT_WRITABLE = {errno.EROFS, errno.EACCES}
# safetensors (Rust) reports a failed write as text: '... I/O error: <reason> (os error <n>) at path "<p>"'
SAFETENSORS_WRITE_ERROR = re.compile(
    r"Error while serializing: I/O error: (.+?) \(os error (\d+)\)(?: at path \"(.+)\")?"
)


def run(
    config: ConfigArg = None,
    overrides: OverridesArg = None,
    runs_dir: Annotated[Path, typer.Option(help="where run directories are created")] = Path("runs"),
    fresh: Annotated[bool, typer.Option(help="start a new run even if an unfinished one matches")] = False,
    wait: Annotated[
        bool, typer.Option(help="wait for a run of this config already going in --runs-dir")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print metrics.json instead of the table")] = False,
) -> None:
    """Train the teacher (or load it), distil the student, compare with the student from scratch, report.

    Rerunning the same command after an interruption continues the unfinished run.

    Example: kdistill run digits train.steps=300 seeds=[0]

    Exit codes: 0 done, 1 the run failed (e.g. a full disk), 2 user error, 130 interrupted.
    """
    from safetensors import SafetensorError

    from kdistill.classic.recipe import run as run_experiment
    from kdistill.detection.config import DetectionRunConfig
    from kdistill.encoders.config import EncoderRunConfig
    from kdistill.evaluation import domain_table, results_table
    from kdistill.generate.run import GenerationError
    from kdistill.lm.config import LMRunConfig
    from kdistill.runs.run_dir import RunBusyError
    from kdistill.runs.steps import TrainingDiverged

    cfg = load_or_fail(config, overrides)
    preflight_or_fail(cfg)  # before a run folder exists: a config that cannot run leaves none behind
    if isinstance(cfg, LMRunConfig):
        from kdistill.lm.recipe import run_lm as run_experiment
    elif isinstance(cfg, EncoderRunConfig):
        from kdistill.encoders.recipe import run_encoder as run_experiment
    elif isinstance(cfg, DetectionRunConfig):
        from kdistill.detection.recipe import run_detection as run_experiment
    try:
        result = run_experiment(
            cfg, runs_dir=runs_dir, fresh=fresh, wait=wait, console=None if as_json else console
        )
    except KeyboardInterrupt:
        raise interrupted(cfg, runs_dir, fresh=fresh) from None
    except (RunBusyError, GenerationError, TrainingDiverged, FileNotFoundError, ValueError, KeyError) as err:
        raise fail(str(err).strip("'\"")) from None
    except OSError as err:
        if err.errno not in FULL | NOT_WRITABLE:
            raise
        raise run_failed(write_failure(err.filename, err.errno, runs_dir)) from None
    except SafetensorError as err:
        match = SAFETENSORS_WRITE_ERROR.search(str(err))
        if match is None:
            raise
        path = Path(match[3]).parent if match[3] else None  # the file was a temporary one: name its folder
        raise run_failed(write_failure(path, int(match[2]), runs_dir)) from None
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
    if result.finished_elsewhere:
        console.print("[dim]the run this one waited for finished it: nothing was trained again[/]")
    console.print(results_table(result.metrics))  # its title is the headline
    off_domain = domain_table(result.metrics)  # encoder runs scored on other text
    if off_domain is not None:
        console.print(off_domain)
    run_dir = result.run_dir.absolute()
    console.print(f"run directory: {run_dir}", soft_wrap=True, highlight=False, markup=False)
    console.print(f"report: {run_dir / 'report.html'}", soft_wrap=True, highlight=False, markup=False)


def interrupted(cfg: Any, runs_dir: Path, *, fresh: bool) -> typer.Exit:
    """Ctrl-C: say how to continue (and which run folder a rerun continues, once it has one); exit 130."""
    from kdistill.runs.run_dir import find_unfinished_run

    run_dir = find_unfinished_run(runs_dir, cfg)
    rerun = "rerun the same command without --fresh" if fresh else "rerun the same command"
    where = f" ({run_dir})" if run_dir is not None else ""
    err_console.print(
        f"interrupted: {rerun} to continue{where}", soft_wrap=True, highlight=False, markup=False
    )
    return typer.Exit(code=EXIT_INTERRUPTED)


def write_failure(path: str | os.PathLike[str] | None, code: int, runs_dir: Path) -> str:
    """One line: where a write failed, the system's reason, and what to do about it."""
    from kdistill.runs.locations import default_cache_root

    cache = default_cache_root()
    where = str(path) if path is not None else f"(under {runs_dir} or the cache {cache})"
    message = f"cannot write {where}: {os.strerror(code)}"
    if code in FULL:
        return f"{message}; free some space, then rerun the same command to continue"
    if path is not None and _inside(Path(path), runs_dir):
        return f"{message}; give a writable --runs-dir"
    if path is not None and _inside(Path(path), cache):
        return f"{message}; set KDISTILL_CACHE_DIR to a writable folder"
    return message


def _inside(path: Path, folder: Path) -> bool:
    return path.absolute().is_relative_to(folder.absolute())


def run_failed(message: str) -> typer.Exit:
    """A run that failed for a reason other than its config: printed as a user error is, but exit 1."""
    return fail(message, code=EXIT_FAILED)
