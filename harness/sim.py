"""Run ``simulate`` as a process for tests, the soak run and benchmarks.

    with SimProcess(["--rate", "max", "--no-tls"], ledger=True) as sim:
        connect(sim.url, cafile=sim.cafile) ...
    ledger = sim.ledger()      # after stop(): the final ledger

Readiness is the simulator's ``--ready-file``, polled with a deadline; stopping is SIGTERM
and a bounded wait (SIGKILL and an error past it).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

from harness.wait import read_text

DEFAULT_START_TIMEOUT = 30.0
_OWN_WORKDIRS: set[str] = set()


@atexit.register
def _remove_workdirs() -> None:
    # kept until exit so that the ledger and log stay readable after the process has ended
    for path in _OWN_WORKDIRS:
        shutil.rmtree(path, ignore_errors=True)


class SimulatorError(AssertionError):
    pass


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


class SimProcess:
    """``python -m simulator ARGS`` with a ready file, a ledger and stderr kept in a temp dir."""

    def __init__(self, args: list[str] | None = None, *, env: dict[str, str] | None = None,
                 ledger: bool = True, python: str | None = None,
                 workdir: str | None = None) -> None:
        self.workdir = workdir or tempfile.mkdtemp(prefix="simulate-")
        self._own_workdir = workdir is None
        if self._own_workdir:
            _OWN_WORKDIRS.add(self.workdir)
        self.ready_file = os.path.join(self.workdir, "ready.json")
        self.ledger_file = os.path.join(self.workdir, "ledger.json") if ledger else None
        self.stderr_file = os.path.join(self.workdir, "stderr.log")
        self.stdout_file = os.path.join(self.workdir, "stdout.log")
        self.argv = [python or sys.executable, "-m", "simulator", "--ready-file", self.ready_file]
        if self.ledger_file:
            self.argv += ["--ledger", self.ledger_file]
        self.argv += list(args or [])
        self.env = dict(os.environ if env is None else env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self._files: list[IO[bytes]] = []

    # -- life cycle --------------------------------------------------------------------

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> SimProcess:
        stderr = open(self.stderr_file, "wb")  # noqa: SIM115 - closed in stop()
        stdout = open(self.stdout_file, "wb")  # noqa: SIM115
        self._files = [stderr, stdout]
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=stdout, stderr=stderr,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            info = _read_json(self.ready_file)
            if info is not None:
                self.info = info
                return self
            if self.proc.poll() is not None:
                raise SimulatorError(f"simulate exited with {self.proc.returncode} before it was "
                                     f"ready:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise SimulatorError(f"simulate not ready within {timeout:g}s:\n{self.log()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> int:
        """Signal the simulator and wait for it to exit; returns its exit status."""
        proc = self._require()
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise SimulatorError(f"simulate did not exit within {timeout:g}s of signal {sig}:\n"
                                 f"{self.log()}") from None
        finally:
            self._close_files()
        return code

    def wait(self, timeout: float) -> int:
        """Wait for the simulator to end by itself (``--duration``, ``--trades``, replay end)."""
        proc = self._require()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise SimulatorError(f"simulate still running after {timeout:g}s:\n{self.log()}") \
                from None
        finally:
            self._close_files()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_files()

    def cleanup(self) -> None:
        self.kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SimProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            except SimulatorError:
                pass

    def _require(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise SimulatorError("simulate was not started")
        return self.proc

    def _close_files(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    # -- what it tells -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return str(self.info["url"])

    @property
    def cafile(self) -> str | None:
        return self.info.get("cafile")

    @property
    def pid(self) -> int:
        return self._require().pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    @property
    def returncode(self) -> int | None:
        return self._require().poll()

    def ledger(self) -> dict[str, Any]:
        """The ledger as last written (final once the process has exited)."""
        if self.ledger_file is None:
            raise SimulatorError("started without a ledger")
        data = _read_json(self.ledger_file)
        if data is None:
            raise SimulatorError(f"no ledger at {self.ledger_file}:\n{self.log()}")
        return data

    def wait_ledger(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        """Poll the ledger (rewritten after every connection) until ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            data = _read_json(self.ledger_file) if self.ledger_file else None
            if data is not None and predicate(data):
                return data
            if time.monotonic() > deadline:
                raise SimulatorError(f"timed out after {timeout:g}s waiting for {what}:\n"
                                     f"{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return read_text(self.stdout_file) + read_text(self.stderr_file)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the simulator process so far, from /proc."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
