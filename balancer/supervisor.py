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
import resource
import shutil
import signal
from collections.abc import Iterable
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
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


# RLIMIT_CORE as lb found it: lb itself runs with 0 (no core file holding the key), the worker
# gets the original back.
_core_limit: tuple[int, int] | None = None


def harden() -> None:
    """No core file and no same-user /proc/<lb>/{mem,environ} access: the key is in lb's
    memory. Both are lb's alone: exec resets dumpable, and the worker gets RLIMIT_CORE back."""
    global _core_limit
    _core_limit = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, _core_limit[1]))
    prctl(PR_SET_DUMPABLE, 0)


def dumpable() -> int:
    """PR_GET_DUMPABLE: 0 once harden() ran (for the stats file)."""
    return int(_libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def close_fds_except(keep: Iterable[int]) -> None:
    """Close every fd but 0-2 and ``keep``, whatever this process inherited."""
    low = 3
    for fd in sorted({fd for fd in keep if fd >= 3}):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (by /proc; processes that called setsid() too)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            children.setdefault(_parent_of(int(name)), []).append(int(name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pipe_inodes(fds: Iterable[int]) -> set[int]:
    return {os.fstat(fd).st_ino for fd in fds}


def holding(pids: Iterable[int], inodes: set[int]) -> list[int]:
    """The processes among ``pids`` that hold an fd on one of these pipes."""
    wanted = {f"pipe:[{inode}]" for inode in inodes}
    found = []
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}") in wanted:
                    found.append(pid)
                    break
            except OSError:
                continue
    return found


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def alive(pid: int) -> bool:
    """Running (a zombie is not: it holds no fds and is reaped by lb)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def resolve_executable(exe: str, workdir: str) -> str:
    """Check EXE as exec will find it after chdir(WORKDIR); return the path or raise ValueError."""
    if not os.path.isdir(workdir):
        raise ValueError("WORKDIR: not a directory")
    if "/" in exe:
        path = exe if os.path.isabs(exe) else os.path.join(workdir, exe)
        if not os.path.exists(path):
            raise ValueError("EXE: not found (a path with / is taken relative to WORKDIR)")
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise ValueError("EXE: not an executable file")
        return path
    found = shutil.which(exe)
    if found is None:
        raise ValueError("EXE: not found on PATH")
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
            _prepare_child(spec, parent, report_w)
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


def _prepare_child(spec: WorkerSpec, parent: int, report_w: int) -> None:
    os.setpgid(0, 0)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # lb died before the line above took effect
        os._exit(1)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)  # SIG_IGN would survive exec
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.set_wakeup_fd(-1)
    os.chdir(spec.workdir)
    if _core_limit is not None:
        resource.setrlimit(resource.RLIMIT_CORE, _core_limit)
    # Only 0-2 and the read ends, whatever lb inherited (report_w is close-on-exec).
    close_fds_except([*spec.fds, report_w])
    for fd in spec.fds:
        os.set_inheritable(fd, True)


def group_alive(pgid: int) -> bool:
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    if pgid <= 1:
        return
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
