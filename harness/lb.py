"""Run ``lb`` as a process for tests, the demo, the soak run and the benchmark."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

from harness.wait import read_json, read_text, wait_for, wait_json

_running: list[LbProcess] = []


def kill_all() -> None:
    """Kill every lb this process started that still runs (test teardown, atexit)."""
    while _running:
        _running.pop().__exit__()


class LbProcess:
    """``lb [options] KEY URL NPIPES WORKDIR EXE ARGS...`` with --stats-file and --ready-file."""

    def __init__(self, url: str, npipes: int, workdir: str, worker: list[str], *,
                 key: str = "test-key", options: list[str] | None = None,
                 env: dict[str, str] | None = None, stderr: Any = None,
                 pass_fds: tuple[int, ...] = ()) -> None:
        self.state_dir = tempfile.mkdtemp(prefix="lb-")
        self.stats_file = os.path.join(self.state_dir, "stats.json")
        self.ready_file = os.path.join(self.state_dir, "ready.json")
        self.argv = [sys.executable, "-m", "balancer",
                     "--stats-file", self.stats_file, "--ready-file", self.ready_file,
                     *(options or []), key, url, str(npipes), workdir, *worker]
        self.env = dict(os.environ if env is None else env)
        self.stderr_path = os.path.join(self.state_dir, "stderr.log")
        self._stderr = stderr
        self.pass_fds = pass_fds
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: float | None = 20.0) -> LbProcess:
        stderr = self._stderr if self._stderr is not None else open(self.stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv, env=self.env, stderr=stderr, stdin=subprocess.DEVNULL,
                                     pass_fds=self.pass_fds)
        _running.append(self)
        if wait_ready:
            wait_for(lambda: os.path.exists(self.ready_file) or self.proc.poll() is not None,
                     wait_ready, "lb's ready file")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ready(self) -> dict[str, Any]:
        return wait_json(self.ready_file, 20.0, "lb ready file")

    def stats(self) -> dict[str, Any]:
        return read_json(self.stats_file) or {}

    def wait_stats(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.stats()
            return s if s and predicate(s) else None
        return wait_for(check, timeout, what)

    def log(self) -> str:
        return read_text(self.stderr_path)

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"lb did not exit within {timeout} s of signal {sig}") from None

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def __enter__(self) -> LbProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # its worker dies too (PR_SET_PDEATHSIG)
            self.proc.wait(5)


atexit.register(kill_all)
