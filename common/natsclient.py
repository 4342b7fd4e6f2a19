"""A lean NATS client on asyncio: the thin I/O around common/natsproto.py.

Why not nats-py (which the project used before): lb-bridge and lb-remote move thousands of
JetStream messages a second, and nats-py spends tens of microseconds of Python on each (a
`Msg` and a queue hop to a task per delivery, a future and a `wait_for` per request, a
flusher task per write). Here a delivery is a plain callback made while the read is parsed,
and everything written in one turn of the event loop goes out in one write: the bridge's
publishes of every partition leave together, which also lets nats-server handle them in one
pass (measured: its CPU for 4,000 publishes a second fell from ~80% to ~47% of a core).

What it does: connects to one of the servers (nats:// or tls://, the ones INFO's
`connect_urls` adds), TLS verified with a CA file or the system store, nkey or JWT (`.creds`)
authentication by signing the server's nonce; keeps the connection alive with PING/PONG;
reconnects forever with a pause between rounds, sending the subscriptions again; request and
reply through one shared inbox. A publish while disconnected raises `NotConnected`: the
callers (the bridge's retry, lb-remote's rewind) decide what to do with it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import itertools
import logging
import os
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from common import natsproto
from common.natsproto import Err, Info, Msg, Ok, Ping, Pong, ProtocolError
from common.version import VERSION

_log = logging.getLogger("nats")

MsgHandler = Callable[[Msg], None]
HEALTHY = 1.0  # a connection that lasts this long was not a failure
ERROR_LOG_EVERY = 10.0  # a server's -ERR lines are logged at most this often


class NotConnected(ConnectionError):
    """No connection to a server right now (the client is reconnecting)."""


class NoResponders(ConnectionError):
    """A request nobody listens to (the server's 503 status)."""


class AuthError(ConnectionError):
    """The server refused our credentials."""


@dataclass(frozen=True)
class Server:
    scheme: str  # "nats" or "tls"
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Server:
        if "://" not in url:
            url = f"nats://{url}"
        parts = urlsplit(url)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ValueError(f"bad NATS URL {url!r}")
        return cls(parts.scheme, parts.hostname, parts.port or 4222)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def read_creds(path: str) -> tuple[str, bytes]:
    """(user JWT, nkey seed) from a NATS ``.creds`` file (the two armoured blocks)."""
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    jwt = seed = b""
    for i, line in enumerate(lines[:-1]):
        if line.startswith(b"-----BEGIN") and b"JWT" in line:
            jwt = lines[i + 1].strip()
        elif line.startswith(b"-----BEGIN") and b"SEED" in line:
            seed = lines[i + 1].strip()
    if not jwt or not seed:
        raise ValueError(f"{path}: not a NATS credentials file (a user JWT and an nkey seed)")
    return jwt.decode("ascii", "replace"), seed


def read_seed(path: str) -> bytes:
    with open(path, "rb") as f:
        seed = f.read().strip()
    if not seed.startswith(b"S"):
        raise ValueError(f"{path}: not an nkey seed")
    return seed


def sign_nonce(seed: bytes, nonce: str) -> tuple[str, str]:
    """(signature, public key) of the server's nonce with an nkey seed (ed25519)."""
    import nkeys

    pair = nkeys.from_seed(bytearray(seed))
    try:
        signature = base64.b64encode(pair.sign(nonce.encode())).decode()
        public = pair.public_key.decode()
    finally:
        pair.wipe()
    return signature, public


def new_inbox() -> str:
    return "_INBOX." + base64.b32encode(os.urandom(15)).decode().rstrip("=")


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: parses what arrives and hands it to the client."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = natsproto.Parser()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.info: asyncio.Future[Info] = loop.create_future()
        self.pong: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.ready = False  # past the handshake: deliveries go to the client
        self.reason: BaseException | None = None  # why we dropped it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            self.abort(exc)
            return
        client = self.client
        for event in events:
            if type(event) is Msg:
                if self.ready:
                    client._deliver(event)
            elif isinstance(event, Ping):
                self.write(natsproto.PONG_COMMAND)
            elif isinstance(event, Pong):
                if not self.pong.done():
                    self.pong.set_result(None)
                else:
                    client._pong()
            elif isinstance(event, Info):
                if not self.info.done():
                    self.info.set_result(event)
                else:
                    client._info(event)
            elif isinstance(event, Err):
                if not self.pong.done():
                    text = event.lower()
                    refused = "authoriz" in text or "authentic" in text
                    error = AuthError(str(event)) if refused else ConnectionError(str(event))
                    self.pong.set_exception(error)
                else:
                    client._server_error(str(event))
            elif isinstance(event, Ok):
                pass
        if self.parser.error is not None:
            self.abort(self.parser.error)

    def write(self, data: bytes | bytearray) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self, exc: BaseException | None = None) -> None:
        if exc is not None and self.reason is None:
            self.reason = exc
        if self.transport is not None:
            self.transport.abort()
        self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.reason or exc
        if isinstance(reason, ProtocolError):
            reason = ConnectionError(f"protocol error: {str(reason)[:200]}")
        for future in (self.info, self.pong):
            if not future.done():
                future.set_exception(reason or ConnectionError("connection closed"))
                future.exception()  # retrieved: no "never retrieved" warning
        if not self.lost.done():
            self.lost.set_result(reason)


class Client:
    """A connection to NATS that comes back by itself. Construct, then ``await connect()``."""

    def __init__(self, servers: list[str], *, name: str = "", tls: ssl.SSLContext | None = None,
                 creds: str | None = None, nkey: str | None = None,
                 on_disconnect: Callable[[], None] | None = None,
                 on_reconnect: Callable[[], None] | None = None,
                 on_handler_error: Callable[[BaseException], None] | None = None,
                 ping_interval: float = 5.0, max_pings_out: int = 2, connect_timeout: float = 2.0,
                 reconnect_wait: float = 0.25, log: logging.Logger = _log) -> None:
        if not servers:
            raise ValueError("no NATS server given")
        self.servers = [Server.parse(s) for s in servers]
        self.name = name
        self.tls = tls
        self.tls_wanted = tls is not None or any(s.scheme == "tls" for s in self.servers)
        self.creds = creds
        self.nkey = nkey
        self.on_disconnect = on_disconnect
        self.on_reconnect = on_reconnect
        self.on_handler_error = on_handler_error
        self.ping_interval = ping_interval
        self.max_pings_out = max_pings_out
        self.connect_timeout = connect_timeout
        self.reconnect_wait = reconnect_wait
        self.log = log
        self.info: dict[str, Any] = {}
        self.max_payload = 1 << 20
        self.connected_url: Server | None = None
        self.reconnects = 0
        self._conn: _Connection | None = None
        self._subs: dict[int, tuple[bytes, MsgHandler]] = {}
        self._sids = itertools.count(1)
        self._out = bytearray()
        self._flush_pending = False
        self._closed = False
        self._connected = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._pings_out = 0  # keepalive PINGs not answered yet
        # what each PING in flight is for, in order (PONGs come in the same order): a flush()
        # waiting, or None for a keepalive
        self._pings: collections.deque[asyncio.Future[None] | None] = collections.deque()
        self._resp_prefix = ""
        self._resp_tokens = itertools.count(1)
        self._requests: dict[str, asyncio.Future[Msg]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._errors_logged_at = -ERROR_LOG_EVERY
        self._errors_unlogged = 0

    # -- state ------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def connect(self) -> Client:
        """Connects (waiting out an unreachable server, as a reconnect does); raises AuthError
        when the first server that answers refuses our credentials."""
        self._loop = loop = asyncio.get_running_loop()
        first: asyncio.Future[None] = loop.create_future()
        self._runner = asyncio.ensure_future(self._run(first))
        try:
            await first
        except BaseException:
            await self.close()
            raise
        return self

    # -- sending ----------------------------------------------------------------------------

    def _write(self, data: bytes | bytearray) -> None:
        self._out += data
        if not self._flush_pending:
            self._flush_pending = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._flush)

    def _flush(self) -> None:
        """Everything written in this turn of the loop, in one write."""
        self._flush_pending = False
        conn = self._conn
        if not self._out or conn is None or not self.is_connected:
            return
        out, self._out = self._out, bytearray()
        conn.write(out)

    def publish(self, subject: str | bytes, payload: bytes | bytearray | memoryview = b"", *,
                reply: str | bytes = b"", headers: bytes | dict[str, str] | None = None) -> None:
        """Queues a publish for this turn's write. Raises NotConnected while reconnecting."""
        if not self.is_connected:
            raise NotConnected("not connected to NATS")
        subj = natsproto.check_subject(subject)
        rep = natsproto.check_subject(reply) if reply else b""
        size = len(payload)
        if headers:
            hdr = headers if isinstance(headers, bytes) else natsproto.encode_headers(headers)
            if len(hdr) + size > self.max_payload:
                raise ValueError(f"a {len(hdr) + size}-byte message is over the server's max_payload "
                                 f"({self.max_payload})")
            self._write(natsproto.hpub_header(subj, rep, len(hdr), size))
            self._out += hdr
        else:
            if size > self.max_payload:
                raise ValueError(f"a {size}-byte message is over the server's max_payload "
                                 f"({self.max_payload})")
            self._write(natsproto.pub_header(subj, rep, size))
        self._out += payload
        self._out += natsproto.CRLF

    def subscribe(self, subject: str, handler: MsgHandler) -> int:
        """``handler(msg)`` for every message on ``subject``, called while the read is parsed
        (it must not block). Subscriptions are made again after a reconnect."""
        subj = natsproto.check_subject(subject)
        sid = next(self._sids)
        self._subs[sid] = (subj, handler)
        if self.is_connected:
            self._write(natsproto.sub_command(subj, sid))
        return sid

    def unsubscribe(self, sid: int) -> None:
        if self._subs.pop(sid, None) is not None and self.is_connected:
            self._write(natsproto.unsub_command(sid))

    async def flush(self, timeout: float = 2.0) -> None:
        """Returns once the server has read everything sent so far (a PING answered)."""
        if not self.is_connected:
            raise NotConnected("not connected to NATS")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings.append(future)
        self._write(natsproto.PING_COMMAND)
        await asyncio.wait_for(future, timeout)

    def new_inbox(self) -> str:
        return new_inbox()

    async def request(self, subject: str, payload: bytes = b"", timeout: float = 5.0) -> Msg:
        """Publishes with a reply subject of our shared inbox and waits for the answer.
        Raises TimeoutError, NoResponders (nobody listens), NotConnected."""
        if not self._resp_prefix:
            self._resp_prefix = new_inbox() + "."
            self.subscribe(self._resp_prefix + "*", self._on_response)
        token = str(next(self._resp_tokens))
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._requests[token] = future
        try:
            self.publish(subject, payload, reply=self._resp_prefix + token)
            msg = await asyncio.wait_for(future, timeout)
        finally:
            self._requests.pop(token, None)
        if msg.status == "503":
            raise NoResponders(f"no responders on {subject}")
        return msg

    def _on_response(self, msg: Msg) -> None:
        future = self._requests.pop(msg.subject[len(self._resp_prefix):], None)
        if future is not None and not future.done():
            future.set_result(msg)

    # -- receiving (called by the connection) -----------------------------------------------

    def _deliver(self, msg: Msg) -> None:
        sub = self._subs.get(msg.sid)
        if sub is None:
            return
        try:
            sub[1](msg)
        except Exception as exc:  # a handler's bug must not cost the connection (or loop on it)
            if self.on_handler_error is not None:
                self.on_handler_error(exc)
            else:
                self.log.error("a NATS message handler failed on %s: %r", msg.subject[:80], exc, exc_info=exc)

    def _pong(self) -> None:
        waiter = self._pings.popleft() if self._pings else None
        if waiter is None:
            self._pings_out = 0
        elif not waiter.done():
            waiter.set_result(None)

    def _server_error(self, text: str) -> None:
        """A -ERR after the handshake (a permissions violation, say: the server keeps the
        connection): the first logged, then at most a line every ERROR_LOG_EVERY seconds with
        how many came meanwhile; a server repeating it cannot flood the log."""
        now = time.monotonic()
        if now - self._errors_logged_at < ERROR_LOG_EVERY:
            self._errors_unlogged += 1
            return
        more = f" ({self._errors_unlogged} more since the last one logged)" if self._errors_unlogged else ""
        self.log.warning("NATS: server error: %s%s", text[:200], more)
        self._errors_logged_at = now
        self._errors_unlogged = 0

    def _info(self, info: Info) -> None:
        """A server's INFO, at the handshake or later: what it says, and the cluster's other
        servers to reconnect to."""
        self.info.update(info)
        for url in info.get("connect_urls") or ():
            try:
                server = Server.parse(f"{'tls' if self.tls_wanted else 'nats'}://{url}")
            except ValueError:
                continue
            if server not in self.servers:
                self.servers.append(server)

    # -- the connection's life --------------------------------------------------------------

    async def _open(self, server: Server) -> _Connection:
        loop = asyncio.get_running_loop()
        transport, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(self), server.host, server.port), self.connect_timeout)
        try:
            info = await asyncio.wait_for(conn.info, self.connect_timeout)
            self.max_payload = int(info.get("max_payload") or self.max_payload)
            conn.parser.max_payload = self.max_payload + 64 * 1024  # the header line's slack
            if self.tls_wanted or info.get("tls_required"):
                context = self.tls or ssl.create_default_context()
                tls_transport = await loop.start_tls(transport, conn, context, server_hostname=server.host,
                                                     ssl_handshake_timeout=self.connect_timeout)
                if tls_transport is None:
                    raise ConnectionError("TLS handshake did not complete")
                conn.transport = tls_transport  # type: ignore[assignment]
            conn.write(natsproto.connect_command(self._connect_options(info)) + natsproto.PING_COMMAND)
            await asyncio.wait_for(conn.pong, self.connect_timeout)
        except BaseException:
            conn.abort()
            raise
        self.info = {}  # this server's, not the last one's
        self._info(info)
        return conn

    def _connect_options(self, info: Info) -> dict[str, Any]:
        options: dict[str, Any] = {"verbose": False, "pedantic": False, "lang": "python3-trade-balancer",
                                   "version": VERSION, "protocol": 1, "headers": True, "no_responders": True,
                                   "tls_required": self.tls_wanted}
        if self.name:
            options["name"] = self.name
        nonce = info.get("nonce")
        if self.creds:
            jwt, seed = read_creds(self.creds)
            options["jwt"] = jwt
            if nonce:
                options["sig"] = sign_nonce(seed, nonce)[0]
        elif self.nkey:
            seed = read_seed(self.nkey)
            signature, public = sign_nonce(seed, nonce or "")
            options["nkey"] = public
            if nonce:
                options["sig"] = signature
        return options

    async def _run(self, first: asyncio.Future[None]) -> None:
        failures = 0  # in a row: attempts that failed, and connections lost within HEALTHY
        quick = 0  # in a row: connections a server dropped within HEALTHY
        start = random.randrange(len(self.servers))
        while not self._closed:
            conn = None
            for i in range(len(self.servers)):
                server = self.servers[(start + i) % len(self.servers)]
                try:
                    conn = await self._open(server)
                    self.connected_url = server
                    start = (start + i) % len(self.servers)
                    break
                except asyncio.CancelledError:
                    raise
                except AuthError as exc:
                    if not first.done():
                        first.set_exception(exc)
                        return
                    failures += 1
                    self._log_failure(failures, f"cannot connect to NATS at {server}", exc)
                except (OSError, TimeoutError, ssl.SSLError, ValueError) as exc:
                    failures += 1
                    self._log_failure(failures, f"cannot connect to NATS at {server}", exc)
            if conn is None:
                await asyncio.sleep(self._pause(failures))
                continue
            self._conn = conn
            conn.ready = True
            self._pings_out = 0
            self._out = bytearray()
            self._flush_pending = False
            self._connected.set()
            connected_at = time.monotonic()
            for sid, (subject, _) in self._subs.items():
                self._write(natsproto.sub_command(subject, sid))
            if not first.done():
                first.set_result(None)
            else:
                self.reconnects += 1
                if quick <= 1 or quick % 20 == 0:  # not for each turn of a server that drops us
                    self.log.warning("reconnected to NATS (%s)", self.connected_url)
                if self.on_reconnect is not None:
                    self.on_reconnect()
            pinger = asyncio.ensure_future(self._ping(conn))
            try:
                reason = await asyncio.shield(conn.lost)
            finally:
                pinger.cancel()
                self._connected.clear()
                self._conn = None
                self._fail_waiters()
            if self._closed:
                return
            what = f"disconnected from NATS ({self.connected_url}); reconnecting, nothing is dropped"
            if time.monotonic() - connected_at < HEALTHY:
                failures += 1  # a server that drops us at once: paced and logged as a failure
                quick += 1
                self._log_failure(failures, what, reason)
            else:
                failures = quick = 0
                self._log_failure(1, what, reason)
            if self.on_disconnect is not None:
                self.on_disconnect()
            await asyncio.sleep(self._pause(failures))

    def _pause(self, failures: int) -> float:
        """The wait before the next round of attempts: longer once failures keep coming."""
        return self.reconnect_wait if failures < 10 else min(2.0, self.reconnect_wait * 8)

    def _log_failure(self, failures: int, what: str, exc: BaseException | None) -> None:
        """The first of a run of failures and every 20th: a server that fails every time
        writes a few lines a minute, not one per attempt."""
        if failures == 1 or failures % 20 == 0:
            detail = (str(exc)[:200] or type(exc).__name__) if exc is not None else "closed"
            self.log.warning("%s (%s)%s", what, detail, f" ({failures} in a row)" if failures > 1 else "")

    def _fail_waiters(self) -> None:
        for future in [*self._pings, *self._requests.values()]:
            if future is not None and not future.done():
                future.set_exception(NotConnected("disconnected from NATS"))
        self._pings.clear()
        self._requests.clear()

    async def _ping(self, conn: _Connection) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            if self._pings_out >= self.max_pings_out:
                self.log.warning("NATS server %s stopped answering pings; reconnecting", self.connected_url)
                conn.abort()
                return
            self._pings_out += 1
            self._pings.append(None)
            self._write(natsproto.PING_COMMAND)

    async def close(self) -> None:
        """Sends what is queued and closes; no reconnect after this."""
        self._closed = True
        conn = self._conn
        if conn is not None:
            self._flush()
            if conn.transport is not None:
                conn.transport.close()
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except (asyncio.CancelledError, Exception):
                pass
            self._runner = None
        self._connected.clear()
        self._fail_waiters()
