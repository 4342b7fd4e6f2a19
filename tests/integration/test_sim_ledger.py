"""The ledger against what clients really received: exact per symbol, across reconnects,
at the end of --trades / --duration / SIGTERM; and a seeded run repeating byte for byte."""

from __future__ import annotations

import asyncio
import signal
import zlib
from typing import Any

import pytest

from harness.sim import SimProcess
from tests.integration.sim_helpers import FeedClient, Received, bounded

BASE = ["--tape-size", "2048", "--symbols", "400", "--stats-interval", "0",
        "--ping-interval", "0"]


async def read_all(sim: SimProcess, key: str = "test-key") -> Received:
    client = await FeedClient(sim.url, sim.cafile, key=key).open()
    await client.login()
    return await client.collect(timeout=30)


async def test_trades_n_ends_the_run_with_exactly_n_sent_whole() -> None:
    with SimProcess([*BASE, "--rate", "200k/s", "--trades", "30000", "--seed", "3"]) as sim:
        received = await read_all(sim)
        assert await bounded(_wait(sim), 20, "simulate to exit") == 0
        ledger = sim.ledger()
    assert received.close_code == 1001 and len(received.trades) == 30000
    assert ledger["totals"]["trades_sent"] == 30000 and ledger["totals"]["trades_partial"] == 0
    assert ledger["symbols"] == received.ledger_view() == ledger["connections"][0]["symbols"]
    for stats in received.symbols.values():  # q is consecutive per symbol in the synthetic market
        assert stats.qs == list(range(stats.qs[0], stats.qs[0] + stats.count))
    assert ledger["seed"] == 3 and ledger["ended"] >= ledger["started"]
    assert "simulate: done (trades)" in sim.log() and "30000 trades" in sim.log()


async def _wait(sim: SimProcess) -> int:
    return await asyncio.to_thread(sim.wait, 20)


async def test_the_run_wide_book_joins_connections_in_order() -> None:
    args = [*BASE, "--rate", "50k/s", "--trades", "40000", "--seed", "4", "--drop-every", "0.4s",
            "--fault", "close"]
    with SimProcess(args) as sim:
        parts = []
        while True:
            received = await read_all(sim)
            parts.append(received)
            if received.close_code == 1001:  # the end of the run, not a fault
                break
            assert received.close_code in (1001, 1011) and len(parts) < 20
        await bounded(_wait(sim), 20, "simulate to exit")
        ledger = sim.ledger()
    assert len(parts) >= 2 and ledger["totals"]["trades_partial"] == 0
    assert sum(len(p.trades) for p in parts) == ledger["totals"]["trades_sent"] == 40000
    whole: dict[str, dict[str, Any]] = {}
    for part in parts:
        for payload in part.trades:
            symbol = payload.split(b'"sym":"', 1)[1].split(b'"', 1)[0].decode()
            q = int(payload.rsplit(b'"q":', 1)[1].split(b",", 1)[0].rstrip(b"}"))
            entry = whole.setdefault(symbol, {"count": 0, "first_q": q, "last_q": q, "crc32": 0})
            entry["count"] += 1
            entry["last_q"] = q
            entry["crc32"] = zlib.crc32(payload, entry["crc32"])
    assert ledger["symbols"] == dict(sorted(whole.items()))
    for part, record in zip(parts, ledger["connections"], strict=True):
        assert record["symbols"] == part.ledger_view()
    for entry in whole.values():  # no gaps across reconnects: nothing was lost in flight
        assert entry["last_q"] - entry["first_q"] + 1 == entry["count"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_writes_the_ledger_and_a_summary(sig: int) -> None:
    sim = SimProcess([*BASE, "--rate", "20k/s", "--seed", "9"]).start()
    try:
        client = await FeedClient(sim.url, sim.cafile).open()
        await client.login()
        await client.collect(lambda r: len(r.trades) >= 1000, 10)
        task = asyncio.ensure_future(client.collect(timeout=20))
        assert await asyncio.to_thread(sim.stop, 20, sig) == 0
        received = await bounded(task, 20, "the close")
        ledger = sim.ledger()
        log = sim.log()
    finally:
        sim.cleanup()
    record = ledger["connections"][0]
    assert record["end_reason"] == "server_shutdown" and received.close_code == 1001
    assert record["symbols"] == received.ledger_view()
    assert f"simulate: done ({signal.Signals(sig).name})" in log


async def test_duration_ends_the_run() -> None:
    with SimProcess([*BASE, "--rate", "1k/s", "--duration", "0.5s"]) as sim:
        assert await bounded(_wait(sim), 10, "the end of --duration") == 0
    assert "simulate: done (duration)" in sim.log()


async def test_a_seeded_run_repeats_byte_for_byte() -> None:
    streams = []
    for _ in range(2):
        with SimProcess([*BASE, "--no-tls", "--rate", "max", "--batch", "300", "--trades",
                         "6000", "--seed", "42"]) as sim:
            received = await read_all(sim)
            streams.append(received.frames)
    assert len(streams[0]) == 20 and streams[0] == streams[1]
    with SimProcess([*BASE, "--no-tls", "--rate", "max", "--batch", "300", "--trades", "6000",
                     "--seed", "43"]) as sim:
        assert (await read_all(sim)).frames != streams[0]
