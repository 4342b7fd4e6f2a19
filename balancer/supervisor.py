"""The worker process: fork/exec with PR_SET_PDEATHSIG, its process group, exit status, re-fork.

The worker is started in a process group of its own, so that when it dies lb can
kill whatever it forked too (e.g. the pool's children, which share the pipes'
read ends) and wait until none of them can still be reading before it resyncs
the pipes. lb is a child subreaper, so orphans of the worker are reparented to
lb and reaped there: no zombies.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)
_SECRET_ENV = ("POLYGON_API_KEY", "MASSIVE_API_KEY")


class WorkerStartError(Exception):
    """The worker could not be started (exec failed, bad directory...)."""


def prctl(option: int, value: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def become_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def resolve_executable(exe: str, workdir: str) -> str:
    """Check EXE as exec will find it after chdir(WORKDIR); return the path or raise ValueError."""
    if not os.path.isdir(workdir):
        raise ValueError(f"WORKDIR {workdir!r} is not a directory")
    if "/" in exe:
        path = exe if os.path.isabs(exe) else os.path.join(workdir, exe)
        if not os.path.exists(path):
            raise ValueError(f"worker executable {exe!r} not found (looked for {path})")
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise ValueError(f"worker executable {path!r} is not an executable file")
        return path
    found = shutil.which(exe)
    if found is None:
        raise ValueError(f"worker executable {exe!r} not found on PATH")
    return found


def worker_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"status 0x{status:x}"


@dataclass(slots=True)
class WorkerSpec:
    exe: str
    args: list[str]
    workdir: str
    fds: list[int]  # the pipes' read ends, passed as trailing arguments in this order


def spawn(spec: WorkerSpec) -> int:
    """Fork and exec the worker; return its pid once exec succeeded, else raise WorkerStartError."""
    argv = [spec.exe, *spec.args, *map(str, spec.fds)]
    env = worker_environment()
    parent = os.getpid()
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: nothing here may return
        try:
            os.close(report_r)
            _prepare_child(spec, parent)
            os.execvpe(spec.exe, argv, env)
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}".encode(errors="replace")
            try:
                os.write(report_w, message[:4000])
            finally:
                os._exit(127)
    os.close(report_w)
    failure = b""
    while chunk := os.read(report_r, 4096):
        failure += chunk
    os.close(report_r)
    if failure:
        os.waitpid(pid, 0)
        raise WorkerStartError(f"cannot start worker {spec.exe!r}: {failure.decode(errors='replace')}")
    return pid


def _prepare_child(spec: WorkerSpec, parent: int) -> None:
    os.setpgid(0, 0)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # lb died before the line above took effect
        os._exit(1)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)  # SIG_IGN would survive exec
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.set_wakeup_fd(-1)
    os.chdir(spec.workdir)
    for fd in spec.fds:
        os.set_inheritable(fd, True)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def reap_children() -> list[tuple[int, int]]:
    """Every child (and adopted orphan) that has exited: [(pid, status)]."""
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped.append((pid, status))
    return reaped
