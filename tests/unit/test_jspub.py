"""workers.jspub: the pub ack's meaning from bytes, and the shared ack inbox's bookkeeping."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from workers.jspub import AckInbox, PubAck, PublishError, parse_ack


def test_an_ack_names_the_stream_and_sequence():
    assert parse_ack(b'{"stream":"FEED","seq":42}') == PubAck("FEED", 42, False)
    assert parse_ack(b'{"stream":"FEED","seq":42,"domain":"hub"}', {}) == PubAck("FEED", 42, False)


def test_a_duplicate_is_flagged_only_when_the_server_says_true():
    assert parse_ack(b'{"stream":"FEED","seq":7,"duplicate":true}').duplicate
    assert not parse_ack(b'{"stream":"FEED","seq":7,"duplicate":false}').duplicate
    assert not parse_ack(b'{"stream":"FEED","seq":7,"duplicate":"true"}').duplicate


def test_a_refusal_is_an_error_with_the_servers_words():
    with pytest.raises(PublishError, match=r"503 \(10077\): maximum messages exceeded"):
        parse_ack(b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}')
    with pytest.raises(PublishError, match="stream error"):
        parse_ack(b'{"error":"odd"}')


def test_a_status_reply_means_no_stream_stored_it():
    with pytest.raises(PublishError, match="status 503"):
        parse_ack(b"", {"Status": "503"})
    with pytest.raises(PublishError, match="status 408 Request Timeout"):
        parse_ack(b"", {"Status": "408", "Description": "Request Timeout"})


@pytest.mark.parametrize("data", [b"", b"not json", b"[1,2]", b'{"stream":"S"}', b'{"seq":3}',
                                  b'{"stream":"S","seq":0}', b'{"stream":"S","seq":true}',
                                  b'{"stream":"S","seq":"3"}', b'{"stream":5,"seq":3}'])
def test_anything_else_is_not_taken_for_an_ack(data):
    with pytest.raises(PublishError):
        parse_ack(data)


@dataclass
class FakeMsg:
    subject: str
    data: bytes = b""
    headers: dict[str, str] | None = None


@dataclass
class FakeNats:
    """The three calls AckInbox makes of a nats-py client; publishes are recorded."""

    published: list[tuple[str, bytes, str, dict[str, str]]] = field(default_factory=list)
    subscribed: list[str] = field(default_factory=list)
    callback: Any = None
    unsubscribed: bool = False

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb: Any) -> Any:
        self.subscribed.append(subject)
        self.callback = cb
        fake = self

        class Sub:
            async def unsubscribe(self) -> None:
                fake.unsubscribed = True

        return Sub()

    async def publish(self, subject: str, payload: bytes, reply: str, headers: dict[str, str]) -> None:
        self.published.append((subject, payload, reply, headers))

    async def answer(self, index: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        await self.callback(FakeMsg(self.published[index][2], data, headers))


async def _published(nc: FakeNats, count: int) -> None:
    while len(nc.published) < count:
        await asyncio.sleep(0)


async def test_each_attempt_has_its_own_reply_token_and_gets_its_own_answer():
    nc = FakeNats()
    inbox = AckInbox(nc)
    await inbox.start()
    assert nc.subscribed == ["_INBOX.test.*"]
    first = asyncio.ensure_future(inbox.publish("t.0", b"a", {"Nats-Msg-Id": "e.0.0"}, 5))
    second = asyncio.ensure_future(inbox.publish("t.1", b"b", {"Nats-Msg-Id": "e.1.0"}, 5))
    await _published(nc, 2)
    replies = [p[2] for p in nc.published]
    assert len(set(replies)) == 2 and all(r.startswith("_INBOX.test.") for r in replies)
    assert all("." not in r[len("_INBOX.test."):] for r in replies)  # one token: `*` matches it
    await nc.answer(1, b'{"stream":"S","seq":2}')  # out of order: each finds its own waiter
    await nc.answer(0, b'{"stream":"S","seq":1}')
    assert (await first).seq == 1 and (await second).seq == 2
    assert inbox._waiting == {}
    await inbox.close()
    assert nc.unsubscribed


async def test_a_late_answer_to_an_attempt_that_timed_out_is_dropped():
    nc = FakeNats()
    inbox = AckInbox(nc)
    await inbox.start()
    with pytest.raises(TimeoutError):
        await inbox.publish("t.0", b"a", {}, 0.02)
    assert inbox._waiting == {}
    await nc.answer(0, b'{"stream":"S","seq":1}')
    assert inbox.late == 1
    retry = asyncio.ensure_future(inbox.publish("t.0", b"a", {}, 5))
    await _published(nc, 2)
    assert nc.published[1][2] != nc.published[0][2]
    await nc.answer(1, b'{"stream":"S","seq":1,"duplicate":true}')
    assert await retry == PubAck("S", 1, True)


async def test_a_refusal_reaches_the_publisher_as_an_error():
    nc = FakeNats()
    inbox = AckInbox(nc)
    await inbox.start()
    attempt = asyncio.ensure_future(inbox.publish("t.0", b"a", {}, 5))
    await _published(nc, 1)
    await nc.answer(0, b"", {"Status": "503"})
    with pytest.raises(PublishError, match="503"):
        await attempt
    assert inbox._waiting == {}


async def test_publishing_before_start_is_a_programming_error():
    with pytest.raises(RuntimeError):
        await AckInbox(FakeNats()).publish("t.0", b"", {}, 1)
