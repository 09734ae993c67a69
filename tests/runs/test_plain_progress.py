"""Progress when the output is not a terminal: plain periodic lines (a log file keeps them), not rich bars
that print nothing until the end; the run's folder named as an absolute path."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from kdistill.runs.progress import PlainLines, RunProgress, plain_line


def file_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=80), out  # a file is not a terminal


def test_plain_line_has_count_rate_elapsed_and_eta() -> None:
    assert plain_line("teacher", 250, 1000, 50.0) == "teacher: 250/1000 (5/s, elapsed 0:00:50, ETA 0:02:30)"
    assert plain_line("teacher", 1000, 1000, 3725.0) == "teacher: 1000/1000 (0.268/s, elapsed 1:02:05, done)"
    assert plain_line("cache", 7, None, 2.0) == "cache: 7 (3.5/s, elapsed 0:00:02)"


def test_lines_come_at_most_every_interval_and_always_at_the_end() -> None:
    console, out = file_console()
    now = [100.0]
    lines = PlainLines(console, interval_s=30.0, clock=lambda: now[0])
    update = lines.bar("job-a", 100)
    for step, t in [(1, 101), (10, 110), (20, 125), (40, 131), (41, 140), (90, 170), (100, 172)]:
        now[0] = t
        update(step)
    printed = out.getvalue().splitlines()
    # 1 (first), 40 (30 s after the first line), 90 (39 s later), 100 (finished, whatever the interval)
    assert [line.split(" ")[1] for line in printed] == ["1/100", "40/100", "90/100", "100/100"]
    assert printed[-1] == "job-a: 100/100 (1.39/s, elapsed 0:01:12, done)"
    update(100)  # the same count again (a finished job loaded) prints nothing new
    assert len(out.getvalue().splitlines()) == 4


def test_a_file_console_gets_lines_and_a_terminal_gets_bars() -> None:
    console, out = file_console()
    progress = RunProgress(console)
    assert progress.plain is not None and progress.bars is None
    with progress.shown():
        progress.note("run directory: /abs/runs/x")
        progress.bar("student", 2)(2)
        progress.warn("a [bracketed] warning")
    assert out.getvalue().splitlines()[0] == "run directory: /abs/runs/x"
    assert out.getvalue().splitlines()[1].startswith("student: 2/2 (")
    assert out.getvalue().splitlines()[2] == "warning: a [bracketed] warning"
    terminal = RunProgress(Console(file=io.StringIO(), force_terminal=True))
    assert terminal.plain is None and terminal.bars is not None
    assert RunProgress(None).bar("x", 1)(1) is None  # no console: silent


def test_a_redirected_run_prints_progress_and_its_absolute_run_directory(
    tmp_path, tiny_config, monkeypatch
) -> None:
    import yaml
    from typer.testing import CliRunner

    from kdistill.cli import app

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(config), "--runs-dir", "runs"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    run_dirs = [line for line in lines if line.startswith("run directory: ")]
    assert len(run_dirs) == 2 and run_dirs[0] == run_dirs[1]  # when it starts, and at the end
    path = run_dirs[0].removeprefix("run directory: ")
    assert Path(path).is_absolute() and Path(path).parent.resolve() == (tmp_path / "runs").resolve()
    assert any(re.fullmatch(r"scratch-s0: (\d+)/\1 \(.*, done\)", line) for line in lines), lines
    assert lines[-1] == f"report: {path}/report.html"
