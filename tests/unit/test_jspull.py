"""common.jspull.OutstandingPull against a fake NATS client: what it asks for, when, and what
it hands over (the credit arithmetic itself: tests/unit/test_jetstream_proto.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from common.jspull import OutstandingPull
from common.natsclient import NotConnected
from common.natsproto import Msg, encode_headers


class FakeClient:
    """The calls OutstandingPull makes of common.natsclient.Client; publishes are recorded."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], str]] = []
        self.handler: Any = None
        self.unsubscribed: list[int] = []
        self.connected = True

    def new_inbox(self) -> str:
        return "_INBOX.test"

    def subscribe(self, subject: str, handler: Any) -> int:
        self.handler = handler
        return 7

    def unsubscribe(self, sid: int) -> None:
        self.unsubscribed.append(sid)

    def publish(self, subject: str, payload: bytes, *, reply: str = "") -> None:
        if not self.connected:
            raise NotConnected("down")
        self.requests.append((subject, json.loads(payload), reply))

    def deliver(self, headers: dict[str, str] | None = None, data: bytes = b"x", status: str = "") -> None:
        hdr = b""
        if status or headers:
            hdr = encode_headers(headers or {})
            if status:
                hdr = hdr.replace(b"NATS/1.0", b"NATS/1.0 " + status.encode(), 1)
        self.handler(Msg("trades.3", 7, "$JS.ACK.S.C-3.1.1.1.1.0", hdr, data))


def test_asks_ahead_tops_up_and_stops_when_told() -> None:
    async def scenario() -> None:
        nc, got, room = FakeClient(), [], [True]

        def on_message(msg: Any) -> bool:
            got.append(msg.data)
            return msg.data != b"last"

        pull = OutstandingPull(nc, "S", "C-3", 4, on_message, lambda: room[0], label="p3",
                               log=logging.getLogger("test"))
        pull.start()
        subject, request, reply = nc.requests[0]
        assert subject == "$JS.API.CONSUMER.MSG.NEXT.S.C-3" and reply == "_INBOX.test"
        assert request == {"batch": 4, "expires": 5_000_000_000}
        nc.deliver()
        nc.deliver()
        assert len(nc.requests) == 2 and nc.requests[1][1]["batch"] == 2  # topped up at half
        room[0] = False  # the worker is behind: no more asking
        for _ in range(3):
            nc.deliver()
        assert len(nc.requests) == 2
        nc.deliver({"Nats-Pending-Messages": "1"}, data=b"", status="408")  # a status is no message
        assert len(got) == 5
        room[0] = True
        pull.poke()
        assert nc.requests[-1][1]["batch"] == 4  # 0 outstanding now: a whole batch again
        nc.deliver(data=b"last")
        await asyncio.wait_for(pull.done.wait(), 5)  # on_message said stop: ended, unsubscribed
        assert nc.unsubscribed == [7] and got[-1] == b"last"
        nc.deliver(data=b"late")
        assert got[-1] == b"last"  # nothing is handed over after the end

    asyncio.run(scenario())


def test_room_is_asked_only_when_a_top_up_is_due() -> None:
    asked = []

    def room() -> bool:
        asked.append(1)
        return True

    nc = FakeClient()
    pull = OutstandingPull(nc, "S", "C", 10, lambda msg: True, room, label="p", log=logging.getLogger("test"))
    pull.start()
    asked.clear()
    for _ in range(4):  # 10 -> 6 outstanding: more than half, no question (a FIONREAD for lb-remote)
        nc.deliver()
    assert asked == [] and len(nc.requests) == 1
    nc.deliver()  # 5 outstanding: topped up
    assert asked == [1] and nc.requests[-1][1]["batch"] == 5


def test_a_silent_server_is_asked_again_with_one_warning(caplog) -> None:
    nc = FakeClient()
    pull = OutstandingPull(nc, "S", "C", 2, lambda msg: True, lambda: True, label="p0",
                           log=logging.getLogger("test"), expires=0.1)
    with caplog.at_level(logging.DEBUG, logger="test"):
        pull.start()
        now = pull.credit.heard
        for i in range(1, 4):  # nothing ever answers: asked again after each life
            pull.tick(now + i * 1.2)
            pull.credit.heard = now + i * 1.2
    assert [r[1]["batch"] for r in nc.requests] == [2, 2, 2, 2]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no answer to pull requests" in warnings[0].getMessage()
    assert sum("no answer" in r.getMessage() for r in caplog.records) == 3


def test_disconnected_a_request_is_not_counted_and_is_made_later() -> None:
    nc = FakeClient()
    nc.connected = False
    pull = OutstandingPull(nc, "S", "C", 8, lambda msg: True, lambda: True, label="p",
                           log=logging.getLogger("test"))
    pull.start()
    assert nc.requests == [] and pull.credit.outstanding == 0
    nc.connected = True
    pull.tick()
    assert nc.requests[0][1]["batch"] == 8 and pull.credit.outstanding == 8
