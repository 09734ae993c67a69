"""`kdistill run` fails in one line: a config that cannot run before any run folder is made (exit 2), a
full or read-only disk (exit 1), Ctrl-C (exit 130); a finished teacher loads from a read-only cache."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml
from safetensors import SafetensorError
from typer.testing import CliRunner

import kdistill.classic.teacher as teacher_module
from kdistill.classic.recipe import load_data
from kdistill.classic.teacher import load_teacher, record_teacher
from kdistill.cli.app import app
from kdistill.config import parse_config

is_root = hasattr(os, "geteuid") and os.geteuid() == 0
FULL_HINT = "free some space, then rerun the same command to continue"


def write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(tmp_path: Path, config: dict, runs: Path):
    return CliRunner().invoke(app, ["run", str(write_config(tmp_path, config)), "--runs-dir", str(runs)])


def quick(config: dict) -> dict:
    """The tiny config with 2 student steps (its teacher is the tests' shared cached one)."""
    config["train"].update(steps=2, eval_every=1, checkpoint_every=1)
    return config


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[str]:
    """Make `folder` act as a read-only file system in this process: creating, changing or deleting anything
    under it raises OSError(EROFS) as the kernel would (root ignores chmod, so the tests cannot rely on it).
    Returns the list of refused paths."""
    folder = folder.resolve()
    refused: list[str] = []

    def inside(path) -> bool:
        return isinstance(path, str | bytes | os.PathLike) and Path(
            os.fsdecode(path)
        ).resolve().is_relative_to(folder)

    def refuse(path) -> None:
        refused.append(os.fsdecode(path))
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_open, real_os_open, real_mkdir = io.open, os.open, os.mkdir

    def fake_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC) and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if inside(path):
            if os.path.exists(path):  # existence is checked before writability
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
            if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fsdecode(path))
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def refusing(real):
        def fake(path, *args, **kwargs):
            if inside(path):
                refuse(path)
            return real(path, *args, **kwargs)

        return fake

    monkeypatch.setattr("builtins.open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    for name in ("replace", "rename", "unlink", "remove", "rmdir", "chmod"):
        monkeypatch.setattr(os, name, refusing(getattr(os, name)))
    return refused


# -- a config that cannot run leaves no run folder ---------------------------------------------------------


def test_a_bad_checkpoint_fails_before_a_run_folder_exists(tmp_path, tiny_config):
    tiny_config["teacher"]["checkpoint"] = str(tmp_path)
    runs = tmp_path / "runs"
    result = run_cli(tmp_path, tiny_config, runs)
    assert result.exit_code == 2, result.output
    assert (
        result.stderr
        == f"error: teacher.checkpoint: {tmp_path} is a directory; expected a .safetensors file\n"
    )
    assert not runs.exists()


def test_cuda_without_a_device_fails_before_a_run_folder_exists(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tiny_config["device"] = "cuda"
    runs = tmp_path / "runs"
    result = run_cli(tmp_path, tiny_config, runs)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "error: device: cuda was asked for but torch sees no CUDA device; use device: cpu (or auto)\n"
    )
    assert not runs.exists()


# -- 2. a shared, read-only teacher cache ------------------------------------------------------------------


def test_a_finished_teacher_runs_from_a_read_only_cache(tmp_path, tiny_config, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDISTILL_CACHE_DIR", str(cache))
    tiny_config["teacher"]["train"].update(steps=4, eval_every=2, checkpoint_every=2)
    cfg = parse_config(quick(tiny_config))
    load_teacher(cfg.teacher, load_data(cfg.data), torch.device("cpu"))  # the cache holds the teacher
    refused = read_only(monkeypatch, cache)
    with pytest.raises(OSError, match="Read-only file system"):
        (cache / "probe").write_text("")  # the stand-in for a read-only cache refuses writes
    refused.clear()
    result = run_cli(tmp_path, tiny_config, tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert refused == []
    (run_dir,) = (tmp_path / "runs").glob("tiny-*")
    assert json.loads((run_dir / "manifest.json").read_text())["teacher"]["source"] == "cache"


def test_teacher_json_is_written_only_when_missing_or_different(tmp_path, monkeypatch):
    writes = []
    real = teacher_module.atomic_write_text
    monkeypatch.setattr(teacher_module, "atomic_write_text", lambda p, t: writes.append(p) or real(p, t))
    record = {"arch": "cnn_s", "key": "abc"}
    record_teacher(tmp_path, record)
    record_teacher(tmp_path, record)
    assert writes == [tmp_path / "teacher.json"]
    record_teacher(tmp_path, {**record, "arch": "cnn_m"})
    assert len(writes) == 2 and json.loads((tmp_path / "teacher.json").read_text())["arch"] == "cnn_m"


@pytest.mark.skipif(is_root, reason="chmod does not stop root from writing")
def test_a_finished_teacher_loads_from_a_chmod_read_only_cache(tmp_path, tiny_config):
    tiny_config["teacher"]["train"].update(steps=4, eval_every=2, checkpoint_every=2)
    cfg = parse_config(tiny_config)
    data = load_data(cfg.data)
    first, origin = load_teacher(cfg.teacher, data, torch.device("cpu"), cache_root=tmp_path)
    folders = [Path(origin["path"]), *Path(origin["path"]).parents[:2]]
    for folder in folders:
        folder.chmod(0o555)
    try:
        again, origin = load_teacher(cfg.teacher, data, torch.device("cpu"), cache_root=tmp_path)
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert origin["source"] == "cache"
    with torch.no_grad():
        assert torch.equal(first(data.x_test), again(data.x_test))


# -- 7. full and read-only disks ---------------------------------------------------------------------------


def test_a_read_only_runs_dir(tmp_path, tiny_config, monkeypatch):
    runs = tmp_path / "read-only" / "runs"
    runs.parent.mkdir()
    read_only(monkeypatch, runs.parent)
    result = run_cli(tmp_path, quick(tiny_config), runs)
    assert result.exit_code == 1, result.output
    assert result.stderr == f"error: cannot write {runs}: Read-only file system; give a writable --runs-dir\n"


@pytest.mark.skipif(is_root, reason="chmod does not stop root from writing")
def test_a_chmod_read_only_runs_dir(tmp_path, tiny_config):
    runs = tmp_path / "runs"
    runs.mkdir(mode=0o555)
    try:
        result = run_cli(tmp_path, quick(tiny_config), runs)
    finally:
        runs.chmod(0o755)
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    written = re.fullmatch(r"error: cannot write (.+): Permission denied; give a writable --runs-dir", line)
    assert written is not None and Path(written[1]).parent == runs, line  # a folder the run makes in runs


def test_a_full_disk_while_plotting(tmp_path, tiny_config, monkeypatch):
    import kdistill.evaluation.report as report

    def full(path, data):  # a write to an open file: the error names no path
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(report, "atomic_write_bytes", full)
    runs = tmp_path / "runs"
    result = run_cli(tmp_path, quick(tiny_config), runs)
    assert result.exit_code == 1, result.output
    cache = os.environ["KDISTILL_CACHE_DIR"]
    assert result.stderr == (
        f"error: cannot write (under {runs} or the cache {cache}): No space left on device; {FULL_HINT}\n"
    )


def test_a_full_disk_while_saving_weights(tmp_path, tiny_config, monkeypatch):
    attempted = []

    def full(tensors, filename, metadata=None):
        attempted.append(Path(filename))
        raise SafetensorError(
            f'Error while serializing: I/O error: No space left on device (os error 28) at path "{filename}"'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    result = run_cli(tmp_path, quick(tiny_config), tmp_path / "runs")
    assert result.exit_code == 1, result.output
    assert len(attempted) == 1
    assert (
        result.stderr == f"error: cannot write {attempted[0].parent}: No space left on device; {FULL_HINT}\n"
    )


# -- 6. Ctrl-C ---------------------------------------------------------------------------------------------


def test_ctrl_c_says_how_to_continue_and_exits_130(tmp_path, tiny_config):
    tiny_config["train"].update(steps=100_000, eval_every=10_000, checkpoint_every=10_000)  # still training
    runs = tmp_path / "runs"
    # the `kdistill` script's way in (`python -m` sometimes reports a handled Ctrl-C as a death by SIGINT,
    # which a shell shows as 130 all the same)
    main = "from kdistill.cli.app import main; main()"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            main,
            "run",
            str(write_config(tmp_path, tiny_config)),
            "--runs-dir",
            str(runs),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a user's shell delivers Ctrl-C to a process that handles it; the test process may ignore SIGINT
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not list(runs.glob("tiny-*/manifest.json")):  # written once the teacher is ready
            assert proc.poll() is None and time.monotonic() < deadline, "the run never got to training"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    (run_dir,) = runs.glob("tiny-*")
    assert proc.returncode == 130, stderr
    assert stderr.splitlines()[-1] == f"interrupted: rerun the same command to continue ({run_dir})"
    assert "Traceback" not in stderr
