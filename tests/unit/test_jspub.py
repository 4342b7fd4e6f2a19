"""workers.jspub: the pub ack's meaning from bytes, and the shared ack inbox's bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from common.natsclient import NotConnected
from common.natsproto import Msg
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
class FakeClient:
    """The calls AckInbox makes of common.natsclient.Client; publishes are recorded."""

    published: list[tuple[str, bytes, str, bytes]] = field(default_factory=list)
    subscribed: list[str] = field(default_factory=list)
    handler: Any = None
    unsubscribed: bool = False
    connected: bool = True

    def new_inbox(self) -> str:
        return "_INBOX.test"

    def subscribe(self, subject: str, handler: Any) -> int:
        self.subscribed.append(subject)
        self.handler = handler
        return 3

    def unsubscribe(self, sid: int) -> None:
        self.unsubscribed = sid == 3

    def publish(self, subject: str, payload: bytes, *, reply: str, headers: bytes) -> None:
        if not self.connected:
            raise NotConnected("down")
        self.published.append((subject, payload, reply, headers))

    def answer(self, index: int, data: bytes, hdr: bytes = b"") -> None:
        self.handler(Msg(self.published[index][2], 3, "", hdr, data))


def started() -> tuple[FakeClient, AckInbox, list[Any]]:
    """A client, an inbox started on it, and a list to collect answers in."""
    nc = FakeClient()
    inbox = AckInbox(nc)
    inbox.start()
    return nc, inbox, []


def test_each_attempt_has_its_own_reply_token_and_gets_its_own_answer():
    nc = FakeClient()
    inbox = AckInbox(nc)
    inbox.start()
    assert nc.subscribed == ["_INBOX.test.*"]
    answers: dict[str, Any] = {}
    inbox.publish("t.0", b"a", b"NATS/1.0\r\nNats-Msg-Id: e.0.0\r\n\r\n", lambda a: answers.update(first=a))
    inbox.publish("t.1", b"b", b"NATS/1.0\r\nNats-Msg-Id: e.1.0\r\n\r\n", lambda a: answers.update(second=a))
    replies = [p[2] for p in nc.published]
    assert len(set(replies)) == 2 and all(r.startswith("_INBOX.test.") for r in replies)
    assert all("." not in r[len("_INBOX.test."):] for r in replies)  # one token: `*` matches it
    assert inbox.waiting == 2
    nc.answer(1, b'{"stream":"S","seq":2}')  # out of order: each finds its own callback
    nc.answer(0, b'{"stream":"S","seq":1}')
    assert answers == {"first": PubAck("S", 1, False), "second": PubAck("S", 2, False)}
    assert inbox.waiting == 0
    inbox.close()
    assert nc.unsubscribed


def test_an_answer_to_an_attempt_given_up_is_dropped():
    nc, inbox, got = started()
    token = inbox.publish("t.0", b"a", b"", got.append)
    inbox.forget(token)  # timed out
    nc.answer(0, b'{"stream":"S","seq":1}')
    assert got == [] and inbox.late == 1
    inbox.publish("t.0", b"a", b"", got.append)  # the retry, same id: a new token
    assert nc.published[1][2] != nc.published[0][2]
    nc.answer(1, b'{"stream":"S","seq":1,"duplicate":true}')
    assert got == [PubAck("S", 1, True)]


def test_after_a_disconnect_nothing_waits():
    nc, inbox, got = started()
    inbox.publish("t.0", b"a", b"", got.append)
    inbox.forget_all()
    nc.answer(0, b'{"stream":"S","seq":1}')
    assert got == [] and inbox.waiting == 0
    nc.connected = False
    with pytest.raises(NotConnected):
        inbox.publish("t.0", b"a", b"", got.append)
    assert inbox.waiting == 0


def test_a_refusal_reaches_the_publisher_as_an_error():
    nc, inbox, got = started()
    inbox.publish("t.0", b"a", b"", got.append)
    nc.answer(0, b"", b"NATS/1.0 503\r\n\r\n")
    assert len(got) == 1 and isinstance(got[0], PublishError) and "503" in str(got[0])
    assert inbox.waiting == 0


def test_publishing_before_start_is_a_programming_error():
    with pytest.raises(RuntimeError):
        AckInbox(FakeClient()).publish("t.0", b"", b"", lambda a: None)
