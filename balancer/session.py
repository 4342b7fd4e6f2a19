"""One connection's life: connect, upgrade, auth, subscribe, then the read loop.

The read loop is a plain callback on the socket's readiness, not a coroutine:
each call reads everything available straight into the frame decoder's buffer,
routes every complete message, and writes each pipe once.

The websocket's rules (pong replies, the closing handshake, the keepalive policy) are the
sans-I/O ``wsconn.WebSocketConnection``'s; the session feeds it control frames and the loop's
time, writes the frames it returns, and arms a loop timer for each deadline it sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Protocol

import orjson

from balancer import frames, handshake, logsafe, polygon
from balancer.causes import Cause, read_failure
from balancer.config import DEFAULTS, TlsMode
from balancer.engine import NativeEngine
from balancer.frames import CloseCode, FrameDecoder, ProtocolError
from balancer.router import Router, RouterError, RouteResult
from balancer.stats import Stats
from balancer.transport import ConnectError, SendFailed, Transport, describe, open_transport, wait_ready
from balancer.url import WebSocketURL
from balancer.wsconn import CLOSE_WAIT, Ended, PingSent, PongReceived, WebSocketConnection
from common.version import VERSION

log = logging.getLogger("lb")
logsafe.install(log)  # no log line is the server's to write: escaped, cut, floods counted

USER_AGENT = f"trade-balancer-lb/{VERSION}"

READ_SIZE = 512 * 1024  # per wake-up: bigger batches fall out of the CPU caches and add latency
HANDSHAKE_READ = 64 * 1024


@dataclass(slots=True)
class SessionConfig:
    url: WebSocketURL
    key: str
    subscribe: str
    tls_mode: TlsMode  # decided before connecting, from the requested Config.tls
    cafile: str | None
    ping_interval: float
    ping_timeout: float
    max_message: int
    connect_timeout: float = DEFAULTS.connect_timeout


class SessionEnded(Exception):
    """The connection is over; ``cause`` names why, for logs and stats. ``retry_after``: the
    seconds the server asked lb to wait (HTTP 429/503 Retry-After), if it did."""

    def __init__(self, cause: Cause, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.retry_after = retry_after


class Output(Protocol):
    """Where routed batches go (lb's pipes); it may ask the session to stop reading."""

    def deliver(self, batches: list[Any]) -> None: ...


class Recorder(Protocol):
    def write(self, payload: bytes) -> None: ...


class Session:
    def __init__(
        self,
        config: SessionConfig,
        router: Router,
        output: Output,
        stats: Stats,
        recorder: Recorder | None = None,
        decoder: FrameDecoder | None = None,
        engine: NativeEngine | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.output = output
        self.stats = stats
        self.recorder = recorder
        self.polygon = polygon.PolygonSession(config.key, config.subscribe)
        # One decoder (and its receive buffer) serves every connection of the process.
        self.decoder = decoder or FrameDecoder(max_message=config.max_message)
        self.decoder.reset()
        self.engine = engine  # the native data path, or None for pure Python
        self.transport: Transport | None = None
        self.delivered = 0  # trades this connection delivered
        self._done: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        # The websocket's rules (control frames, closing, keepalive); this class does the I/O.
        self.conn = WebSocketConnection(config.ping_interval, config.ping_timeout)
        self._timer: asyncio.TimerHandle | None = None
        self._opened_at = 0.0
        self._result = RouteResult()
        self._on_streaming: Callable[[Session], None] | None = None
        self._frames_seen = 0
        self._scratch: memoryview | None = None  # what _drain reads into
        self.streaming_since = 0.0  # loop time the subscription was confirmed

    # -- life cycle ----------------------------------------------------------------

    async def run(self, on_streaming: Callable[[Session], None] | None = None) -> None:
        """Run until the connection ends; always raises (SessionEnded, AuthFailed, Evicted...)."""
        loop = self._loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        try:
            self.transport = await self._until_done(self._connect())
            self.transport.on_failure = self._send_failed
            self.stats.tls = str(self.transport.info)
            await self._until_done(self._upgrade())
            for message in self.polygon.opening_messages():
                self._send_text(message)
            self._opened_at = loop.time()
            self.conn.open(self._opened_at)
            self._on_streaming = on_streaming
            self._start_reading()
            self._schedule_tick()
            self._on_readable()  # bytes that came with the upgrade reply
            await self._done
        finally:
            self._stop()
            self._done = None  # the exception it holds refers back to this frame: no cycle

    async def _until_done(self, step: Any) -> Any:
        """Run one connect phase, but give up on it at once when the session ends (SIGTERM)."""
        assert self._done is not None
        task = asyncio.ensure_future(step)
        await asyncio.wait((task, self._done), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return self._done.result()  # raises the SessionEnded that ended it

    def _send_failed(self, failure: SendFailed) -> None:
        if self._opened_at:
            self._on_readable()  # route what was received before the failure
        self.end(Cause(failure.cause), str(failure))

    async def _connect(self) -> Transport:
        cfg = self.config
        try:
            return await open_transport(cfg.url, cfg.tls_mode, cfg.cafile, cfg.connect_timeout)
        except ConnectError as exc:
            raise SessionEnded(Cause.CONNECT, str(exc)) from None
        except TimeoutError:  # an OSError too in 3.11: before the OSError branch
            raise SessionEnded(Cause.TIMEOUT, f"TLS handshake with {cfg.url.host} timed out "
                                          f"after {cfg.connect_timeout:g} s") from None
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or exc
            raise SessionEnded(Cause.TLS, f"certificate verification failed: {reason}") from None
        except (ssl.SSLError, OSError) as exc:
            raise SessionEnded(Cause.TLS,
                               f"TLS handshake with {cfg.url.host} failed: {describe(exc)}") from None

    async def _upgrade(self) -> None:
        assert self.transport is not None and self._loop is not None
        key = handshake.new_key()
        self.transport.send(
            handshake.build_request(self.config.url.host_header, self.config.url.resource, key, USER_AGENT)
        )
        received = bytearray()
        scratch = memoryview(bytearray(HANDSHAKE_READ))
        deadline = self._loop.time() + self.config.connect_timeout
        while True:
            try:
                n = self.transport.recv_into(scratch)
            except BlockingIOError:
                await self._wait_readable(deadline, "the upgrade reply")
                continue
            except (OSError, ssl.SSLError) as exc:
                raise SessionEnded(Cause.RESET, f"connection lost during the upgrade: {exc}") from None
            if n == 0:
                raise SessionEnded(Cause.EOF, "server closed the connection during the upgrade")
            received += scratch[:n]
            try:
                parsed = handshake.parse_response_head(received)
                if parsed is not None:
                    response, consumed = parsed
                    handshake.check_response(response, key)
                    self.decoder.feed(received[consumed:])
                    return
            except handshake.HandshakeError as exc:
                raise SessionEnded(Cause.HANDSHAKE, str(exc), exc.retry_after) from None

    async def _wait_readable(self, deadline: float, what: str) -> None:
        assert self.transport is not None and self._loop is not None
        try:
            await wait_ready(self._loop, self.transport.fd, False, max(0.0, deadline - self._loop.time()))
        except TimeoutError:
            raise SessionEnded(Cause.TIMEOUT, f"timed out waiting for {what}") from None

    def end(self, cause: Cause, message: str) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(SessionEnded(cause, message))

    def _end(self, ended: Ended) -> None:
        self.end(ended.cause, ended.message)

    def fail(self, exc: BaseException) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)

    close_wait = CLOSE_WAIT

    def close(self, code: int = CloseCode.GOING_AWAY, reason: str = "shutting down",
              wait: float = CLOSE_WAIT) -> None:
        """The closing handshake: send a close frame and keep reading (and routing: the server
        sent those trades whole) until the server's close frame arrives, for at most ``wait``
        seconds. Closing the socket on unread data would reset it instead. Also when
        backpressure paused reading: the reply lies behind what the server sent before it, so
        lb reads that too (bounded by the socket buffers and ``wait``), past --max-backlog."""
        transport = self.transport
        if transport is None or transport.closed or self._loop is None or not self._opened_at:
            self.end(Cause.SHUTDOWN, reason)
            return
        deadline = self.conn.close(code, reason, self._loop.time(), wait)
        self._flush()
        if self.conn.paused:
            self.resume_reading()
        self._arm(deadline)

    def streamed_for(self) -> float:
        """Seconds from the subscription's confirmation to the last whole frame received."""
        return self.conn.streamed_for(self.streaming_since)

    def _arm(self, deadline: float) -> None:
        """A timer for one of the connection's closing deadlines."""
        assert self._loop is not None
        self._loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        assert self._loop is not None
        while (ended := self.conn.expired(self._loop.time())) is not None:
            self._end(ended)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            if self._reading and self._loop is not None:
                self._loop.remove_reader(self.transport.fd)
                self._reading = False
            self.transport.close()

    # -- flow control (the pipes ask for it) ----------------------------------------

    def pause_reading(self) -> None:
        self.conn.pause()
        if self._reading and self._loop is not None and self.transport is not None:
            self._loop.remove_reader(self.transport.fd)
            self._reading = False

    def resume_reading(self) -> None:
        self.conn.resume(self._loop.time() if self._loop is not None else 0.0)
        if self._loop is not None and self.conn.opened:
            self._start_reading()
            self._loop.call_soon(self._on_readable)

    def _start_reading(self) -> None:
        transport = self.transport
        if self._reading or self.conn.paused or transport is None or transport.closed or self._loop is None:
            return
        self._loop.add_reader(transport.fd, self._on_readable)
        self._reading = True

    # -- the read loop ---------------------------------------------------------------

    def _on_readable(self) -> None:
        transport = self.transport
        if transport is None or transport.closed or self._done is None or self._done.done():
            return
        if self.conn.lingering is not None:
            self._drain(transport)
            return
        decoder = self.decoder
        frames_before = decoder.frames
        recv_into = transport.recv_into
        one_read = transport.info.mode != "userspace"
        got = 0
        eof = False
        failure: tuple[Cause, str] | None = None
        try:
            while True:
                buffer = decoder.recv_buffer()[: READ_SIZE - got]
                n = recv_into(buffer)
                if n == 0:
                    eof = True
                    break
                decoder.commit(n)
                got += n
                # One read per call for plain TCP and kTLS (the socket stays readable if more is
                # waiting); OpenSSL returns one record per call, so gather up to READ_SIZE.
                if one_read or got >= READ_SIZE:
                    break
        except BlockingIOError:
            pass
        except frames.AllocationFailed as exc:  # no room for the frame announced: route what came before
            self._close_and_linger(exc.close_code, "message too big", Cause.MEMORY, str(exc))
        except OSError as exc:  # what was decrypted before it is routed below
            cause = read_failure(exc)  # ssl.SSLError and KtlsError are tls, not reset
            failure = (cause, f"TLS error: {exc}" if cause is Cause.TLS else f"connection lost: {exc}")
        if got:
            self.stats.bytes += got
            self.stats.reads += 1
        try:
            if self.engine is not None and self.recorder is None:
                messages, trades = self.engine.run(decoder, self.router)
                self.delivered += trades
                self.stats.trades += trades
                self.stats.messages += messages
            self._handle_events(decoder.events())
            decoder.check()
            if failure is None and not eof and self.conn.lingering is None:
                decoder.reserve()
        except frames.AllocationFailed as exc:
            self._close_and_linger(exc.close_code, "message too big", Cause.MEMORY, str(exc))
        except MemoryError:  # the native engine or the router: end the connection, never wedge
            self._close_and_linger(CloseCode.TOO_BIG, "out of memory", Cause.MEMORY,
                                   "cannot allocate memory while routing a message")
        except ProtocolError as exc:
            self._close_and_linger(exc.close_code, "protocol error", Cause.PROTOCOL,
                                   f"websocket protocol violation: {exc}")
        except RouterError as exc:
            self._close_and_linger(CloseCode.INVALID_DATA, "invalid payload", Cause.BADJSON, str(exc))
        except (polygon.AuthFailed, polygon.Evicted) as exc:
            self.fail(exc)
        except polygon.SessionError as exc:
            self.end(Cause.STATUS, f"server said {exc}")
        if decoder.frames != frames_before and self._loop is not None:
            # Liveness is whole frames, not bytes: a server dribbling a byte at a time proves nothing.
            self.conn.frames_received(self._loop.time())
        if failure is not None:
            self.end(*failure)
        elif eof:
            self._end(self.conn.receive_eof(mid_frame=bool(decoder.buffered)))
        elif self._reading and transport.pending() and self._loop is not None:
            self._loop.call_soon(self._on_readable)  # decrypted bytes wait in OpenSSL, not the socket

    def _close_and_linger(self, code: int, reason: str, cause: Cause, message: str) -> None:
        """Our close frame for a violation, then wsconn.LINGER seconds at most of reading and discarding
        until the server closes, so that a server still writing sees the close code, not a reset."""
        deadline = self.conn.fail(code, reason, cause, message, self._loop.time() if self._loop else 0.0)
        self._flush()
        if deadline is not None:
            if self._loop is None:
                self._end(Ended(cause, message))
            else:
                self._arm(deadline)

    def _drain(self, transport: Transport) -> None:
        lingering = self.conn.lingering
        assert lingering is not None
        try:
            if self._scratch is None:
                self._scratch = memoryview(bytearray(HANDSHAKE_READ))
            scratch = self._scratch
            for _ in range(8):
                if transport.recv_into(scratch) == 0:
                    self._end(lingering)
                    return
        except BlockingIOError:
            return
        except (ssl.SSLError, OSError, MemoryError):
            self._end(lingering)
            return
        if self._loop is not None:
            self._loop.call_soon(self._on_readable)

    def _handle_events(self, events: list[frames.Event]) -> None:
        router = self.router
        result = self._result
        route = router.route
        recorder = self.recorder
        before = router.trades
        messages = 0
        try:
            if recorder is None and len(events) > 1 and all(map(isinstance, events, repeat(bytes))) \
                    and router.route_many(events):  # type: ignore[arg-type]
                messages = len(events)  # a read of small frames, routed in one go
                events = []
            for event in events:
                if type(event) is bytes:
                    messages += 1
                    if recorder is not None:
                        recorder.write(event)
                    route(event, result)
                    if result.statuses or result.unroutable:
                        self._handle_side_results(result)
                else:
                    self._handle_control(event)
        finally:
            # Whatever was routed before an error is delivered, never dropped.
            routed = router.trades - before
            self.delivered += routed
            self.stats.trades += routed
            self.stats.messages += messages
            self.stats.frames += self.decoder.frames - self._frames_seen
            self._frames_seen = self.decoder.frames
            batches = router.take()
            if batches:
                self.output.deliver(batches)

    def _handle_side_results(self, result: RouteResult) -> None:
        statuses, result.statuses = result.statuses, []
        unroutable, result.unroutable = result.unroutable, []
        for raw in unroutable:
            kind, what = _what_sym(raw)
            log.warning("event %s, not routed: %s", what, logsafe.untrusted(raw),
                        extra=logsafe.limited(f"events with {kind}"))
        for status in statuses:
            self.stats.status_events += 1
            log.info("status %s", polygon.describe(status), extra=logsafe.limited("status events", 20))
            was_streaming = self.polygon.phase is polygon.Phase.STREAMING
            for message in self.polygon.on_status(status):
                self._send_text(message)
            if not was_streaming and self.polygon.phase is polygon.Phase.STREAMING:
                self.streaming_since = self._loop.time() if self._loop else 0.0
                log.info("subscribed (%s) over %s", self.config.subscribe, self.stats.tls)
                if self._on_streaming is not None:
                    self._on_streaming(self)

    def _handle_control(self, event: frames.Event) -> None:
        if not isinstance(event, frames.Ping | frames.Pong | frames.Close):
            return
        result = self.conn.receive_control(event, self._loop.time() if self._loop else 0.0)
        self._flush()  # the pong, or the reply to the server's close
        if type(result) is PongReceived:
            self.stats.pongs += 1
            if result.rtt is not None:
                self.stats.ping_rtt = result.rtt
        elif type(result) is Ended:
            if result.cause is Cause.CLOSE:  # the server closed first
                self.stats.server_closes += 1
            self._end(result)

    # -- sending -------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what the connection has to send."""
        frames_out = self.conn.data_to_send()
        if self.transport is not None:
            for frame in frames_out:
                self.transport.send(frame)

    def _send_text(self, message: bytes) -> None:
        self.conn.send_text(message)
        self._flush()

    # -- liveness --------------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(self.conn.tick_period(), self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        logsafe.GUARD.flush(log)  # the count lines of floods that have ended
        now = self._loop.time()
        cfg = self.config
        if self.polygon.phase is not polygon.Phase.STREAMING and now - self._opened_at > cfg.connect_timeout:
            self.end(Cause.TIMEOUT, f"no subscription confirmed within {cfg.connect_timeout:g} s")
        else:
            action = self.conn.keepalive(now)
            if type(action) is Ended:
                self.stats.ping_timeouts += 1
                self._end(action)
                return
            if type(action) is PingSent:
                self.stats.pings += 1
                self._flush()
        self._schedule_tick()


def _what_sym(raw: bytes) -> tuple[str, str]:
    """What an unroutable object's sym is: a kind (few: the rate-limit key) and its log text."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "unreadable", "without a readable sym"
    if not isinstance(obj, dict) or "sym" not in obj:
        return "no sym", "without sym"
    sym = obj["sym"]
    if sym is None:
        return "sym null", "with sym null"
    kind = {bool: "a boolean", int: "a number", float: "a number", list: "an array",
            dict: "an object"}.get(type(sym), type(sym).__name__)
    return f"sym {kind}", f"with sym {kind} ({logsafe.untrusted(orjson.dumps(sym), 40)}), not a string"
