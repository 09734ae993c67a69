"""Run untrusted Python code (a teacher's answer with its tests) in a limited child process.

The code never runs in the calling process. `run_untrusted` writes it to `main.py` in a fresh, empty
temporary directory (deleted afterwards) and starts this very file as a small wrapper, `python -I -S
sandbox.py`, in a new session. The wrapper sets up isolation and forks a reaper (the init of the new PID
namespace, when there is one), which forks the child that execs `python -I -S main.py` with the same
interpreter (`sys.executable`): isolated mode, no site-packages, no user site, no PYTHON* variables.

**What is provided**

- An environment built from scratch: only `PATH`, `LANG`, and `HOME`/`TMPDIR` pointing at the temporary
  directory. No variable of the caller (API keys, tokens) is inherited. stdin is /dev/null.
- Resource limits (`setrlimit` in the child before exec): CPU seconds (`RLIMIT_CPU`), address space
  (`RLIMIT_AS`, `memory_mb`), size of any file it writes (`RLIMIT_FSIZE`, `file_bytes`), no core dumps, and
  a process limit (`RLIMIT_NPROC`, `max_processes`) against fork bombs.
- A wall-clock timeout and an output cap: stdout and stderr are read incrementally, at most `output_bytes`
  of each is kept, and the whole process group is killed (`SIGKILL`) as soon as either goes over, at the
  timeout, and always at the end, so no child of the code outlives the run.
- Where Linux allows it, namespaces (`unshare`): a new network namespace (only a loopback that is down: no
  network at all), a new PID namespace (every process of the code dies with its reaper, even one that left
  the process group) and a new mount namespace with a fresh /proc (the code sees only its own processes).
  Run by root, these need no user namespace; otherwise they are made inside a new user namespace, which
  kernels allow unprivileged users unless disabled (`kernel.unprivileged_userns_clone=0`, AppArmor).
  Whether they worked is found out on every run (a failed `unshare` costs one system call).
- Each process of the chain caller -> wrapper -> reaper -> code is signalled when the one before it dies
  (`PR_SET_PDEATHSIG`), so killing the caller, even with SIGKILL, ends the run too; the wrapper then
  removes the temporary directory, which the caller no longer can.
- The kernel does not enforce `RLIMIT_NPROC` for root, so when the caller is root the child drops to a uid
  of its own (`SANDBOX_UID_BASE` + a per-run number, no supplementary groups) before exec. It keeps one
  capability, `CAP_DAC_READ_SEARCH` (read any file, as root could), so that an interpreter under a private
  directory such as /root/.pyenv still starts. It can no longer write outside its temporary directory and
  world-writable places, signal the caller's processes, or read their environment. Without root and
  without a user namespace, the process limit is the user's current process count plus `max_processes`,
  since `RLIMIT_NPROC` counts all of the user's processes.

Which of these a run got is in `SandboxResult.isolation` (`network_namespace`, `pid_namespace`,
`fresh_proc`, `user_namespace`, `process_limit`, `unprivileged_uid`); `network_isolated` says whether the
network was cut off. The namespaces, the parent-death signals and the dropped uid are Linux only; on other
POSIX systems the resource limits and the process-group kill are what remains.

**What is NOT provided.** This is not a security boundary against a determined attacker. The code can read
every file its user can (and, as a dropped uid, every file). Without a dropped uid it runs as the caller's
user: it can write every file that user can (each write capped in size by `RLIMIT_FSIZE` only), and
without a fresh /proc it can read the environment of that user's other processes through
/proc/<pid>/environ. Without a network namespace it has the network. Without a PID namespace, a process that
both leaves the process group (`setsid`) and clears its parent-death signal outlives the run. There is no
system-call filter, no private view of the file system, no cap on the number of files or the disk space
the code fills (only on the size of each file), and the kernel is shared. For hostile code, run the whole
verification step inside a container or a stronger sandbox (gVisor, Firecracker, nsjail, firejail,
bubblewrap).
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

#: first uid of the per-run uids a root caller drops to (no user or file on a normal system has one)
SANDBOX_UID_BASE = 1_000_000_000
SETUP_FAILED_EXIT = 125  # the wrapper could not prepare the child (its error is in the status pipe)
MAIN_FILE = "main.py"
_STATUS_LIMIT = 65536

_uid_lock = threading.Lock()
_uid_counter = 0


@dataclass(frozen=True)
class SandboxResult:
    """How a run ended. `returncode` is None when it was killed by a signal (then `signal` says which);
    `limit` names the limit that stopped it: timeout, cpu, memory, output, file_size (None: it ended by
    itself). stdout/stderr hold at most `output_bytes` each; `workdir` is the deleted temp dir."""

    returncode: int | None
    signal: int | None
    stdout: str
    stderr: str
    limit: str | None
    wall_s: float
    cpu_s: float | None
    isolation: frozenset[str]
    workdir: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.limit is None

    @property
    def network_isolated(self) -> bool:
        return "network_namespace" in self.isolation


class SandboxError(RuntimeError):
    """The sandbox itself could not run the code (not a verdict on the code)."""


def run_untrusted(
    code: str,
    *,
    timeout_s: float,
    cpu_s: float | None,
    memory_mb: int,
    output_bytes: int,
    max_processes: int = 32,
    file_bytes: int = 16 * 2**20,
) -> SandboxResult:
    """Run `code` as a Python program in the sandbox described above. `cpu_s=None` means the timeout
    rounded up plus one second, so that the kernel stops a busy loop even if this process dies;
    `max_processes` bounds the code and its children together, `file_bytes` each file it writes.
    Raises SandboxError when the sandbox itself fails (never for anything the code does)."""
    _check_limits(timeout_s, cpu_s, memory_mb, output_bytes, max_processes, file_bytes)
    cpu_limit = math.ceil(cpu_s if cpu_s is not None else timeout_s + 1)
    workdir = tempfile.mkdtemp(prefix="kdistill-sandbox-")
    try:
        script = os.path.join(workdir, MAIN_FILE)
        with open(script, "w", encoding="utf-8") as f:
            f.write(code)
        uid = _next_sandbox_uid() if os.geteuid() == 0 and sys.platform.startswith("linux") else None
        if uid is not None:
            for path in (workdir, script):
                os.chown(path, uid, uid)
        config = {
            "python": sys.executable,
            "script": MAIN_FILE,
            "cpu_s": cpu_limit,
            "memory_bytes": memory_mb * 2**20,
            "file_bytes": file_bytes,
            "max_processes": max_processes,
            "uid": uid,
            "caller_pid": os.getpid(),
        }
        return _run_wrapper(config, workdir, timeout_s, output_bytes)
    finally:
        _remove_tree(workdir)


def _check_limits(
    timeout_s: float,
    cpu_s: float | None,
    memory_mb: int,
    output_bytes: int,
    max_processes: int,
    file_bytes: int,
) -> None:
    for name, value in (("timeout_s", timeout_s), ("cpu_s", 1.0 if cpu_s is None else cpu_s)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    for name, value, least in (
        ("memory_mb", memory_mb, 16),
        ("output_bytes", output_bytes, 1),
        ("max_processes", max_processes, 1),
        ("file_bytes", file_bytes, 0),
    ):
        if not (isinstance(value, int) and value >= least):
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def _next_sandbox_uid() -> int:
    """A uid no other run of this process uses now (and, by the pid, none of another process)."""
    global _uid_counter
    with _uid_lock:
        _uid_counter = (_uid_counter + 1) % 1000
        return SANDBOX_UID_BASE + (os.getpid() % 1_000_000) * 1000 + _uid_counter


def _remove_tree(path: str) -> None:
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_make_removable)
    else:
        shutil.rmtree(path, onerror=_make_removable)


def _make_removable(function, path, _exc) -> None:
    """rmtree's error hook: the code may have left a directory without write permission."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        function(path)
    except OSError:
        pass


def _run_wrapper(config: dict, workdir: str, timeout_s: float, output_bytes: int) -> SandboxResult:
    status_read, status_write = os.pipe()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(config), str(status_write)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_write,),
            start_new_session=True,
        )
    except BaseException:
        os.close(status_read)
        raise
    finally:
        os.close(status_write)
    try:
        out, err, status, limit = _collect(proc, status_read, start + timeout_s, output_bytes)
    finally:
        _kill_group(proc)  # before reaping: while the wrapper is a zombie its pid (the pgid) is not reused
        proc.wait()
        os.close(status_read)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    wall_s = time.monotonic() - start
    return _result(config, status, out, err, limit, wall_s, workdir, proc.returncode)


def _collect(
    proc: subprocess.Popen, status_fd: int, deadline: float, output_bytes: int
) -> tuple[bytes, bytes, bytes, str | None]:
    """Read stdout, stderr and the wrapper's status pipe until they close, the deadline passes or an
    output goes over `output_bytes`. Nothing beyond the cap is kept in memory."""
    assert proc.stdout is not None and proc.stderr is not None
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), status_fd: bytearray()}
    limit = None
    grace_end = None  # after the wrapper exits: a moment to drain what its children wrote
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                limit = "timeout"
                break
            if grace_end is not None and now >= grace_end:
                break
            wait = min(deadline, grace_end or deadline) - now
            for key, _ in selector.select(wait):
                fd = key.fd
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(fd)
                    if fd == status_fd:  # the wrapper has exited: stop whatever is left of the group
                        _kill_group(proc)
                        grace_end = time.monotonic() + 0.5
                    continue
                cap = _STATUS_LIMIT if fd == status_fd else output_bytes
                room = cap - len(buffers[fd])
                buffers[fd] += chunk[:room]
                if len(chunk) > room and fd != status_fd:
                    limit = "output"
            if limit is not None:
                break
    return (
        bytes(buffers[proc.stdout.fileno()]),
        bytes(buffers[proc.stderr.fileno()]),
        bytes(buffers[status_fd]),
        limit,
    )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _result(
    config: dict,
    status_bytes: bytes,
    out: bytes,
    err: bytes,
    limit: str | None,
    wall_s: float,
    workdir: str,
    wrapper_returncode: int | None,
) -> SandboxResult:
    reports = _status_reports(status_bytes)
    if "error" in reports:
        raise SandboxError(f"the sandbox could not start the code: {reports['error']}")
    isolation = frozenset(
        reports.get("outer", {}).get("isolation", []) + reports.get("child", {}).get("isolation", [])
    )
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    returncode: int | None = None
    killed_by: int | None = signal.SIGKILL
    cpu_used = None
    if limit is None:
        if "exit" not in reports:
            raise SandboxError(f"the sandbox wrapper ended without a status (exit code {wrapper_returncode})")
        code = os.waitstatus_to_exitcode(reports["exit"]["status"])
        cpu_used = reports["exit"]["cpu_s"]
        returncode, killed_by = (code, None) if code >= 0 else (None, -code)
        limit = _limit_from(killed_by, cpu_used, config["cpu_s"], stderr)
    return SandboxResult(returncode, killed_by, stdout, stderr, limit, wall_s, cpu_used, isolation, workdir)


def _status_reports(data: bytes) -> dict:
    reports: dict = {}
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            reports.update(json.loads(line))
        except ValueError:
            continue
    return reports


def _limit_from(killed_by: int | None, cpu_used: float, cpu_limit: int, stderr: str) -> str | None:
    """Which limit ended a run that ended by itself: inferred from the signal, the CPU time and the
    exception Python printed last."""
    if killed_by == signal.SIGXCPU or (killed_by == signal.SIGKILL and cpu_used >= cpu_limit - 0.05):
        return "cpu"
    if killed_by == signal.SIGXFSZ:
        return "file_size"
    last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
    if last.startswith("MemoryError") or "Cannot allocate memory" in last:
        return "memory"
    if "File too large" in last:
        return "file_size"
    return None


# -- the wrapper: this file run as `python -I -S sandbox.py CONFIG STATUS_FD` (stdlib only from here on)

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_KEEPCAPS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 1, 8, 47, 2
_CAP_DAC_READ_SEARCH = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _call(libc, name: str, *args) -> None:
    """A libc call that raises OSError on failure."""
    import ctypes

    function = getattr(libc, name, None)
    if function is None:  # not Linux
        raise OSError(f"{name}: not available on this system")
    if function(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


def _set_parent_death_signal(libc, signum: int = signal.SIGKILL) -> None:
    """`signum` when the parent dies (Linux; elsewhere the process group kill is all there is)."""
    if sys.platform.startswith("linux"):
        _call(libc, "prctl", _PR_SET_PDEATHSIG, signum, 0, 0, 0)


def _try_unshare(libc, flags: int) -> bool:
    try:
        _call(libc, "unshare", flags)
        return True
    except OSError:
        return False


def _wrapper_main(config: dict, status_fd: int) -> int:
    """Unshare what the OS allows, then fork the reaper, which forks the code; wait for the reaper."""
    os.set_inheritable(status_fd, False)  # the code must not hold (or write to) the status pipe
    libc = _libc()
    started: dict[str, int] = {}

    def end_with_the_caller(signum, frame) -> None:
        """The caller died (it is in another session, so a SIGKILL of its group misses this one) and
        cannot remove the temporary directory any more: stop the code and remove it here."""
        if "reaper" in started:
            os.kill(started["reaper"], signal.SIGKILL)
            os.waitpid(started["reaper"], 0)  # a PID namespace is gone when its init is
        _remove_tree(os.getcwd())
        os._exit(SETUP_FAILED_EXIT)

    signal.signal(signal.SIGTERM, end_with_the_caller)
    _set_parent_death_signal(libc, signal.SIGTERM)
    if os.getppid() != config["caller_pid"]:  # died before the signal was armed
        end_with_the_caller(signal.SIGTERM, None)
    isolation = []
    privileged = os.geteuid() == 0
    if not privileged and _try_unshare(libc, _CLONE_NEWUSER):
        isolation.append("user_namespace")
    if privileged or isolation:
        for flag, name in ((_CLONE_NEWNET, "network_namespace"), (_CLONE_NEWPID, "pid_namespace")):
            if _try_unshare(libc, flag):
                isolation.append(name)
        if "pid_namespace" in isolation and _try_unshare(libc, _CLONE_NEWNS):
            isolation.append("mount_namespace")
    _report(status_fd, {"outer": {"isolation": [i for i in isolation if i != "mount_namespace"]}})
    started["reaper"] = _fork_guarded(libc, status_fd, lambda: _reap(libc, config, isolation, status_fd))
    os.waitpid(started["reaper"], 0)
    return 0


def _fork_guarded(libc, status_fd: int, body) -> int:
    """Fork a child that gets SIGKILL when this process dies and runs `body` (which must not return)."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the wrapper's cleanup handler is not for the child
        _set_parent_death_signal(libc)
        # the parent died before the death signal was armed? (The init of a new PID namespace sees no
        # parent, getppid() is 0: its parent is waiting for it, in its process group.)
        if os.getppid() not in (parent, 0):
            raise RuntimeError("the wrapper died during setup")
        body()
    except BaseException as err:  # noqa: BLE001 (anything here: report it, never run the code)
        _report(status_fd, {"error": f"{type(err).__name__}: {err}"})
    os._exit(SETUP_FAILED_EXIT)


def _reap(libc, config: dict, isolation: list[str], status_fd: int) -> None:
    """The first process of the PID namespace (its init): runs the code as its child and reports how it
    ended. The code must not be the init itself: an init ignores signals it has no handler for, SIGXCPU
    included. When the reaper exits, the kernel kills everything left in the namespace."""
    code = _fork_guarded(libc, status_fd, lambda: _become_code(libc, config, isolation, status_fd))
    while True:  # orphans of the code are reparented here: reap them too
        pid, status, usage = os.wait4(-1, 0)
        if pid == code:
            break
    _report(status_fd, {"exit": {"status": status, "cpu_s": usage.ru_utime + usage.ru_stime}})
    os._exit(0)


def _become_code(libc, config: dict, isolation: list[str], status_fd: int) -> None:
    """In the forked child: fresh /proc, limits, uid, parent-death signal, then exec the code."""
    import resource

    applied = []
    if "mount_namespace" in isolation:
        try:  # private first: a mount must never propagate back to the host's namespace
            _call(libc, "mount", None, b"/", None, _MS_REC | _MS_PRIVATE, None)
            _call(libc, "mount", b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)
            applied.append("fresh_proc")
        except OSError:
            pass
    limits = [
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_CPU, config["cpu_s"], config["cpu_s"] + 1),  # soft: SIGXCPU; hard: SIGKILL
        (resource.RLIMIT_AS, config["memory_bytes"], config["memory_bytes"]),
        (resource.RLIMIT_FSIZE, config["file_bytes"], config["file_bytes"]),
    ]
    uid = config["uid"]
    processes = _process_limit(config["max_processes"], isolation, uid)
    if processes is not None:
        limits.append((resource.RLIMIT_NPROC, processes, processes))
    for which, soft, hard in limits:
        resource.setrlimit(which, (soft, hard))
    if uid is not None:
        _drop_to(libc, uid)
        applied.append("unprivileged_uid")
    if processes is not None and (uid is not None or os.geteuid() != 0):
        applied.append("process_limit")  # root's own processes are exempt from RLIMIT_NPROC
    _set_parent_death_signal(libc)  # again: the uid change cleared it
    _report(status_fd, {"child": {"isolation": applied}})
    python = config["python"]
    os.execve(python, [python, "-I", "-S", config["script"]], dict(os.environ))


def _process_limit(max_processes: int, isolation: list[str], uid: int | None) -> int | None:
    """RLIMIT_NPROC for the code, so that it and its children are at most `max_processes` processes: its
    own budget where the count is its own (a fresh uid or user namespace), else the user's current count
    plus the budget; None as root without a uid to drop to."""
    if uid is not None:  # a uid of its own: only the code and its children have it
        return max_processes
    if "user_namespace" in isolation:  # the wrapper and the reaper count there too
        return max_processes + 2
    if os.geteuid() == 0 or not os.path.isdir("/proc"):  # root is exempt; no /proc, no count
        return None
    return _tasks_of_user(os.getuid()) - 1 + max_processes  # the count includes this process


def _tasks_of_user(uid: int) -> int:
    """Processes and threads of `uid` (what RLIMIT_NPROC counts), from /proc."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count


def _drop_to(libc, uid: int) -> None:
    """Become `uid` (also as group, no supplementary groups), keeping only CAP_DAC_READ_SEARCH, as an
    ambient capability so that it survives exec (the interpreter may live under a root-only directory)."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    _call(libc, "prctl", _PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    bit = 1 << _CAP_DAC_READ_SEARCH
    data = (Data * 2)(Data(bit, bit, bit), Data(0, 0, 0))
    _call(libc, "capset", ctypes.byref(Header(_LINUX_CAPABILITY_VERSION_3, 0)), data)
    _call(libc, "prctl", _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_DAC_READ_SEARCH, 0, 0)


def _report(status_fd: int, message: dict) -> None:
    os.write(status_fd, (json.dumps(message) + "\n").encode())


if __name__ == "__main__":
    sys.exit(_wrapper_main(json.loads(sys.argv[1]), int(sys.argv[2])))
