"""Each fault kind, observed from the client's side, and the ledger's account of it.

Before any fault the server waits until the client has acknowledged every byte, so the
ledger's trades "sent whole" must be exactly the trades the client received.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect

from harness.sim import SimProcess
from simulator.config import FAULT_KINDS
from tests.integration.sim_helpers import (
    FeedClient,
    RawClient,
    Received,
    assert_prefix_of_received,
    bounded,
    client_ssl,
    ledger_connection,
    split_trades,
    wait_until,
)

BASE = ["--rate", "20k/s", "--seed", "11", "--tape-size", "2048", "--symbols", "400",
        "--stats-interval", "0", "--ping-interval", "0", "--fault-wait", "3s"]


def fault_sim(kind: str, *extra: str, tls: bool = True) -> SimProcess:
    args = [*BASE, "--drop-every", "0.6s", "--fault", kind, *extra]
    return SimProcess(args if tls else [*args, "--no-tls"])


def ended(sim: SimProcess, connection: int = 1) -> dict[str, Any]:
    def done(ledger: dict[str, Any]) -> bool:
        return any(c["id"] == connection and c["end"] for c in ledger["connections"])
    return ledger_connection(sim.wait_ledger(done, 15, f"connection {connection} to end"),
                             connection)


def check_ledger(sim: SimProcess, kind: str, received: Received) -> dict[str, Any]:
    """The connection ended by the fault; what it sent whole is exactly what arrived."""
    record = ended(sim)
    assert record["end_reason"] == f"fault:{kind}"
    assert record["trades_sent"] > 0
    assert assert_prefix_of_received(record["symbols"], received) == 0
    assert sum(s.count for s in received.symbols.values()) == record["trades_sent"]
    ledger = sim.ledger()
    faults = [f for f in ledger["fault_log"] if f["connection"] == 1]
    assert [f["kind"] for f in faults] == [kind] and faults[0]["time"] <= record["end"]
    assert ledger["totals"]["faults"][kind] >= 1
    return record


async def collect_until_closed(sim: SimProcess, **connect_args: Any) -> Received:
    client = await FeedClient(sim.url, sim.cafile).open(**connect_args)
    await client.login()
    return await client.collect(timeout=15)


def raw_received(raw: RawClient) -> Received:
    received = Received()
    for opcode, payload in raw.frames()[0]:
        if opcode == 0x1:
            received.add_frame(payload)
    return received


async def test_reset_is_a_tcp_rst() -> None:
    with fault_sim("reset") as sim:
        received = await collect_until_closed(sim)
        assert received.error is not None and received.close_code is None
        assert isinstance(received.error.__cause__, ConnectionResetError)
        assert check_ledger(sim, "reset", received)["trades_partial"] == 0


async def test_close_is_a_websocket_close_1001_or_1011() -> None:
    with fault_sim("close") as sim:
        received = await collect_until_closed(sim)
        assert received.close_code in (1001, 1011)
        assert received.close_reason == "simulated fault"
        check_ledger(sim, "close", received)


@pytest.mark.parametrize("tls", [True, False])
async def test_tls_close_ends_the_stream_without_a_websocket_close(tls: bool) -> None:
    with fault_sim("tls-close", tls=tls) as sim:
        raw = RawClient(sim.url, sim.cafile)
        raw.login()
        ending = await asyncio.to_thread(raw.read_to_end, 10)
        raw.close()
        assert ending == ("close_notify" if tls else "eof")
        frames, held, needed = raw.frames()
        assert held == 0 and needed == -1
        assert 0x8 not in [opcode for opcode, _ in frames]  # no websocket close frame
        check_ledger(sim, "tls-close", raw_received(raw))


@pytest.mark.parametrize("tls", [True, False])
async def test_truncate_cuts_a_frame_in_half_then_resets(tls: bool) -> None:
    with fault_sim("truncate", "--batch", "50", tls=tls) as sim:
        raw = RawClient(sim.url, sim.cafile)
        raw.login()
        ending = await asyncio.to_thread(raw.read_to_end, 10)
        raw.close()
        # Python's ssl module reports a reset under TLS as an unexpected EOF
        assert ending == "reset" if not tls else ending in ("reset", "eof")
        _, held, needed = raw.frames()
        assert 0 < held < needed and abs(held - needed // 2) <= 10
        record = check_ledger(sim, "truncate", raw_received(raw))
        assert (record["trades_partial"], record["frames_partial"]) == (50, 1)


async def test_stall_stops_sending_and_answering_pings_but_keeps_tcp_open() -> None:
    with fault_sim("stall") as sim:
        raw = RawClient(sim.url, sim.cafile)
        raw.login()
        deadline = time.monotonic() + 10
        while "fault stall on connection 1" not in sim.log():  # keep reading meanwhile
            assert time.monotonic() < deadline, "no stall"
            assert await asyncio.to_thread(raw.read_to_end, 0.1) == "open"
        assert await asyncio.to_thread(raw.read_to_end, 0.5) == "open"  # what was sent before
        before = len(raw.data)
        raw.send_frame(0x9, b"are you there")
        assert await asyncio.to_thread(raw.read_to_end, 1.0) == "open"
        assert len(raw.data) == before  # no pong, no data, no close: silence
        raw.close()
        check_ledger(sim, "stall", raw_received(raw))


async def test_garbage_is_a_malformed_frame_then_silence_until_the_client_closes() -> None:
    with fault_sim("garbage") as sim:
        started = time.monotonic()
        received = await collect_until_closed(sim)
        error = received.error
        assert error is not None and error.sent is not None and error.sent.code == 1002
        assert error.rcvd is None  # the server never answered the client's close
        assert time.monotonic() - started < 3 + 2  # it closed on the client's close frame
        check_ledger(sim, "garbage", received)


async def test_badjson_is_a_frame_that_is_not_a_json_array() -> None:
    with fault_sim("badjson") as sim:
        received = await collect_until_closed(sim)
        assert received.bad_payload is not None
        with pytest.raises(ValueError):
            split_trades(received.bad_payload)
        check_ledger(sim, "badjson", received)


async def test_refuse_for_keeps_the_port_closed_after_a_drop() -> None:
    with fault_sim("close", "--drop-every", "1.2s", "--refuse-for", "0.5s") as sim:
        received = await collect_until_closed(sim)
        dropped = time.monotonic()
        assert received.close_code in (1001, 1011)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", sim.port), timeout=2).close()

        def reopened() -> bool:
            try:
                socket.create_connection(("127.0.0.1", sim.port), timeout=2).close()
            except ConnectionRefusedError:
                return False
            return True
        await wait_until(reopened, 10, "the port to open again")
        assert time.monotonic() - dropped >= 0.3
        second = FeedClient(sim.url, sim.cafile)
        await bounded(second.open(), 10, "a new connection")
        await second.login()
        await second.close()
    assert f"port {sim.port} open again" in sim.log()


async def test_random_draws_a_kind_per_drop_from_the_seed() -> None:
    with fault_sim("random", "--drop-every", "0.4s") as sim:
        for _ in range(4):
            client = FeedClient(sim.url, sim.cafile)
            await bounded(client.open(ping_interval=0.2, ping_timeout=0.4), 10, "connecting")
            await client.login()
            await client.collect(timeout=15)
            await client.close()
        ledger = sim.wait_ledger(lambda d: len(d["connections"]) >= 4 and
                                 all(c["end"] for c in d["connections"]), 15, "4 connections")
    kinds = {f["kind"] for f in ledger["fault_log"] if f["connection"] is not None}
    assert kinds <= set(FAULT_KINDS) and len(kinds) >= 2
    for record in ledger["connections"]:
        assert record["end_reason"].startswith("fault:")


async def test_server_answers_pings_until_a_fault() -> None:
    with SimProcess([*BASE, "--no-tls"]) as sim:
        async with connect(sim.url, ssl=client_ssl(sim.cafile)) as ws:
            latency = await bounded(await ws.ping(), 5, "a pong")
            assert latency >= 0
