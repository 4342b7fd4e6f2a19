"""JetStream pull requests kept outstanding: a pull consumer that delivers like a push one.

Shared by lb-remote (balancer/remote.py) and the Python reader (workers/jetstream.py), over a
connected common.natsclient.Client (duck-typed here).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

JS_API = "$JS.API"
EXPIRES = 5.0  # a pull request's life on the server; one lost is asked again after it

# A JetStream pull request (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`, JSON `{"batch": N,
# "expires": ns}`, reply subject = our inbox) asks the server for up to N messages; it hands
# each one over as soon as it is stored, until N went out or `expires` passed. Then it sends
# a status message: 408 Request Timeout, with `Nats-Pending-Messages` (how many of the N were
# never sent). Keeping requests for about a batch always outstanding makes a pull consumer
# deliver like a push one, without a round trip per fetch, while the credit still bounds what
# is in flight. Several requests may be outstanding and the server may fill them in any
# order, so only the total is counted: requested - delivered - (the pending of every ended
# request). The consumer itself delivers in stream order whichever request a message fills.

STATUS = "Status"
DESCRIPTION = "Description"
PENDING_MESSAGES = "Nats-Pending-Messages"
HEARTBEAT, CONFLICT = "100", "409"  # 408 (request expired) and 404 need no case of their own
_REQUEST = b'{"batch":%d,"expires":%d}'


def pull_status(headers: dict[str, str] | None) -> tuple[str, int | None] | None:
    """(status code, pending messages or None) of a status message, None for a message."""
    if not headers:
        return None
    code = headers.get(STATUS)
    if not code:
        return None
    pending = headers.get(PENDING_MESSAGES, "")
    return code, int(pending) if pending.isdigit() else None


class PullCredit:
    """How many messages the outstanding pull requests of one consumer may still bring."""

    __slots__ = ("batch", "expires", "heard", "outstanding")

    def __init__(self, batch: int, expires: float) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.batch = batch
        self.expires = expires
        self.outstanding = 0
        self.heard = 0.0  # when the server last answered (a message or a status), or we asked

    def wanted(self, room: bool) -> int:
        """Messages to ask for now: topped up to a batch once half of it has arrived."""
        if not room or self.outstanding > self.batch // 2:
            return 0
        return self.batch - self.outstanding

    def requested(self, count: int, now: float) -> None:
        self.outstanding += count
        self.heard = now

    def delivered(self, now: float) -> None:
        self.outstanding = max(0, self.outstanding - 1)
        self.heard = now

    def status(self, code: str, pending: int | None, now: float) -> None:
        """A status message: an ended request gives back what it did not bring."""
        self.heard = now
        if code == HEARTBEAT:
            return
        if pending is None:
            # a request ended without saying what it owed (an old server, a conflict): forget
            # all of them; a late message of a forgotten one is delivered all the same
            self.outstanding = 0
        else:
            self.outstanding = max(0, self.outstanding - pending)

    def lost(self, now: float) -> bool:
        """Requests outstanding and nothing heard for longer than one could live: the server
        forgot them (a restart, a leader change). The caller asks again."""
        if self.outstanding and now - self.heard > self.expires + 1.0:
            self.outstanding = 0
            return True
        return False


class OutstandingPull:
    """Keeps pull requests for about `batch` messages outstanding on one consumer and hands
    each message to `on_message` as it arrives (a `common.natsproto.Msg`, called while the
    read is parsed: no task or queue per message); status messages are consumed here.
    `room()` says whether more may be asked for; `on_message` returning False ends the pull
    (nothing more is handed over after it). Call `poke()` when room may have come, and
    `tick()` now and then (a silent server is asked again). `client` is a connected
    `common.natsclient.Client` (duck-typed: `subscribe`, `unsubscribe`, `publish`, `new_inbox`).
    """

    def __init__(self, client: Any, stream: str, consumer: str, batch: int,
                 on_message: Callable[[Any], bool], room: Callable[[], bool], *,
                 label: str, log: logging.Logger, expires: float = EXPIRES) -> None:
        self.client = client
        self.subject = f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.credit = PullCredit(batch, expires)
        self.on_message = on_message
        self.room = room
        self.label = label
        self.log = log
        self.ended = False
        self.inbox = ""
        self._sid = 0
        self._silent = False
        self.done = asyncio.Event()

    def start(self) -> None:
        """Subscribes the inbox and asks for the first batch."""
        self.inbox = self.client.new_inbox()
        self._sid = self.client.subscribe(self.inbox, self._on_msg)
        self.poke()

    def poke(self, room: bool | None = None) -> None:
        """Asks for more if the credit is down to half and the worker has room (`room` if
        the caller already knows it)."""
        if self.ended:
            return
        credit = self.credit
        if credit.outstanding > credit.batch // 2:
            return  # enough asked for: no need to ask `room()` (a system call for lb-remote)
        want = credit.wanted(self.room() if room is None else room)
        if not want:
            return
        try:
            self.client.publish(self.subject, _REQUEST % (want, int(credit.expires * 1e9)),
                                reply=self.inbox)
        except ConnectionError as exc:  # disconnected: asked again once connected (tick)
            self.log.debug("%s: pull request not sent: %s", self.label, exc)
            return
        credit.requested(want, time.monotonic())

    def tick(self, now: float | None = None, room: bool | None = None) -> None:
        """`poke()`, after forgetting the requests of a server silent past a request's life (a
        restart, a leader change), so that they are asked for again."""
        if self.ended:
            return
        if self.credit.lost(time.monotonic() if now is None else now):
            # once per silence: through an outage this repeats every request's life
            (self.log.debug if self._silent else self.log.warning)(
                "%s: no answer to pull requests for %.0f s; asking again", self.label, self.credit.expires)
            self._silent = True
        self.poke(room)

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self._sid:
            self.client.unsubscribe(self._sid)
        self.done.set()

    def _on_msg(self, msg: Any) -> None:
        if self.ended:
            return
        now = time.monotonic()
        self._silent = False
        status = pull_status(msg.headers) if msg.hdr else None
        if status is not None:
            code, pending = status
            self.credit.status(code, pending, now)
            if code == CONFLICT:
                self.log.info("%s: pull request ended: %s %s", self.label, code,
                              msg.headers.get(DESCRIPTION, ""))
        else:
            self.credit.delivered(now)
            if not self.on_message(msg):
                self.end()
                return
        self.poke()
