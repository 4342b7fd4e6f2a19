"""The websocket connection's rules, sans I/O: control frames, the closing handshake, keepalive.

``WebSocketConnection`` is what lb's ``Session`` asks about an open websocket (after the
upgrade), in the style of ``frames.py``, h11 or websockets' ``Protocol``: events and the time
go in, decisions and bytes to send come out; it owns no socket, no timer and no event loop.

- Control frames: a ``Ping`` gets a ``Pong`` with its payload; a ``Pong`` answers lb's ping
  (its round trip); a ``Close`` is either the reply to lb's own close (the handshake is
  complete) or the server closing first, which lb answers with the server's code (1000 if it
  sent none; 1005, 1006 and 1015 never go on the wire) before the connection ends. The frame
  rules themselves (control payloads of 125 bytes at most, never fragmented, valid codes and
  UTF-8 reasons) are the decoder's (``frames.FrameDecoder``).
- Closing: lb's close frame goes out once, however many reasons to close arrive. After a
  close for a shutdown the connection waits ``wait`` seconds for the reply (then it ends "no
  close reply"); after a close for a violation it lingers ``linger`` seconds at most (the I/O
  layer reads and discards meanwhile), so that a server still writing sees the close code, not
  a reset.
- Keepalive: liveness is whole frames, not bytes. After ``ping_interval`` seconds without a
  whole frame lb pings; if still nothing whole has arrived ``ping_timeout`` seconds after the
  ping, the connection is dead. While reading is paused on purpose, silence proves nothing.

Time is whatever clock the caller uses (the event loop's), passed in as ``now``. The I/O layer
arms a timer for ``next_deadline()`` and calls ``expired(now)`` when it fires.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from balancer import frames, logsafe
from balancer.causes import Cause
from balancer.frames import Close, CloseCode, Ping, Pong

CLOSE_WAIT = 2.0  # seconds to wait for the server's reply to our close frame
LINGER = 1.0  # after our close frame for a violation: seconds to drain the socket before closing
# A timer may fire this much before its deadline (asyncio runs a handle once it is due within
# the clock's resolution): expired() counts a deadline that close as reached.
TIMER_SLACK = 1e-3


@dataclass(frozen=True, slots=True)
class Ended:
    """The connection is over: ``cause`` and ``message`` say why (for logs and stats)."""

    cause: Cause
    message: str


@dataclass(frozen=True, slots=True)
class PingSent:
    """The keepalive sent a ping (its frame waits in ``data_to_send()``)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    """A pong arrived; ``rtt``: seconds since lb's ping in flight was sent, None if none was."""

    rtt: float | None


def reply_code(code: int | None) -> int:
    """The code lb's close reply carries when the server closed first with ``code``."""
    if code is None or code in frames.NOT_ON_WIRE:
        return CloseCode.NORMAL
    return code


class WebSocketConnection:
    """One open websocket's control side (lb is the client). See the module docstring."""

    def __init__(
        self,
        ping_interval: float,
        ping_timeout: float,
        linger: float = LINGER,
        mask_key: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.linger = linger
        self._mask_key = mask_key  # the masking keys of lb's frames (RFC 6455 5.3): random
        self._outgoing: list[bytes] = []
        self.opened = False
        self.close_sent = False
        self.lingering: Ended | None = None  # why, once a violation closed the connection
        self.paused = False  # reading paused on purpose (backpressure)
        self.last_rx = 0.0  # when the last whole frame arrived (or opened / resumed)
        self.ping_sent_at: float | None = None  # the ping in flight, for the ping timeout
        self._rtt_from = 0.0  # when the ping in flight was sent, for its round trip
        self.pings = 0  # pings sent: the next ping's payload counts them
        self._deadlines: list[tuple[float, Ended]] = []

    # -- output -------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """The frames to write, in order, since the last call (each a whole masked frame)."""
        out, self._outgoing = self._outgoing, []
        return out

    def send_text(self, message: bytes) -> None:
        self._send(frames.OP_TEXT, message)

    def _send(self, opcode: int, payload: bytes) -> None:
        self._outgoing.append(frames.encode_frame(opcode, payload, key=self._mask_key(4)))

    def _send_close(self, code: int, reason: str) -> None:
        if not self.close_sent:
            self.close_sent = True
            self._outgoing.append(frames.encode_close(code, reason, key=self._mask_key(4)))

    # -- life cycle -----------------------------------------------------------------------

    def open(self, now: float) -> None:
        """The upgrade succeeded at ``now``: silence counts from here."""
        self.opened = True
        self.last_rx = now

    def frames_received(self, now: float) -> None:
        """Whole frames arrived (any kind): the server is alive, the ping in flight is answered."""
        self.last_rx = now
        self.ping_sent_at = None

    def receive_control(self, event: Ping | Pong | Close, now: float) -> PongReceived | Ended | None:
        """A control frame from the server: what it means (a pong's round trip, the end)."""
        if type(event) is Ping:
            self._send(frames.OP_PONG, event.payload)
            return None
        if type(event) is Pong:
            rtt = None
            if self._rtt_from:
                rtt, self._rtt_from = now - self._rtt_from, 0.0
            return PongReceived(rtt)
        assert type(event) is Close
        if self.close_sent:  # the reply to our own close: the handshake is complete
            return Ended(Cause.SHUTDOWN, "closed")
        self._send_close(reply_code(event.code), "")
        return Ended(Cause.CLOSE, f"server closed the websocket (code {event.code}, "
                                  f"'{logsafe.untrusted(event.reason)}')")

    def close(self, code: int, reason: str, now: float, wait: float = CLOSE_WAIT) -> float:
        """lb starts the closing handshake (a shutdown); returns the deadline for the reply,
        after which the connection ends (``expired``)."""
        self._send_close(code, reason)
        return self._add_deadline(now + wait, Ended(Cause.SHUTDOWN, f"{reason} (no close reply)"))

    def fail(self, code: int, reason: str, cause: Cause, message: str, now: float) -> float | None:
        """The server broke a rule: lb's close frame, then linger (read and discard) until the
        server closes or ``linger`` seconds pass. Returns the new deadline, or None if the
        connection was already lingering (the first violation names the end)."""
        self._send_close(code, reason)
        if self.lingering is not None:
            return None
        self.lingering = Ended(cause, message)
        return self._add_deadline(now + self.linger, self.lingering)

    def receive_eof(self, mid_frame: bool) -> Ended:
        """The server closed the TCP connection (``mid_frame``: with a partial frame unread)."""
        if self.lingering is not None:
            return self.lingering  # the server closed after our close frame: nothing to wait for
        cause = Cause.SHUTDOWN if self.close_sent else Cause.EOF
        return Ended(cause, "server closed the connection" + (" (mid-frame)" if mid_frame else ""))

    # -- time -------------------------------------------------------------------------------

    def _add_deadline(self, when: float, ended: Ended) -> float:
        self._deadlines.append((when, ended))
        self._deadlines.sort(key=lambda entry: entry[0])  # stable: the earlier armed wins a tie
        return when

    def next_deadline(self) -> float | None:
        """When the earliest closing deadline falls (None: none is armed)."""
        return self._deadlines[0][0] if self._deadlines else None

    def expired(self, now: float) -> Ended | None:
        """The end a closing deadline reached by ``now`` decides, if one was."""
        if self._deadlines and self._deadlines[0][0] <= now + TIMER_SLACK:
            return self._deadlines.pop(0)[1]
        return None

    def pause(self) -> None:
        self.paused = True

    def resume(self, now: float) -> None:
        """Reading resumes: silence counts from ``now``."""
        self.paused = False
        if self.opened:
            self.last_rx = now

    def tick_period(self) -> float:
        """How often the I/O layer should call ``keepalive`` (a quarter of the shortest bound)."""
        return max(0.05, min(1.0, self.ping_interval / 4, self.ping_timeout / 4))

    def keepalive(self, now: float) -> PingSent | Ended | None:
        """The keepalive policy at ``now``: ping after ``ping_interval`` of silence, dead after
        ``ping_timeout`` more with no whole frame."""
        if self.paused:
            self.last_rx = now  # not reading by choice: silence proves nothing
        elif self.ping_sent_at is not None:
            if now - self.ping_sent_at > self.ping_timeout:
                return Ended(Cause.TIMEOUT, f"nothing received for {now - self.last_rx:.1f} s "
                                            f"(no pong within {self.ping_timeout:g} s): connection is dead")
        elif now - self.last_rx > self.ping_interval:
            self.pings += 1
            self.ping_sent_at = self._rtt_from = now
            payload = struct.pack(">Q", self.pings)
            self._send(frames.OP_PING, payload)
            return PingSent(payload)
        return None

    def streamed_for(self, since: float) -> float:
        """Seconds from ``since`` (the subscription's confirmation; 0: none) to the last whole frame."""
        if not since:
            return 0.0
        return max(0.0, self.last_rx - since)
