"""Helpers of the generation tests (importable; fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CLI = Path(__file__).with_name("cli_main.py")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """`kdistill generate ARGS...` in a fresh process."""
    return subprocess.run(
        [sys.executable, str(CLI), "generate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def start_cli(*args: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """The CLI as a process that takes Ctrl-C as a user's shell would deliver it: a child inherits an ignored
    SIGINT, and something in the test process (a library of another test) may have ignored it."""
    import signal

    return subprocess.Popen(
        [sys.executable, str(CLI), "generate", *args],
        env={**os.environ, **(env or {})},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **popen,
    )
