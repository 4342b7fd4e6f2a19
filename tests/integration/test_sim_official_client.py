"""The official Polygon/Massive client, unchanged, against the simulator."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from massive import WebSocketClient
from massive.exceptions import AuthError
from massive.websocket.models import EquityTrade

from harness.sim import SimProcess

# a few large frames a second: the client stops reading once it has enough, and its close
# must not wait behind a full receive queue (websockets pauses reading at 16 frames)
BASE = ["--no-tls", "--rate", "5k/s", "--batch", "250", "--tape-size", "1024", "--symbols", "200",
        "--stats-interval", "0", "--ping-interval", "0", "--seed", "2"]


def feed(sim: SimProcess) -> str:
    return sim.url.split("//", 1)[1].split("/", 1)[0].replace("localhost", "127.0.0.1")


async def test_massive_client_authenticates_subscribes_and_parses_trades() -> None:
    with SimProcess(BASE) as sim:
        client = WebSocketClient(api_key="K", feed=feed(sim), secure=False,
                                 subscriptions=["T.*"], max_reconnects=0)
        trades: list[Any] = []

        async def handle(messages: list[Any]) -> None:
            trades.extend(messages)
            if len(trades) >= 300:
                await client.close()

        await asyncio.wait_for(client.connect(handle), 20)
    assert len(trades) >= 300 and all(isinstance(t, EquityTrade) for t in trades)
    first = trades[0]
    assert first.event_type == "T" and first.symbol and first.exchange is not None
    assert isinstance(first.price, float | int) and first.size and first.timestamp
    assert first.sequence_number and first.tape in (1, 2, 3)
    assert any(t.trf_id is not None and t.trf_timestamp for t in trades)
    assert any(t.conditions and 37 in t.conditions for t in trades)


async def test_massive_client_raises_auth_error_on_a_wrong_key() -> None:
    with SimProcess([*BASE, "--keys", "right"]) as sim:
        client = WebSocketClient(api_key="wrong", feed=feed(sim), secure=False,
                                 subscriptions=["T.*"], max_reconnects=0)

        async def handle(messages: list[Any]) -> None:
            raise AssertionError("no trades for a wrong key")

        with pytest.raises(AuthError, match="authentication failed"):
            await asyncio.wait_for(client.connect(handle), 20)
