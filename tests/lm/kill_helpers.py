"""Kill a `kdistill run` mid-training and run it again (importable helper of the LM run tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


def run_dirs(runs: Path) -> list[Path]:
    """The run directories in `runs` (not its hidden `.locks`)."""
    return [d for d in runs.iterdir() if not d.name.startswith(".")]


def killed_and_rerun_equals_uninterrupted(cfg_path: Path, tmp_path: Path, job: str) -> None:
    """Run `cfg_path` once whole (in this process: one interpreter start fewer); run it with the CLI, SIGKILL
    it after `jobs/<job>` wrote its first checkpoint, rerun it: the rerun continues the unfinished run and
    ends with a student bit-identical to the whole run's."""
    from kdistill.config import load_config
    from kdistill.lm.recipe import run_lm

    env = {**os.environ, "KDISTILL_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    def cli(runs: Path) -> list[str]:
        return [sys.executable, "-m", "kdistill.cli", "run", str(cfg_path), "--runs-dir", str(runs)]

    reference = run_lm(load_config(cfg_path), runs_dir=tmp_path / "reference", cache_root=tmp_path / "cache")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cli(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240  # a hang, not slowness
        while not list(killed.glob(f"*/jobs/{job}/checkpoints/latest")):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, f"no checkpoint of job {job} within 240 s"
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (run_dir,) = run_dirs(killed)
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "student").exists()

    again = subprocess.run(cli(killed), env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continued an unfinished run" in again.stdout
    assert run_dirs(killed) == [run_dir]
    a = AutoModelForCausalLM.from_pretrained(reference.run_dir / "student").state_dict()
    b = AutoModelForCausalLM.from_pretrained(run_dir / "student").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
