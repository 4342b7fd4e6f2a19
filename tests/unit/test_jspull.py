"""common.jspull.OutstandingPull against a fake NATS client: what it asks for, when, and what
it hands over (the credit arithmetic itself: tests/unit/test_jetstream_proto.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace
from typing import Any

from common.jspull import OutstandingPull


class FakeNats:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], str]] = []
        self.cb: Any = None
        self.unsubscribed = False

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb: Any) -> Any:
        self.cb = cb

        async def unsubscribe() -> None:
            self.unsubscribed = True

        return SimpleNamespace(subject=subject, unsubscribe=unsubscribe)

    async def publish(self, subject: str, data: bytes, reply: str = "") -> None:
        self.requests.append((subject, json.loads(data), reply))

    async def deliver(self, headers: dict[str, str] | None = None, data: bytes = b"x") -> None:
        await self.cb(SimpleNamespace(headers=headers, data=data))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_asks_ahead_tops_up_and_stops_when_told() -> None:
    async def scenario() -> None:
        nc, got, room = FakeNats(), [], [True]

        def on_message(msg: Any) -> bool:
            got.append(msg.data)
            return msg.data != b"last"

        pull = OutstandingPull(nc, "S", "C-3", 4, on_message, lambda: room[0], label="p3",
                               log=logging.getLogger("test"))
        task = asyncio.ensure_future(pull.run(lambda: False))
        await settle()
        subject, request, reply = nc.requests[0]
        assert subject == "$JS.API.CONSUMER.MSG.NEXT.S.C-3" and reply == "_INBOX.test"
        assert request == {"batch": 4, "expires": 5_000_000_000}
        await nc.deliver()
        await nc.deliver()
        await settle()
        assert len(nc.requests) == 2 and nc.requests[1][1]["batch"] == 2  # topped up at half
        room[0] = False  # the worker is behind: no more asking
        for _ in range(3):
            await nc.deliver()
        await settle()
        assert len(nc.requests) == 2
        await nc.deliver({"Status": "408", "Nats-Pending-Messages": "1"})  # a status is no message
        assert len(got) == 5
        room[0] = True
        pull.poke()
        await settle()
        assert nc.requests[-1][1]["batch"] == 4  # 0 outstanding now: a whole batch again
        await nc.deliver(data=b"last")
        await asyncio.wait_for(task, 5)  # on_message said stop: run() ends and unsubscribes
        assert nc.unsubscribed and got[-1] == b"last"
        await nc.deliver(data=b"late")
        assert got[-1] == b"last"  # nothing is handed over after the end

    asyncio.run(scenario())


def test_a_silent_server_is_asked_again_with_one_warning(caplog) -> None:
    async def scenario() -> None:
        nc = FakeNats()
        pull = OutstandingPull(nc, "S", "C", 2, lambda msg: True, lambda: True, label="p0",
                               log=logging.getLogger("test"), expires=0.1)
        task = asyncio.ensure_future(pull.run(lambda: len(nc.requests) >= 4))
        await asyncio.wait_for(task, 10)  # nothing ever answers: asked again after each life
        assert [r[1]["batch"] for r in nc.requests] == [2, 2, 2, 2]

    with caplog.at_level(logging.DEBUG, logger="test"):
        asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no answer to pull requests" in warnings[0].getMessage()
    assert sum("no answer" in r.getMessage() for r in caplog.records) == 3
