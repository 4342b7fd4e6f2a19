"""The Polygon session over TLS against the real simulator process: auth, subscriptions,
the connection limit, and what the ledger records of each."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness.sim import SimProcess
from tests.integration.sim_helpers import (
    FeedClient,
    assert_prefix_of_received,
    bounded,
    client_ssl,
    ledger_connection,
    stop_while_collecting,
)

BASE = ["--rate", "20k/s", "--seed", "5", "--tape-size", "2048", "--symbols", "400",
        "--stats-interval", "0", "--ping-interval", "0"]


def ended_ledger(sim: SimProcess, count: int) -> dict[str, Any]:
    return sim.wait_ledger(lambda d: len(d["connections"]) >= count and
                           all(c["end"] for c in d["connections"][:count]), 15,
                           f"{count} connection(s) to end")


async def test_auth_success_and_all_trades() -> None:
    with SimProcess(BASE) as sim:
        assert sim.url.startswith("wss://localhost:") and sim.url.endswith("/stocks")
        client = await FeedClient(sim.url, sim.cafile, key="K1").open()
        await client.login("T.*")
        received = await client.collect(lambda r: len(r.trades) >= 500, 10)
        assert received.statuses[:2] == [
            {"ev": "status", "status": "connected", "message": "Connected Successfully"},
            {"ev": "status", "status": "auth_success", "message": "authenticated"}]
        assert len(received.symbols) > 50
        received = await stop_while_collecting(sim, client)
        ledger = sim.ledger()
    record = ledger_connection(ledger, 1)
    assert record["key"] == "K1" and record["end_reason"] == "server_shutdown"
    assert record["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert record["subscriptions"] == ["T.*"] and record["trades_partial"] == 0
    assert record["symbols"] == ledger["symbols"] == received.ledger_view()


async def test_a_client_that_closes_leaves_its_unconfirmed_frames_partial() -> None:
    with SimProcess(BASE) as sim:
        client = await FeedClient(sim.url, sim.cafile).open()
        await client.login()
        received = await client.collect(lambda r: len(r.trades) >= 500, 10)
        await client.close()
        record = ledger_connection(ended_ledger(sim, 1), 1)
    assert record["end_reason"] == "client_close" and record["close_code"] == 1000
    # what the client read and what its kernel acknowledged are both prefixes of one stream
    for symbol, entry in record["symbols"].items():
        got = received.symbols.get(symbol)
        if got is not None:
            assert got.first_q == entry["first_q"]
    sent_and_partial = record["trades_sent"] + record["trades_partial"]
    assert sent_and_partial >= len(received.trades)


async def test_subscribe_filtering_sends_only_the_named_symbols() -> None:
    with SimProcess(BASE) as sim:
        client = await FeedClient(sim.url, sim.cafile).open()
        await client.login("T.SPY,T.QQQ,Q.*")
        received = await client.collect(lambda r: len(r.trades) >= 200, 15)
        assert set(received.symbols) == {"SPY", "QQQ"}
        for stats in received.symbols.values():  # every trade of each, in order, no gaps
            assert stats.qs == list(range(stats.qs[0], stats.qs[0] + stats.count))
        await client.send("unsubscribe", "T.QQQ")
        done = {"ev": "status", "status": "success", "message": "unsubscribed to: T.QQQ"}
        await client.collect(lambda r: done in r.statuses, 10)
        qqq, spy = received.symbols["QQQ"].count, received.symbols["SPY"].count
        await client.collect(lambda r: r.symbols["SPY"].count >= spy + 100, 15)
        assert received.symbols["QQQ"].count == qqq  # frames after the reply carry no QQQ
        received = await stop_while_collecting(sim, client)
        record = ledger_connection(sim.ledger(), 1)
    assert set(record["symbols"]) == {"SPY", "QQQ"}
    assert record["symbols"] == received.ledger_view()


async def test_data_before_auth_is_refused() -> None:
    with SimProcess(BASE) as sim:
        client = await FeedClient(sim.url, sim.cafile).open()
        assert (await client.status())["status"] == "connected"
        await client.send("subscribe", "T.*")
        assert await client.status() == {"ev": "status", "status": "error",
                                         "message": "not authorized"}
        await client.send("auth", "k")
        assert (await client.status())["status"] == "auth_success"
        await client.close()


async def test_wrong_key_gets_auth_failed_and_a_close() -> None:
    with SimProcess([*BASE, "--keys", "good,better"]) as sim:
        client = await FeedClient(sim.url, sim.cafile, key="bad").open()
        assert (await client.status())["status"] == "connected"
        await client.send("auth", "bad")
        assert await client.status() == {"ev": "status", "status": "auth_failed",
                                         "message": "authentication failed"}
        received = await client.collect(timeout=10)
        assert received.close_code == 1008 and not received.trades
        good = await FeedClient(sim.url, sim.cafile, key="better").open()
        await good.login()
        await good.close()
        ledger = ended_ledger(sim, 2)
    assert ledger_connection(ledger, 1)["end_reason"] == "auth_failed"
    assert ledger_connection(ledger, 2)["key"] == "better"


async def test_no_auth_in_time_gets_auth_timeout() -> None:
    with SimProcess([*BASE, "--auth-timeout", "0.3s"]) as sim:
        client = await FeedClient(sim.url, sim.cafile).open()
        assert (await client.status())["status"] == "connected"
        assert await client.status(5) == {"ev": "status", "status": "auth_timeout",
                                          "message": "No authentication request received."}
        received = await client.collect(timeout=10)
        assert received.close_code == 1008
        record = ledger_connection(ended_ledger(sim, 1), 1)
    assert record["end_reason"] == "auth_timeout" and record["key"] is None


async def test_a_second_connection_with_the_key_evicts_the_first() -> None:
    with SimProcess(BASE) as sim:
        first = await FeedClient(sim.url, sim.cafile, key="K").open()
        await first.login()
        await first.collect(lambda r: len(r.trades) >= 200, 10)
        second = await FeedClient(sim.url, sim.cafile, key="K").open()
        await second.login()
        evicted = await first.collect(timeout=10)
        assert evicted.close_code == 1008
        assert evicted.statuses[-1]["status"] == "max_connections"
        assert evicted.statuses[-1]["message"].startswith("Maximum number of websocket")
        kept = await second.collect(lambda r: len(r.trades) >= 200, 10)
        assert kept.error is None
        await second.close()
        ledger = ended_ledger(sim, 2)
    record = ledger_connection(ledger, 1)
    assert record["end_reason"] == "evicted" and record["close_code"] == 1008
    assert assert_prefix_of_received(record["symbols"], evicted) == 0  # drained before the close
    # the market carried on where the first connection stopped: q continues without a gap
    spy_first, spy_second = evicted.symbols["SPY"], kept.symbols["SPY"]
    assert spy_second.first_q == spy_first.last_q + 1  # type: ignore[operator]


async def test_max_connections_two_keeps_both() -> None:
    with SimProcess([*BASE, "--max-connections", "2"]) as sim:
        clients = [await FeedClient(sim.url, sim.cafile, key="K").open() for _ in range(2)]
        for client in clients:
            await client.login()
        for client in clients:
            received = await client.collect(lambda r: len(r.trades) >= 200, 10)
            assert received.error is None
            await client.close()


async def test_other_paths_get_404() -> None:
    with SimProcess(BASE) as sim:
        with pytest.raises(InvalidStatus) as info:
            await bounded(connect(sim.url.replace("/stocks", "/options"),
                                  ssl=client_ssl(sim.cafile)), 10, "a refusal")
        assert info.value.response.status_code == 404


async def test_the_server_pings_and_a_silent_client_is_closed_1011() -> None:
    with SimProcess([*BASE, "--ping-interval", "0.2s", "--ping-timeout", "0.3s"]) as sim:
        ws = await connect(sim.url, ssl=client_ssl(sim.cafile))
        assert json.loads(await ws.recv())[0]["status"] == "connected"
        ws.transport.pause_reading()  # stop reading: pings go unanswered
        await asyncio.sleep(1.0)
        ws.transport.resume_reading()
        with pytest.raises(ConnectionClosed):
            while True:
                await bounded(ws.recv(), 10, "the close")
        assert ws.close_code == 1011
        record = ledger_connection(ended_ledger(sim, 1), 1)
    assert record["end_reason"] == "error:keepalive ping timeout"


async def test_frames_acknowledged_before_an_abrupt_end_count_as_sent_whole() -> None:
    with SimProcess(BASE) as sim:
        client = await FeedClient(sim.url, sim.cafile).open()
        await client.login("T.SPY")
        await client.collect(lambda r: len(r.trades) >= 50, 10)
        await client.send("unsubscribe", "T.SPY")
        done = {"ev": "status", "status": "success", "message": "unsubscribed to: T.SPY"}
        received = await client.collect(lambda r: done in r.statuses, 10)
        await asyncio.sleep(0.1)  # acknowledged long before the connection ends
        assert client.ws is not None
        client.ws.transport.abort()  # no close frame: the server learns nothing more
        record = ledger_connection(await asyncio.to_thread(ended_ledger, sim, 1), 1)
    assert record["end_reason"].startswith("error:connection lost")
    assert (record["trades_sent"], record["trades_partial"]) == (len(received.trades), 0)
    assert record["symbols"] == received.ledger_view()
