"""How ``lb`` chooses its TLS path: ``--tls auto`` and ``--tls ktls`` on either kind of kernel.

On a kernel with kernel TLS (marked ktls: ``python -m ci.ktls_runner -- tests -m ktls``)
``--tls auto`` takes the kernel path without a word. On a kernel without it (this
machine's; the two unmarked cases skip where the kernel has it) ``--tls auto`` says why
in exactly one warning line and carries on in userspace, and ``--tls ktls`` exits 2
before it connects or starts its worker. The suites and reconnects over kernel TLS are
in test_ktls_sim.py.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from balancer import ktls
from harness.lb import LbProcess
from harness.sim import SimProcess
from tests.helpers.ktls_sim import (
    DEADLINE,
    KernelTlsWatcher,
    assert_kernel_carried,
    start_lb,
    start_sim,
)

EXIT_USAGE = 2


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("simulate-certs"))


@pytest.fixture
def kernel_without_tls() -> str:
    """Why this kernel cannot do kernel TLS; skips where it can."""
    reason = ktls.probe()
    if reason is None:
        pytest.skip("this kernel has kernel TLS: the fallback cannot be seen here")
    return reason


def lb_lines(lb: LbProcess) -> list[str]:
    """lb's own log lines (its worker shares the stderr file)."""
    return [line for line in lb.log().splitlines() if line.startswith("lb: ")]


def wait_streaming(lb: LbProcess) -> None:
    lb.wait_stats(lambda s: s.get("trades", 0) > 0, DEADLINE, "lb routing trades")


def stop(sim: SimProcess, lb: LbProcess) -> dict[str, Any]:
    """lb's final stats after a SIGTERM (a shutdown logs nothing under -q)."""
    try:
        assert lb.stop() == 0, lb.log()
    finally:
        lb.__exit__()
        sim.cleanup()
    return lb.stats()


@pytest.mark.ktls
@pytest.mark.usefixtures("kernel_tls")
def test_auto_takes_kernel_tls_without_a_warning(
    certs_dir: str, tmp_path: Path, dump_worker: list[str]
) -> None:
    sim = start_sim(certs_dir, "--rate", "5k/s")
    lb = start_lb(sim, tmp_path, dump_worker, "--tls", "auto", "-q")
    try:
        with KernelTlsWatcher(lb.pid, sim.port) as watcher:
            wait_streaming(lb)
    finally:
        stats = stop(sim, lb)
    assert stats["tls"].startswith("ktls TLSv1.3 "), lb.log()
    assert lb_lines(lb) == []
    suite = stats["tls"].rsplit(" ", 1)[1]  # whichever OpenSSL preferred
    assert_kernel_carried(watcher.result(), suite, connections=1)


def test_auto_falls_back_to_userspace_with_one_warning(
    kernel_without_tls: str, certs_dir: str, tmp_path: Path, dump_worker: list[str]
) -> None:
    sim = start_sim(certs_dir, "--rate", "5k/s")
    lb = start_lb(sim, tmp_path, dump_worker, "--tls", "auto", "-q")
    try:
        wait_streaming(lb)
    finally:
        stats = stop(sim, lb)
    assert stats["tls"].startswith("userspace TLSv1.3 "), stats
    (warning,) = lb_lines(lb)
    assert "userspace" in warning and warning.endswith(kernel_without_tls), warning
    assert "modprobe tls" in warning


def test_ktls_exits_2_before_connecting(kernel_without_tls: str, tmp_path: Path) -> None:
    marker = tmp_path / "worker-started"
    worker = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        url = f"wss://127.0.0.1:{listener.getsockname()[1]}/stocks"
        lb = LbProcess(url, 4, str(tmp_path), worker, options=["--tls", "ktls"]).start(None)
        try:
            code = lb.wait(DEADLINE)
        finally:
            lb.__exit__()
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert code == EXIT_USAGE, lb.log()
    (message,) = lb_lines(lb)
    assert message.startswith("lb: --tls ktls: ") and message.endswith(kernel_without_tls)
    assert "modprobe tls" in message
    assert not marker.exists(), "the worker was started"
