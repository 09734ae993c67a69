"""Exact resume: an interrupted run, restarted, ends with the same weights as an uninterrupted one."""

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


def _cli(cfg_path: Path, runs: Path, env: dict) -> list[str]:
    return [sys.executable, "-m", "kdistill.cli", "run", str(cfg_path), "--runs-dir", str(runs)]


@pytest.mark.slow
def test_sigkill_and_restart_gives_identical_weights(tmp_path, tiny_config):
    tiny_config["train"].update(steps=1500, checkpoint_every=25, eval_every=500)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config))
    env = {**os.environ, "PYTHONHASHSEED": "0"}

    reference = tmp_path / "reference"
    subprocess.run(_cli(cfg_path, reference, env), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(cfg_path, killed, env),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while not list(killed.glob("*/jobs/distilled-s0/checkpoints/latest")):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [run_dir] = list(killed.iterdir())
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "jobs/distilled-s0/done.json").exists()

    again = subprocess.run(_cli(cfg_path, killed, env), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "continued an unfinished run" in again.stdout
    assert [d.name for d in killed.iterdir()] == [run_dir.name]  # no second run directory

    [ref_dir] = list(reference.iterdir())
    for job in ("scratch-s0", "distilled-s0"):
        a = load_file(str(ref_dir / "jobs" / job / "model.safetensors"))
        b = load_file(str(run_dir / "jobs" / job / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{job}: {k} differs after resume"
