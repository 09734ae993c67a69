"""One run per folder (issue 15): a config's runs in a runs folder are locked, a folder is born with its
manifest, finished jobs drop their checkpoints, weights are written with the umask's mode."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdistill.classic import recipe
from kdistill.classic.config import TrainConfig
from kdistill.classic.loop import Batch
from kdistill.classic.methods.base import run_job
from kdistill.classic.recipe import run
from kdistill.config import parse_config
from kdistill.io import make_readable
from kdistill.runs.checkpoint import TENSORS, load_latest_checkpoint, save_checkpoint
from kdistill.runs.run_dir import RunBusyError, open_run_dir, run_lock_file

# A process that claims the config's run folder, says so on stdout, and holds it until `release` exists
# (then, with "finish", marks the run finished first); if the folder is taken it prints the refusal. The
# claim needs only the config's name and hash, so it imports no torch and starts in a fraction of a second.
HOLDER = r"""
import json, sys, time
from pathlib import Path
from types import SimpleNamespace
from kdistill.runs.run_dir import RunBusyError, claim_run_dir

name, config_hash, runs, go, release, finish = sys.argv[1:7]
cfg = SimpleNamespace(name=name, config_hash=lambda: config_hash)
deadline = time.monotonic() + 120  # a hang, not slowness
while not Path(go).exists() and time.monotonic() < deadline:
    time.sleep(0.01)
try:
    with claim_run_dir(cfg, Path(runs), fresh=False) as claim:
        print("claimed", claim.run_dir, flush=True)
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        if finish == "finish":
            (claim.run_dir / "metrics.json").write_text(json.dumps({"finished_by": "holder"}))
except RunBusyError as err:
    print("busy", err, flush=True)
"""


@pytest.fixture
def small_config(tiny_config):
    """The tiny config with a 10-step teacher (cached for the session) and a 10-step student only."""
    tiny_config["teacher"]["train"].update(steps=10, eval_every=5, checkpoint_every=5)
    tiny_config["train"].update(steps=10, eval_every=5, checkpoint_every=5)
    tiny_config["evaluation"] = {"compare_scratch": False}
    return tiny_config


class Holder:
    """A HOLDER process; `go` starts it (several can be started together), `release` lets it go."""

    def __init__(self, config: dict, runs: Path, signals: Path, *, finish: bool = False) -> None:
        self.go, self.release = signals / "go", signals / "release"
        cfg = parse_config(config)
        args = [cfg.name, cfg.config_hash(), str(runs), str(self.go), str(self.release)]
        args.append("finish" if finish else "-")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def said(self) -> tuple[str, str]:
        """(claimed | busy, the rest of its line)."""
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        word, rest = line.rstrip("\n").split(" ", 1)
        return word, rest

    def finish(self) -> None:
        self.release.touch()
        assert self.proc.wait(timeout=120) == 0, self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()


def run_folders(runs: Path) -> list[Path]:
    return sorted(d for d in runs.iterdir() if not d.name.startswith("."))


def expected_refusal(runs: Path, cfg, pid: int, run_dir: str) -> str:
    holder = json.loads(run_lock_file(runs, cfg).read_text())
    datetime.fromisoformat(holder["started"])  # a real timestamp, written by the holder
    return (
        f"{runs}: config {cfg.name} (hash {cfg.config_hash()}) is already running there: pid {pid} on "
        f"{socket.gethostname()}, started {holder['started']}, run folder {run_dir}; wait for it to finish "
        "(--wait), stop that process, or use another --runs-dir"
    )


def test_a_second_run_of_the_same_config_is_refused_naming_the_holder(tmp_path, small_config):
    cfg, runs = parse_config(small_config), tmp_path / "runs"
    (tmp_path / "go").touch()
    holder = Holder(small_config, runs, tmp_path)
    try:
        word, run_dir = holder.said()
        assert word == "claimed"
        with pytest.raises(RunBusyError) as refused:
            run(cfg, runs_dir=runs)
        assert str(refused.value) == expected_refusal(runs, cfg, holder.proc.pid, run_dir)
        assert run_folders(runs) == [Path(run_dir)]  # the refused process made no folder
    finally:
        holder.finish()


def test_two_runs_started_together_make_one_run_folder(tmp_path, small_config):
    cfg, runs = parse_config(small_config), tmp_path / "runs"
    holders = [Holder(small_config, runs, tmp_path) for _ in range(2)]
    (tmp_path / "go").touch()
    try:
        said = {h.proc.pid: h.said() for h in holders}
        [winner] = [pid for pid, (word, _) in said.items() if word == "claimed"]
        [loser] = [pid for pid, (word, _) in said.items() if word == "busy"]
        run_dir = said[winner][1]
        assert said[loser][1] == expected_refusal(runs, cfg, winner, run_dir)
        assert run_folders(runs) == [Path(run_dir)]
    finally:
        for h in holders:
            h.finish()


def wait_until_blocked_on(lock_file: Path) -> None:
    """Until some process waits for `lock_file`'s flock (a `->` line of /proc/locks names its inode)."""
    if not Path("/proc/locks").is_file():
        pytest.skip("needs /proc/locks to see a waiting process")
    inode = lock_file.stat().st_ino
    deadline = time.monotonic() + 120  # a hang, not slowness
    while not any(
        "->" in line and line.split()[-3].endswith(f":{inode}")
        for line in Path("/proc/locks").read_text().splitlines()
    ):
        assert time.monotonic() < deadline, "the waiting run never reached the lock"
        time.sleep(0.01)


def run_in_thread(**kwargs) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        try:
            out["result"] = run(**kwargs)
        except BaseException as err:  # shown by the test's assertion
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_wait_continues_the_run_its_holder_left_unfinished(tmp_path, small_config):
    cfg, runs = parse_config(small_config), tmp_path / "runs"
    (tmp_path / "go").touch()
    holder = Holder(small_config, runs, tmp_path)
    try:
        word, run_dir = holder.said()
        thread, out = run_in_thread(cfg=cfg, runs_dir=runs, wait=True)
        wait_until_blocked_on(run_lock_file(runs, cfg))
    finally:
        holder.finish()  # the holder gives up without finishing: the waiter continues its folder
    thread.join(timeout=240)
    assert "error" not in out, out.get("error")
    result = out["result"]
    assert result.run_dir == Path(run_dir) and result.resumed and not result.finished_elsewhere
    assert json.loads((result.run_dir / "metrics.json").read_text()) == result.metrics
    assert run_folders(runs) == [Path(run_dir)]


def test_wait_returns_the_run_its_holder_finished(tmp_path, small_config):
    cfg, runs = parse_config(small_config), tmp_path / "runs"
    (tmp_path / "go").touch()
    holder = Holder(small_config, runs, tmp_path, finish=True)
    try:
        word, run_dir = holder.said()
        thread, out = run_in_thread(cfg=cfg, runs_dir=runs, wait=True)
        wait_until_blocked_on(run_lock_file(runs, cfg))
    finally:
        holder.finish()
    thread.join(timeout=240)
    assert "error" not in out, out.get("error")
    result = out["result"]
    assert result.finished_elsewhere and result.run_dir == Path(run_dir)
    assert result.metrics == {"finished_by": "holder"}  # read back, nothing trained again
    assert run_folders(runs) == [Path(run_dir)]


def test_a_run_killed_in_the_teacher_phase_is_continued_by_a_rerun(tmp_path, small_config, monkeypatch):
    cfg, runs = parse_config(small_config), tmp_path / "runs"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(recipe, "load_teacher", killed)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, runs_dir=runs)
    [folder] = run_folders(runs)
    assert json.loads((folder / "manifest.json").read_text())["config_hash"] == cfg.config_hash()
    result = run(cfg, runs_dir=runs)
    assert result.run_dir == folder and result.resumed
    assert (folder / "metrics.json").is_file() and run_folders(runs) == [folder]
    # finished jobs (the run's and the cached teacher's) keep their weights, not their checkpoints
    teacher_dir = Path(json.loads((folder / "manifest.json").read_text())["teacher"]["path"])
    for job in [*(folder / "jobs").iterdir(), teacher_dir]:
        assert (job / "model.safetensors").is_file() and not (job / "checkpoints").exists(), job


def test_an_empty_folder_or_a_manifestless_one_of_the_same_config_is_reused(tmp_path, small_config):
    cfg, runs = parse_config(small_config), tmp_path / "runs"
    other = parse_config({**small_config, "seeds": [1]})
    empty, same, foreign = (runs / f"tiny-20000101-00000{i}" for i in range(3))
    for d in (empty, same, foreign):
        d.mkdir(parents=True)
    (same / "config.yaml").write_text(cfg.to_yaml())  # left by a version that wrote the manifest later
    (foreign / "config.yaml").write_text(other.to_yaml())
    run_dir, resumed = open_run_dir(cfg, runs, fresh=False)
    assert (run_dir, resumed) == (same, False)  # the newest folder this config may use
    assert json.loads((same / "manifest.json").read_text())["config_hash"] == cfg.config_hash()
    (same / "metrics.json").write_text("{}")
    assert open_run_dir(cfg, runs, fresh=False) == (empty, False)
    assert not (foreign / "manifest.json").exists()  # another config's folder is left alone


def test_a_new_run_folder_is_born_with_its_manifest(tmp_path, small_config):
    cfg, runs = parse_config(small_config), tmp_path / "runs"
    run_dir, resumed = open_run_dir(cfg, runs, fresh=False)
    assert not resumed and [p.name for p in run_dir.iterdir()] == ["manifest.json"]
    assert json.loads((run_dir / "manifest.json").read_text())["config_hash"] == cfg.config_hash()
    assert open_run_dir(cfg, runs, fresh=False) == (run_dir, True)  # a rerun continues it
    assert [p.name for p in runs.iterdir()] == [run_dir.name]  # no temporary folder left behind


def toy_job():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)

    def loss(batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": torch.nn.functional.cross_entropy(model(batch.x), batch.target)}

    cfg = TrainConfig(steps=6, batch_size=8, lr=0.1, eval_every=3, checkpoint_every=2)
    return model, loss, x, y, cfg


def test_checkpoints_resume_a_job_and_are_deleted_once_it_is_done(tmp_path):
    from kdistill.classic.methods.base import JobInterrupted

    job = tmp_path / "job"
    model, loss, x, y, cfg = toy_job()
    with pytest.raises(JobInterrupted):
        run_job(job, model, loss, x=x, target=y, seed=0, cfg=cfg, stop_after=4)
    step, _ = load_latest_checkpoint(job / "checkpoints")
    assert step == 4  # the interrupted job left what its resume needs
    model, loss, x, y, cfg = toy_job()
    run_job(job, model, loss, x=x, target=y, seed=0, cfg=cfg)
    assert sorted(p.name for p in job.iterdir()) == [".lock", "done.json", "model.safetensors"]
    weights = load_file(str(job / "model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())

    # killed between done.json and the deletion: the next load deletes them
    save_checkpoint(job / "checkpoints", 4, {"w": torch.zeros(3)})
    reloaded, loss, x, y, cfg = toy_job()
    run_job(job, reloaded, loss, x=x, target=y, seed=0, cfg=cfg)
    assert not (job / "checkpoints").exists()
    assert all(torch.equal(weights[k], v) for k, v in reloaded.state_dict().items())


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_weights_and_checkpoints_get_the_mode_of_any_new_file(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        model, loss, x, y, cfg = toy_job()
        run_job(tmp_path / "job", model, loss, x=x, target=y, seed=0, cfg=cfg)
        checkpoint = save_checkpoint(tmp_path / "checkpoints", 1, {"w": torch.zeros(3)})
        plain = tmp_path / "plain.txt"
        plain.write_text("")  # what open() gives a new file under this umask
        private = tmp_path / "saved" / "nested" / "model.safetensors"
        private.parent.mkdir(parents=True)
        private.write_bytes(b"")
        private.chmod(0o600)  # as save_pretrained leaves it
        make_readable(tmp_path / "saved")
    finally:
        os.umask(old)
    assert plain.stat().st_mode & 0o777 == mode
    assert (tmp_path / "job" / "model.safetensors").stat().st_mode & 0o777 == mode
    assert (checkpoint / TENSORS).stat().st_mode & 0o777 == mode
    assert private.stat().st_mode & 0o777 == mode


def test_two_runs_needing_the_same_job_train_it_once(tmp_path):
    """A cached teacher is one job shared by runs of any config: whoever comes second waits and loads it."""
    job = tmp_path / "teachers" / "key"
    calls, results = [], []

    def needs_the_job() -> None:
        model, loss, x, y, cfg = toy_job()
        mine = []

        def counted(batch: Batch) -> dict[str, torch.Tensor]:
            mine.append(1)
            return loss(batch)

        run_job(job, model, counted, x=x, target=y, seed=0, cfg=cfg)
        calls.append(len(mine))
        results.append(model.state_dict())

    threads = [threading.Thread(target=needs_the_job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(calls) == [0, 6]  # one trained its 6 steps, the other loaded the result
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
