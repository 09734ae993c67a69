"""The sandbox against code that tries to escape: each limit fires, nothing of the code survives the run,
and what the module docstring promises about isolation holds (or the test says why it cannot check here).

Limits are kept small (a few processes, 1-3 s, 128 MB) so that the whole file runs in seconds and a fork
bomb cannot hurt the machine.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdistill.verify.sandbox import SandboxResult, run_untrusted

SMALL = {"timeout_s": 5.0, "cpu_s": None, "memory_mb": 256, "output_bytes": 65536}


def run(code: str, **limits) -> SandboxResult:
    return run_untrusted(code, **{**SMALL, **limits})


@pytest.fixture(scope="module")
def isolation() -> frozenset[str]:
    """What this OS gives the sandbox (tests of a promise the OS cannot keep are skipped)."""
    return run("pass").isolation


def processes_with_cwd(workdir: str, *, under: bool = False) -> list[int]:
    """Live processes whose working directory is (or was, before deletion) `workdir`, or below it."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:  # gone, a zombie, or not ours to see
                continue
            cwd = cwd.removesuffix(" (deleted)")
            if cwd == workdir or (under and cwd.startswith(workdir + os.sep)):
                found.append(int(entry))
    return found


def is_the_code(pid: int) -> bool:
    """Whether `pid` runs the sandboxed program itself (not the wrapper that prepares it)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[-2:-1] == [b"main.py"]
    except OSError:
        return False


def assert_no_survivor(workdir: str) -> None:
    """Nothing started in `workdir` is alive: SIGKILL is asynchronous, so give the kernel a moment."""
    deadline = time.monotonic() + 5
    while (alive := processes_with_cwd(workdir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive == [], f"processes of the sandbox survived: {alive}"


def test_runs_code_and_reports_its_exit():
    result = run("import sys\nprint('out'); print('err', file=sys.stderr)\nsys.exit(7)")
    assert (result.returncode, result.signal, result.limit) == (7, None, None)
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert not result.ok


def test_a_signal_is_reported_as_the_signal():
    result = run("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)")
    assert (result.returncode, result.signal, result.limit) == (None, signal.SIGTERM, None)


def test_fresh_empty_workdir_isolated_interpreter_and_cleanup():
    code = (
        "import json, os, sys\n"
        "print(json.dumps({'cwd': os.getcwd(), 'files': sorted(os.listdir('.')),"
        " 'isolated': sys.flags.isolated,"
        " 'no_site': sys.flags.no_site, 'python': os.path.realpath(sys.executable), 'path': sys.path}))"
    )
    result = run(code)
    seen = json.loads(result.stdout)
    assert seen["cwd"] == result.workdir and seen["files"] == ["main.py"]
    assert seen["isolated"] == 1 and seen["no_site"] == 1
    assert seen["python"] == os.path.realpath(sys.executable)
    assert not any("site-packages" in p for p in seen["path"])  # not even the venv's packages
    assert not os.path.exists(result.workdir)


def test_environment_is_built_from_scratch(monkeypatch, isolation):
    secret = "kdistill-test-secret-value-8c1f"
    monkeypatch.setenv("KDISTILL_TEST_SECRET", secret)
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    code = (
        "import json, os\n"
        "leaks = []\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        "        with open(f'/proc/{pid}/environ', 'rb') as f:\n"
        f"            leaks += [pid] if {secret.encode()!r} in f.read() else []\n"
        "    except OSError:\n"
        "        pass\n"
        "print(json.dumps({'env': dict(os.environ), 'leaks': leaks}))"
    )
    result = run(code)
    seen = json.loads(result.stdout)
    assert set(seen["env"]) == {"PATH", "LANG", "HOME", "TMPDIR"}
    assert secret not in json.dumps(seen["env"])
    if not {"fresh_proc", "unprivileged_uid"} & isolation:
        pytest.skip("documented: same uid and the host's /proc, so other processes' environ is readable")
    assert seen["leaks"] == []  # not even through /proc/<pid>/environ of the test process


def test_timeout_kills_the_whole_group_even_a_child_in_its_own_session(isolation):
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"  # leaves the process group
        "    time.sleep(60)\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60)\n"
        "while True:\n"
        "    pass\n"
    )
    result = run(code, timeout_s=1.0)
    assert (result.limit, result.signal, result.returncode) == ("timeout", signal.SIGKILL, None)
    if "pid_namespace" not in isolation:
        pytest.skip("documented: without a PID namespace a process in its own session may outlive the run")
    assert_no_survivor(result.workdir)


def test_children_left_behind_by_code_that_exited_are_killed():
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nprint('parent done')"
    result = run(code)
    assert (result.returncode, result.stdout) == (0, "parent done\n")
    assert_no_survivor(result.workdir)


def test_killing_the_caller_ends_the_run(tmp_path: Path):
    """The wrapper is in a session of its own, so a SIGKILL of the caller's group misses it: the
    parent-death signal must end the sandbox (a sleeping child would otherwise outlive everything)."""
    caller = (
        f"import sys, tempfile; sys.path[:0] = {sys.path!r}; tempfile.tempdir = {str(tmp_path)!r}\n"
        "from kdistill.verify.sandbox import run_untrusted\n"
        "run_untrusted('import time; time.sleep(120)', timeout_s=120, cpu_s=None, memory_mb=256,"
        " output_bytes=99)"
    )
    proc = subprocess.Popen([sys.executable, "-c", caller])
    try:
        deadline = time.monotonic() + 30
        while not any(is_the_code(pid) for pid in processes_with_cwd(str(tmp_path), under=True)):
            assert proc.poll() is None and time.monotonic() < deadline, "the code never started"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while (alive := processes_with_cwd(str(tmp_path), under=True)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive == [], f"sandbox processes outlived their caller: {alive}"
    assert list(tmp_path.iterdir()) == []  # and the temporary directory went with them


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    result = run("while True:\n    pass", timeout_s=20.0, cpu_s=1)
    assert result.limit == "cpu" and result.signal == signal.SIGXCPU  # the kernel's signal, not our kill
    assert (
        result.cpu_s is not None and result.cpu_s > 0.5
    )  # it did spin (rusage and the limit's clock differ a little)


def test_fork_bomb_is_bounded(isolation):
    if "process_limit" not in isolation:
        pytest.skip("this OS gives the sandbox no process limit (root without a uid to drop to)")
    code = (
        "import os, time\n"
        "made = 0\n"
        "while True:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    made += 1\n"
        "print(made)"
    )
    result = run(code, max_processes=6)
    assert result.returncode == 0
    if {"user_namespace", "unprivileged_uid"} & isolation:  # a count of its own: exact
        assert int(result.stdout) == 5  # with the code itself, 6 processes
    else:  # the user's count, which other processes of the user move up and down a little
        assert 0 <= int(result.stdout) <= 5 + 16
    assert_no_survivor(result.workdir)


def test_real_fork_bomb_ends_and_leaves_nothing(isolation):
    if "process_limit" not in isolation:
        pytest.skip("this OS gives the sandbox no process limit (root without a uid to drop to)")
    result = run("import os\nwhile True:\n    os.fork()", max_processes=8, timeout_s=3.0)
    assert result.limit in (None, "timeout")  # every fork fails soon; the processes die or are killed
    assert_no_survivor(result.workdir)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_huge_output_is_cut_and_never_buffered(stream):
    cap = 65536
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    code = f"import sys\nchunk = 'x' * 2**20\nfor _ in range(2048):\n    sys.{stream}.write(chunk)"  # 2 GiB
    result = run(code, output_bytes=cap)
    assert result.limit == "output" and result.signal == signal.SIGKILL
    assert len(getattr(result, stream)) == cap
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 256, f"the parent grew by {grown_mib:.0f} MiB reading 2 GiB of output"


def test_output_under_the_cap_is_kept_whole():
    result = run("print('y' * 999)", output_bytes=1000)
    assert (result.limit, result.stdout) == (None, "y" * 999 + "\n")


def test_memory_hog_hits_the_memory_limit():
    result = run("blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 2**20))", memory_mb=128)
    assert result.limit == "memory" and result.returncode == 1
    assert result.stderr.rstrip().endswith("MemoryError")


def test_file_size_is_capped():
    result = run("open('big', 'wb').write(b'x' * 3 * 2**20)", file_bytes=2**20)
    assert result.limit == "file_size" and "File too large" in result.stderr


def test_writing_outside_the_workdir(tmp_path, isolation):
    target = tmp_path / "escape.txt"
    file_bytes = 2**16
    code = (
        "try:\n"
        f"    open({str(target)!r}, 'wb').write(b'x' * {2 * file_bytes})\n"
        "except OSError as err:\n"
        "    print(type(err).__name__)\n"
    )
    result = run(code, file_bytes=file_bytes)
    if "unprivileged_uid" in isolation:  # documented: the code's own uid may not write the caller's files
        assert result.stdout == "PermissionError\n" and not target.exists()
    else:  # documented: same user, so the write lands, but no file grows beyond file_bytes
        assert target.exists() and target.stat().st_size <= file_bytes


def test_no_network(isolation):
    if "network_namespace" not in isolation:
        pytest.skip("this OS lets no network namespace be made: the code has the network (documented)")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    print('connected')\n"
            "except OSError as err:\n"
            "    print('blocked', err.errno)\n"
        )
        result = run(code)
        assert result.stdout.startswith("blocked")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody came


@pytest.mark.parametrize(
    ("limits", "name"),
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"cpu_s": -1}, "cpu_s"),
        ({"memory_mb": 1}, "memory_mb"),
        ({"output_bytes": 0}, "output_bytes"),
        ({"max_processes": 0}, "max_processes"),
    ],
)
def test_bad_limits_are_clear_errors(limits, name):
    with pytest.raises(ValueError, match=name):
        run("pass", **limits)
