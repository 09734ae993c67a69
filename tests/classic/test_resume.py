"""Exact resume: an interrupted run, restarted, ends with the same weights as an uninterrupted one."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kdistill.classic.config import TrainConfig
from kdistill.classic.loop import Batch, train


def _toy_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return x, y


def _fresh_model():
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2)
    )


def _loss(model):
    def fn(batch: Batch):
        return {"ce": torch.nn.functional.cross_entropy(model(batch.x), batch.target)}

    return fn


@pytest.mark.parametrize("stop_at", [7, 10, 23])
def test_loop_resumed_equals_uninterrupted(tmp_path, stop_at):
    # dropout consumes the RNG, the cosine schedule and Adam carry state: all must be restored
    cfg = TrainConfig(steps=30, batch_size=8, lr=0.05, eval_every=4, checkpoint_every=5)
    x, y = _toy_problem()
    full = _fresh_model()
    torch.manual_seed(2)
    ref_history = train(full, _loss(full), x=x, target=y, cfg=cfg, seed=3)

    torch.manual_seed(2)
    part = _fresh_model()
    torch.manual_seed(2)
    train(part, _loss(part), x=x, target=y, cfg=cfg, seed=3, checkpoint_dir=tmp_path, stop_after=stop_at)
    resumed = _fresh_model()  # a new process would rebuild the model from scratch
    torch.manual_seed(99)  # and would not share the interrupted process's RNG
    history = train(resumed, _loss(resumed), x=x, target=y, cfg=cfg, seed=3, checkpoint_dir=tmp_path)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [h["step"] for h in history] == [h["step"] for h in ref_history]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in ref_history], rel=1e-12)


def _run_dirs(runs: Path) -> list[Path]:
    """The run directories in `runs` (not its hidden `.locks`)."""
    return [d for d in runs.iterdir() if not d.name.startswith(".")]


@pytest.mark.slow
def test_sigkill_and_restart_gives_identical_weights(tmp_path, tiny_config):
    """A run SIGKILLed once its distilled job wrote its first checkpoint (a point every run reaches: no sleep
    decides it), then `kdistill run` again in a new process: it continues the run and ends bit-identical to
    an uninterrupted one. The 90 steps after that checkpoint are the killer's margin. The killed run is a
    fork of this process, which has imported torch, sklearn and matplotlib already (a fresh interpreter
    spends most of this test importing them); the restart is a fresh interpreter, sharing nothing."""
    from kdistill.classic.recipe import run
    from kdistill.config import parse_config

    tiny_config["threads"] = 1  # the tiny models run several times slower when threads oversubscribe
    tiny_config["train"].update(steps=100, checkpoint_every=10, eval_every=50)
    cfg = parse_config(tiny_config)
    # uninterrupted, here (this also trains the session's cached teacher the other two runs load)
    reference = run(cfg, runs_dir=tmp_path / "reference").run_dir

    killed = tmp_path / "killed"
    proc = multiprocessing.get_context("fork").Process(target=run, args=(cfg,), kwargs={"runs_dir": killed})
    proc.start()
    try:
        deadline = time.monotonic() + 240  # a hang, not slowness
        while not list(killed.glob("*/jobs/distilled-s0/checkpoints/latest")):
            assert proc.is_alive(), f"the run ended (exit code {proc.exitcode}) before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint of the distilled job within 240 s"
            time.sleep(0.005)
    finally:
        proc.kill()  # SIGKILL
        proc.join()
    assert proc.exitcode == -signal.SIGKILL
    [run_dir] = _run_dirs(killed)
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "jobs/distilled-s0/done.json").exists()
    assert (run_dir / "jobs/scratch-s0/done.json").is_file()  # the restart loads this job, resumes the other

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config))
    again = subprocess.run(
        [sys.executable, "-m", "kdistill.cli", "run", str(cfg_path), "--runs-dir", str(killed)],
        env={**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert again.returncode == 0, again.stderr
    assert "continued an unfinished run" in again.stdout
    assert _run_dirs(killed) == [run_dir]  # no second run directory

    for job in ("scratch-s0", "distilled-s0"):
        a = load_file(str(reference / "jobs" / job / "model.safetensors"))
        b = load_file(str(run_dir / "jobs" / job / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{job}: {k} differs after resume"
