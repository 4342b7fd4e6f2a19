"""The fault matrix: simulate (TLS, injecting one fault kind on a period) + lb + lb-pool verify.

For each kind: lb reconnects within a stated bound; every trade the ledger says was sent
whole reached the worker exactly once, in order and byte-identical (per symbol: count, first
and last q and a CRC-32 chained over the payloads, against the ledger); nothing arrived twice;
the worker was never restarted; lb's stats counted the fault.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from dataclasses import dataclass

import pytest

from balancer.causes import Cause
from harness.lb import LbProcess
from harness.sim import SimProcess
from harness.wait import read_json, wait_for
from tests.helpers.faults import compare

POOL = [os.path.join(os.path.dirname(sys.executable), "lb-pool")]
TRADES = 150_000
RATE = "50k/s"
PING = 1.0  # lb --ping-interval and --ping-timeout: a stall is detected within 2 s of silence


@dataclass(frozen=True)
class Case:
    sim_args: tuple[str, ...]
    causes: frozenset[str]  # lb's disconnect causes that count this fault
    reconnect_bound: float  # seconds from the end of one connection to the start of the next
    trades: int = TRADES


CASES = {
    "reset": Case(("--fault", "reset"), frozenset({Cause.RESET, Cause.EOF}), 2.0),
    "close": Case(("--fault", "close"), frozenset({Cause.CLOSE}), 2.0),
    "stall": Case(("--fault", "stall"), frozenset({Cause.TIMEOUT}), 2.0),
    "tls-close": Case(("--fault", "tls-close"), frozenset({Cause.EOF}), 2.0),
    "truncate": Case(("--fault", "truncate"), frozenset({Cause.RESET, Cause.EOF}), 2.0),
    "garbage": Case(("--fault", "garbage"), frozenset({Cause.PROTOCOL}), 2.0),
    "badjson": Case(("--fault", "badjson"), frozenset({Cause.BADJSON}), 2.0),
    # an outage: the port stays closed for 1 s after each drop; lb retries with backoff
    "outage": Case(("--fault", "reset", "--refuse-for", "1s", "--drop-every", "2.5s"),
                   frozenset({Cause.RESET, Cause.EOF}), 1.0 + 2.0, trades=250_000),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_fault(kind, tmp_path):
    case = CASES[kind]
    report_path = str(tmp_path / "report.json")
    sim = SimProcess(["--rate", RATE, "--trades", str(case.trades), "--drop-every", "1s", "--seed", "11",
                      "--symbols", "600", *case.sim_args, "-q"]).start()  # later options win
    lb = LbProcess(sim.url, 8, str(tmp_path),
                   [*POOL, "--procs", "2", "--handler", "verify", "--report", report_path],
                   options=["--cafile", sim.cafile or "", "--stats-interval", "0",
                            "--ping-interval", str(PING), "--ping-timeout", str(PING)])
    try:
        lb.start()
        sim.wait(case.trades / 50_000 * 4 + 30)  # ends by itself once every trade was sent
        ledger = sim.ledger()
        assert lb.stop() == 0, lb.log()
    finally:
        lb.__exit__()
        sim.cleanup()
    report = wait_for(lambda: read_json(report_path), 10, "the verify report")
    stats = lb.stats()
    totals = ledger["totals"]
    connections = ledger["connections"]
    faults = sum(1 for c in connections if c["end_reason"] == f"fault:{case.sim_args[1]}")
    assert faults >= 2, f"only {faults} connections ended by the fault: {totals}"

    # exactly once, in order, byte-identical
    assert compare(ledger, report) == [], json.dumps(report["errors"])
    assert report["errors"] == dict.fromkeys(report["errors"], 0)
    assert report["gaps"] <= totals["trades_partial"]
    assert report["messages"] == totals["trades_sent"]

    # reconnects within the bound, counted by cause, worker untouched
    for before, after in itertools.pairwise(connections):
        gap = after["start"] - before["end"]
        assert gap <= case.reconnect_bound, f"reconnect took {gap:.2f} s after {before['end_reason']}"
    counted = sum(n for cause, n in stats["disconnects"].items() if cause in case.causes)
    assert counted >= faults, f"lb counted {stats['disconnects']} for {faults} {kind} faults"
    assert stats["worker_restarts"] == 0
    assert report["accounting"]["restarts"] == 0
