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


def killed_and_rerun_equals_uninterrupted(cfg_path: Path, tmp_path: Path, job: str) -> None:
    """Run `cfg_path` once whole; run it again, SIGKILL it after `jobs/<job>` wrote its first checkpoint, rerun
    it: the rerun continues the unfinished run and ends with a student bit-identical to the whole run's."""
    env = {**os.environ, "KDISTILL_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    def cli(runs: Path) -> list[str]:
        return [sys.executable, "-m", "kdistill.cli", "run", str(cfg_path), "--runs-dir", str(runs)]

    subprocess.run(cli(tmp_path / "reference"), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cli(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 120
    while not list(killed.glob(f"*/jobs/{job}/checkpoints/latest")):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run_dir,) = list(killed.iterdir())
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "student").exists()

    again = subprocess.run(cli(killed), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continued an unfinished run" in again.stdout
    (ref_dir,) = list((tmp_path / "reference").iterdir())
    a = AutoModelForCausalLM.from_pretrained(ref_dir / "student").state_dict()
    b = AutoModelForCausalLM.from_pretrained(run_dir / "student").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
