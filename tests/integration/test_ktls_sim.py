"""``lb --tls ktls`` against ``simulate``: every suite the hand-off takes, and reconnects.

Needs a kernel with kernel TLS: run through ``python -m ci.ktls_runner -- tests -m ktls``.
The simulator is pinned to one suite; ``lb-pool --handler verify`` reports what reached
the pipes, compared with the simulator's ledger (every trade sent whole arrived exactly
once, in order, byte-identical). That the kernel really carried each connection is read
from the kernel itself, from outside lb: ``KernelTlsWatcher`` duplicates lb's sockets into
the test (``pidfd_getfd``) and reads their ``TLS_TX``/``TLS_RX`` state back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer.tls_keys import SUITES_BY_NAME
from tests.helpers.ktls_peer import TLS12_SUITES, TLS13_SUITES
from tests.helpers.ktls_sim import (
    assert_counters_rose,
    assert_exactly_once_in_order,
    assert_kernel_carried,
    feed_through_ktls_lb,
    pinned,
    start_sim,
)


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One CA and server certificate per key type for the module's simulators."""
    return str(tmp_path_factory.mktemp("simulate-certs"))


# --- the kernel's view of lb's connections ------------------------------------------


# --- one run: simulate until it ends by itself, lb, a verify worker ------------------


# --- every suite ------------------------------------------------------------------

SUITE_TRADES = 30_000
SUITE_RATE = 30_000  # trades/s: one connection of about a second, some thousand records


@pytest.mark.ktls
@pytest.mark.parametrize("suite", [*TLS13_SUITES, *TLS12_SUITES])
def test_every_suite_carries_the_feed_exactly_once(
    kernel_tls: None, certs_dir: str, tmp_path: Path, suite: str
) -> None:
    sim = start_sim(certs_dir, *pinned(suite), "--trades", str(SUITE_TRADES),
                    "--rate", f"{SUITE_RATE}/s", "--seed", str(len(suite)))
    run = feed_through_ktls_lb(sim, tmp_path, SUITE_TRADES / SUITE_RATE)

    assert_exactly_once_in_order(run)
    assert run.ledger["totals"]["trades_partial"] == 0
    assert len(run.ledger["connections"]) == 1, run.ledger["connections"]
    version = SUITES_BY_NAME[suite].version_name
    assert run.stats["tls"] == f"ktls {version} {suite}", run.lb_log
    assert_kernel_carried(run.sessions, suite, connections=1)
    assert_counters_rose(run.before, run.after)


# --- reconnects -------------------------------------------------------------------

FAULT_TRADES = 60_000
FAULT_RATE = 20_000  # with a drop every second: three or four connections


@pytest.mark.ktls
@pytest.mark.parametrize(("fault", "suite", "causes"), [
    ("reset", "TLS_AES_128_GCM_SHA256", {"reset", "eof"}),  # TCP RST
    ("tls-close", "ECDHE-RSA-AES256-GCM-SHA384", {"eof"}),  # close_notify, then TCP FIN
])
def test_reconnects_go_through_the_kernel_again(
    kernel_tls: None, certs_dir: str, tmp_path: Path, fault: str, suite: str, causes: set[str]
) -> None:
    sim = start_sim(certs_dir, *pinned(suite), "--trades", str(FAULT_TRADES),
                    "--rate", f"{FAULT_RATE}/s", "--seed", "5",
                    "--fault", fault, "--drop-every", "1s")
    run = feed_through_ktls_lb(sim, tmp_path, FAULT_TRADES / FAULT_RATE)

    connections = run.ledger["connections"]
    faults = sum(1 for c in connections if c["end_reason"] == f"fault:{fault}")
    assert faults >= 2, [c["end_reason"] for c in connections]
    assert_exactly_once_in_order(run)
    counted = sum(n for cause, n in run.stats["disconnects"].items() if cause in causes)
    assert counted >= faults, run.stats["disconnects"]
    assert run.stats["tls"] == f"ktls {SUITES_BY_NAME[suite].version_name} {suite}", run.lb_log
    assert_kernel_carried(run.sessions, suite, connections=len(connections))
    assert_counters_rose(run.before, run.after)

