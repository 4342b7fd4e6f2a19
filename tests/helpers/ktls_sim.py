"""Driving ``lb --tls ktls`` against ``simulate`` and watching the kernel carry the session
(``KernelTlsWatcher``): shared by test_ktls_sim and test_ktls_lb.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balancer import ktls
from balancer.tls_keys import SUITES_BY_NAME, CryptoInfo, initial_record_sequence
from harness.lb import LbProcess
from harness.sim import SimProcess
from harness.wait import read_json, wait_for
from tests.helpers.faults import compare
from tests.helpers.ktls_peer import TLS12_SUITES, TLS13_SUITES

POOL = [os.path.join(os.path.dirname(sys.executable), "lb-pool")]
NPIPES = 8
# A small tape (trades rendered once, then repeated with new q and t) starts the simulator
# in about a second inside User-Mode Linux instead of three.
SIM_BASE = ("--symbols", "300", "--tape-size", "4096", "--stats-interval", "0", "-q")
START_TIMEOUT = 60.0  # a Python start inside User-Mode Linux takes seconds
DEADLINE = 60.0
SYS_PIDFD_GETFD = 438  # the same on every architecture but alpha; Linux >= 5.6


def pinned(suite: str) -> list[str]:
    """simulate options that leave it exactly ``suite`` to negotiate."""
    if suite in TLS13_SUITES:
        return ["--tls-version", "1.3", "--tls13-ciphersuites", suite]
    return ["--tls-version", "1.2", "--ciphers", suite, "--cert-type", TLS12_SUITES[suite]]


def start_sim(certs_dir: str, *args: str) -> SimProcess:
    return SimProcess(["--certs", certs_dir, *SIM_BASE, *args]).start(timeout=START_TIMEOUT)


def start_lb(sim: SimProcess, workdir: Path, worker: list[str], *options: str) -> LbProcess:
    lb = LbProcess(sim.url, NPIPES, str(workdir), worker,
                   options=["--cafile", sim.cafile or "", "--stats-interval", "0", *options])
    return lb.start(wait_ready=None)


def verify_worker(report: Path) -> list[str]:
    return [*POOL, "--procs", "1", "--handler", "verify", "--report", str(report)]


@dataclass
class KernelSession:
    """The last TLS state the kernel showed for one of lb's connections (None: not yet)."""

    tx: CryptoInfo | None = None
    rx: CryptoInfo | None = None


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def duplicate_fd(pidfd: int, target_fd: int) -> int:
    fd = _libc.syscall(SYS_PIDFD_GETFD, pidfd, target_fd, 0)
    if fd < 0:
        error = ctypes.get_errno()
        hint = " (ptrace rights over lb: see kernel.yama.ptrace_scope)" if error == errno.EPERM else ""
        raise OSError(error, f"pidfd_getfd: {os.strerror(error)}{hint}")
    return fd


@dataclass
class KernelTlsWatcher:
    """Polls lb's TCP connections to ``port`` and records what kernel TLS holds for each.

    Every ``interval`` it takes a duplicate of each of lb's sockets (``pidfd_getfd``: Linux
    >= 5.6 and ptrace rights over lb, which the guest's root has), keeps those connected
    to the simulator, and reads ``TLS_TX``/``TLS_RX`` with getsockopt. Connections are
    told apart by socket inode; a connection keeps the last state read.
    """

    pid: int
    port: int
    interval: float = 0.01
    sessions: dict[int, KernelSession] = field(default_factory=dict)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> KernelTlsWatcher:
        self._thread = threading.Thread(target=self._run, name="ktls-watcher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def result(self) -> dict[int, KernelSession]:
        """The sessions seen, once stopped; a failure of the watcher itself is raised here."""
        self.__exit__()
        if self.error is not None:
            raise AssertionError(f"the kernel-TLS watcher failed: {self.error!r}")
        return self.sessions

    def _run(self) -> None:
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return
        try:
            while not self._stop.wait(self.interval):
                self._poll(pidfd)
        except BaseException as exc:
            self.error = exc
        finally:
            os.close(pidfd)

    def _poll(self, pidfd: int) -> None:
        fd_dir = f"/proc/{self.pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except FileNotFoundError:
            return  # lb has exited
        for name in names:
            try:
                if not os.readlink(f"{fd_dir}/{name}").startswith("socket:"):
                    continue
                fd = duplicate_fd(pidfd, int(name))
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EBADF, errno.ESRCH):
                    continue  # closed meanwhile, or lb is gone
                raise
            with socket.socket(fileno=fd) as sock:  # closes our duplicate only
                self._read(sock)

    def _read(self, sock: socket.socket) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            return
        try:
            if sock.getpeername()[1] != self.port:
                return
        except OSError:
            return  # not connected (yet, or any more)
        session = self.sessions.setdefault(os.fstat(sock.fileno()).st_ino, KernelSession())
        tx = ktls.read_crypto_info(sock, ktls.TLS_TX)
        rx = ktls.read_crypto_info(sock, ktls.TLS_RX)
        if tx is not None and rx is not None:
            session.tx, session.rx = tx, rx


def assert_kernel_carried(sessions: dict[int, KernelSession], suite: str,
                          connections: int) -> None:
    """``connections`` of lb's connections had both directions in the kernel, with ``suite``.

    A connection lb opened as the simulator was shutting down may never have got as far
    as the hand-off; those are not counted (nor does the ledger count them).
    """
    expected = SUITES_BY_NAME[suite]
    first = initial_record_sequence(expected.version)
    handed_off = [s for s in sessions.values() if s.tx is not None and s.rx is not None]
    assert len(handed_off) == connections, sessions
    for session in handed_off:
        assert session.tx is not None and session.rx is not None
        for info in (session.tx, session.rx):
            assert (info.version, info.cipher) == (expected.version, expected.kernel_cipher), info
        # records went through the kernel both ways: lb's upgrade request, the server's reply
        assert session.tx.rec_seq > first and session.rx.rec_seq > first, session


def assert_counters_rose(before: dict[str, int], after: dict[str, int]) -> None:
    assert after["TlsTxSw"] > before["TlsTxSw"] and after["TlsRxSw"] > before["TlsRxSw"], after
    assert after["TlsDecryptError"] == before["TlsDecryptError"], after


@dataclass
class Run:
    ledger: dict[str, Any]
    report: dict[str, Any]
    stats: dict[str, Any]
    sessions: dict[int, KernelSession]
    before: dict[str, int]
    after: dict[str, int]
    lb_log: str


def feed_through_ktls_lb(sim: SimProcess, workdir: Path, feed_seconds: float) -> Run:
    """``lb --tls ktls`` and a verify worker read ``sim`` until the simulator ends by itself."""
    report_path = workdir / "report.json"
    before = ktls.read_tls_stat()
    lb = start_lb(sim, workdir, verify_worker(report_path), "--tls", "ktls")
    try:
        with KernelTlsWatcher(lb.pid, sim.port) as watcher:
            sim.wait(feed_seconds + DEADLINE)
        sessions = watcher.result()
        ledger = sim.ledger()
        code = lb.stop()
    finally:
        lb.__exit__()
        sim.cleanup()
    assert code == 0, lb.log()
    report = wait_for(lambda: read_json(str(report_path)), 10, "the verify report")
    return Run(ledger, report, lb.stats(), sessions, before, ktls.read_tls_stat(), lb.log())


def assert_exactly_once_in_order(run: Run) -> None:
    totals = run.ledger["totals"]
    assert compare(run.ledger, run.report) == [], run.report["examples"]
    assert run.report["errors"] == dict.fromkeys(run.report["errors"], 0), run.report["examples"]
    assert run.report["gaps"] <= totals["trades_partial"]
    assert run.report["messages"] == totals["trades_sent"] > 0, totals
