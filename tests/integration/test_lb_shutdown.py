"""SIGTERM while the feed streams: lb completes the closing handshake, so the server records a
clean client close, and every trade the server sent whole still reaches the worker."""

import os
import sys

from harness.lb import LbProcess
from harness.sim import SimProcess
from harness.wait import read_json, wait_for

POOL = [os.path.join(os.path.dirname(sys.executable), "lb-pool")]


def test_sigterm_mid_stream_is_a_clean_close_and_loses_nothing(tmp_path):
    report = str(tmp_path / "report.json")
    sim = SimProcess(["--rate", "50k/s", "--seed", "4", "--symbols", "300", "-q"]).start()
    lb = LbProcess(sim.url, 4, str(tmp_path), [*POOL, "--procs", "2", "--handler", "verify",
                                               "--report", report],
                   options=["--cafile", sim.cafile or "", "--stats-interval", "0"])
    try:
        lb.start()
        wait_for(lambda: lb.stats().get("trades", 0) > 50_000, 20, "trades flowing")
        assert lb.stop() == 0
        ledger = sim.wait_ledger(lambda led: led["connections"] and led["connections"][0].get("end"),
                                 10, "the connection's end in the ledger")
    finally:
        lb.__exit__()
        sim.cleanup()
    connection = ledger["connections"][0]
    assert connection["end_reason"] == "client_close", connection["end_reason"]
    verify = wait_for(lambda: read_json(report), 10, "the verify report")
    assert not any(verify["errors"].values()) and verify["gaps"] == 0
    # Everything sent whole arrived; frames written just before the close that the server
    # could not confirm (the ledger's "partial") may have arrived too, and only those.
    sent, got = ledger["symbols"], verify["symbols"]
    for symbol, s in sent.items():
        g = got[symbol]
        assert g["first_q"] == s["first_q"] and g["last_q"] >= s["last_q"], symbol
    extra = verify["messages"] - ledger["totals"]["trades_sent"]
    assert 0 <= extra <= connection["trades_partial"]
    assert "SIGTERM: shutting down" in lb.log()
