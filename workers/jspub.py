"""JetStream publishes acknowledged through one shared reply inbox: the bridge's hot path.

A JetStream publish is a NATS publish whose reply subject receives the stream's answer, the
"pub ack": JSON `{"stream": S, "seq": N}` (with `"duplicate": true` when the `Nats-Msg-Id`
was already stored inside the duplicate window), `{"error": {"code": C, "description":
D}}` when the stream refused it, or a header-only `503` status when no stream listens on the
subject. Every publish of the bridge names a reply subject `<inbox>.<token>` of one
subscription `<inbox>.*`, a new token per attempt, and the answer is handed to that
attempt's callback while the read is parsed: no future, task or timer per publish (the
bridge's watchdog times attempts out in bulk).

`parse_ack` is pure (bytes and headers in, a `PubAck` or an exception out);
`AckInbox` is the thin I/O around it, over a connected common.natsclient.Client (duck-typed:
`new_inbox`, `subscribe`, `unsubscribe`, `publish`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from common.jspull import DESCRIPTION, STATUS


class PubAck(NamedTuple):
    stream: str
    seq: int
    duplicate: bool


class PublishError(Exception):
    """The stream did not store the message: refused it, or nothing listens on the subject."""


def parse_ack(data: bytes, headers: dict[str, str] | None = None) -> PubAck:
    """A pub ack's meaning. Raises PublishError for a refusal or a status (no stream)."""
    if headers and headers.get(STATUS):
        raise PublishError(f"status {headers[STATUS]} {headers.get(DESCRIPTION, '')}".rstrip())
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PublishError(f"unreadable pub ack {bytes(data[:80])!r}") from exc
    if not isinstance(doc, dict):
        raise PublishError(f"unreadable pub ack {bytes(data[:80])!r}")
    error = doc.get("error")
    if error is not None:
        if isinstance(error, dict):
            raise PublishError(f"stream error {error.get('code')} ({error.get('err_code', '-')}): "
                               f"{error.get('description', '')}")
        raise PublishError(f"stream error {error!r}")
    stream, seq = doc.get("stream"), doc.get("seq")
    if not isinstance(stream, str) or not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise PublishError(f"pub ack without a stream and sequence: {bytes(data[:80])!r}")
    return PubAck(stream, seq, doc.get("duplicate") is True)


AckCallback = Callable[["PubAck | PublishError"], None]


class AckInbox:
    """Publishes to JetStream; each answer goes to the callback of its attempt.

    Every attempt gets a new reply token, so a late answer to an attempt given up on (and
    republished) finds no callback and is dropped; the republish carries the same
    `Nats-Msg-Id`, so the stream answers it `duplicate` if the first one was stored after all.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.prefix = ""
        self._tokens = itertools.count(1)
        self._waiting: dict[str, AckCallback] = {}
        self._sid = 0
        self.late = 0  # answers that came after their attempt was given up

    def start(self) -> None:
        self.prefix = f"{self.client.new_inbox()}."
        self._sid = self.client.subscribe(f"{self.prefix}*", self._on_reply)

    def close(self) -> None:
        self._waiting.clear()
        if self._sid:
            self.client.unsubscribe(self._sid)
            self._sid = 0

    def publish(self, subject: str, payload: bytes, headers: bytes, on_answer: AckCallback) -> str:
        """Queues one attempt; returns its token (for `forget`). Raises the client's
        NotConnected (nothing is then waiting)."""
        if not self._sid:
            raise RuntimeError("AckInbox.start() first")
        token = str(next(self._tokens))
        self.client.publish(subject, payload, reply=self.prefix + token, headers=headers)
        self._waiting[token] = on_answer
        return token

    def forget(self, token: str) -> None:
        """Gives an attempt up (timed out, or its connection is gone): its answer is dropped."""
        self._waiting.pop(token, None)

    def forget_all(self) -> None:
        self._waiting.clear()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _on_reply(self, msg: Any) -> None:
        callback = self._waiting.pop(msg.subject[len(self.prefix):], None)
        if callback is None:
            self.late += 1
            return
        try:
            result: PubAck | PublishError = parse_ack(msg.data, msg.headers if msg.hdr else None)
        except PublishError as exc:
            result = exc
        callback(result)
