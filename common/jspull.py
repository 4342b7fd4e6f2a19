"""JetStream pull requests kept outstanding: a pull consumer that delivers like a push one.

Shared by lb-remote (balancer/remote.py) and the Python reader (workers/jetstream.py). It
needs only a connected nats-py client (`subscribe`, `publish`, `new_inbox`), duck-typed, so
this module imports nothing of nats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

JS_API = "$JS.API"
EXPIRES = 5.0  # a pull request's life on the server; one lost is asked again after it
WATCH = 0.25  # the loop looks at its credit at least this often

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
    each message to `on_message` as it comes (a nats-py `Msg`); status messages are consumed
    here. `room()` says whether more may be asked for; `on_message` returning False ends
    `run()` (after which nothing more is handed over). Call `poke()` when room may have come."""

    def __init__(self, nc: Any, stream: str, consumer: str, batch: int,
                 on_message: Callable[[Any], bool], room: Callable[[], bool], *,
                 label: str, log: logging.Logger, expires: float = EXPIRES) -> None:
        self.nc = nc
        self.subject = f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.credit = PullCredit(batch, expires)
        self.on_message = on_message
        self.room = room
        self.label = label
        self.log = log
        self.ended = False
        self._silent = False
        self._wake = asyncio.Event()

    def poke(self, room: bool | None = None) -> None:
        """Wake the loop if more should be asked for; `room` if the caller already knows it."""
        if self.credit.wanted(self.room() if room is None else room):
            self._wake.set()

    def end(self) -> None:
        self.ended = True
        self._wake.set()

    async def _on_msg(self, msg: Any) -> None:
        if self.ended:
            return
        now = time.monotonic()
        self._silent = False
        status = pull_status(msg.headers)
        if status is not None:
            code, pending = status
            self.credit.status(code, pending, now)
            if code == CONFLICT:
                self.log.info("%s: pull request ended: %s %s", self.label, code,
                              (msg.headers or {}).get(DESCRIPTION, ""))
        else:
            self.credit.delivered(now)
            if not self.on_message(msg):
                self.end()
                return
        self.poke()

    async def run(self, until: Callable[[], bool]) -> None:
        """Ask and deliver until `until()` is true or `on_message` said stop."""
        sub = await self.nc.subscribe(self.nc.new_inbox(), cb=self._on_msg)
        credit = self.credit
        request_ns = int(credit.expires * 1e9)
        try:
            while not self.ended and not until():
                now = time.monotonic()
                if credit.lost(now):
                    # once per silence: through an outage this repeats every request's life
                    (self.log.debug if self._silent else self.log.warning)(
                        "%s: no answer to pull requests for %.0f s; asking again", self.label,
                        credit.expires)
                    self._silent = True
                want = credit.wanted(self.room())
                if want:
                    try:
                        await self.nc.publish(self.subject, b'{"batch":%d,"expires":%d}' % (want, request_ns),
                                              reply=sub.subject)
                    except Exception as exc:  # disconnected: asked again once connected
                        self.log.debug("%s: pull request not sent: %s", self.label, exc)
                        await asyncio.sleep(0.2)
                        continue
                    credit.requested(want, now)
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), WATCH)
                except TimeoutError:
                    pass
        finally:
            self.ended = True
            try:
                await sub.unsubscribe()
            except Exception:
                pass
