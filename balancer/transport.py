"""Connect, socket options, TLS mode, and the two primitives the session uses:
``recv_into`` (non-blocking, into the frame decoder's buffer) and ``send``.

Three ways to carry the bytes:
- ``none``: plain TCP (ws://);
- ``userspace``: Python's ssl (OpenSSL) on a non-blocking socket;
- ``ktls``: the handshake in userspace (balancer.ktls), then the kernel encrypts and
  decrypts; reads land in the caller's buffer as plain text.
The certificate and host name are always verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from balancer.config import DEFAULTS
from balancer.url import WebSocketURL

RCVBUF = 4 * 1024 * 1024
CONNECT_TIMEOUT = DEFAULTS.connect_timeout
# What lb sends is small (upgrade, auth, subscribe, pongs, pings, close): more than this queued
# unsent means the server does not read. The connection then ends instead of growing memory.
MAX_OUTBOX = 1024 * 1024


class ConnectError(Exception):
    """No address of the host could be reached (the message says why for each)."""


class SendFailed(Exception):
    """The connection cannot take what lb sends (reset, broken pipe, TLS EOF, or the server
    does not read: ``cause`` is ``reset`` or ``unread``)."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


class Reader(Protocol):
    def recv_into(self, buffer: memoryview) -> int: ...


@dataclass(slots=True)
class TLSInfo:
    mode: str  # "none" | "userspace" | "ktls"
    version: str = ""
    cipher: str = ""

    def __str__(self) -> str:
        if self.mode == "none":
            return "plain (ws://)"
        return f"{self.mode} {self.version} {self.cipher}".strip()


def client_context(cafile: str | None) -> ssl.SSLContext:
    """Userspace TLS: the system's CAs plus ``cafile``, host name checked, no way to turn it off."""
    context = ssl.create_default_context(cafile=None)
    if cafile:
        context.load_verify_locations(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def wait_ready(loop: asyncio.AbstractEventLoop, fd: int, writable: bool, timeout: float) -> None:
    future = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)
    add(fd, lambda: future.done() or future.set_result(None))
    try:
        await asyncio.wait_for(future, timeout)
    finally:
        remove(fd)


class Transport:
    """A connected stream. ``recv_into`` raises BlockingIOError when nothing is ready and
    returns 0 at EOF; ``send`` queues what the socket does not take at once."""

    def __init__(self, sock: socket.socket, reader: Reader, info: TLSInfo, peer: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.recv_into = reader.recv_into
        # Plain text already read from the socket but not handed out yet (OpenSSL's buffer):
        # the socket will not signal readiness for it.
        self.pending: Callable[[], int] = getattr(sock, "pending", _nothing_pending)
        self.info = info
        self.peer = peer
        self._outbox: deque[memoryview] = deque()
        self._outbox_bytes = 0
        self.failed: SendFailed | None = None
        self.on_failure: Callable[[SendFailed], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    def send(self, data: bytes) -> None:
        """Send or queue ``data``; never raises. A failure (the socket reset, closed, or a
        queue past MAX_OUTBOX) is kept in ``failed`` and reported once through ``on_failure``
        (scheduled, so the caller's own work, such as routing what was received, comes first)."""
        if self.closed or self.failed is not None:
            return
        if not self._outbox:
            try:
                n = self.sock.send(data)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                n = 0
            except OSError as exc:  # ssl.SSLError (SSLEOFError...) is an OSError too
                self._fail(SendFailed("reset", f"connection lost while sending: {describe(exc)}"))
                return
            if n == len(data):
                return
            self._outbox.append(memoryview(data)[n:])
            self._outbox_bytes = len(data) - n
            self._watch_writable()
        else:
            self._outbox.append(memoryview(data))
            self._outbox_bytes += len(data)
            if self._outbox_bytes > MAX_OUTBOX:
                self._fail(SendFailed("unread", f"the server does not read: {self._outbox_bytes} bytes "
                                                f"of ours unsent (limit {MAX_OUTBOX})"))

    def _fail(self, failure: SendFailed) -> None:
        self.failed = failure
        self._outbox.clear()
        self._outbox_bytes = 0
        if self._loop is not None:
            self._loop.remove_writer(self.fd)
        if self.on_failure is not None:
            asyncio.get_running_loop().call_soon(self.on_failure, failure)

    def _watch_writable(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_writer(self.fd, self._drain)

    def _drain(self) -> None:
        try:
            while self._outbox:
                head = self._outbox[0]
                n = self.sock.send(head)
                self._outbox_bytes -= n
                if n < len(head):
                    self._outbox[0] = head[n:]
                    return
                self._outbox.popleft()
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        except OSError as exc:
            self._fail(SendFailed("reset", f"connection lost while sending: {describe(exc)}"))
            return
        if self._loop is not None:
            self._loop.remove_writer(self.fd)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._outbox and self._loop is not None:
            self._loop.remove_writer(self.fd)
        self._outbox.clear()
        self._close_notify()
        with contextlib.suppress(OSError):
            self.sock.close()

    def _close_notify(self) -> None:
        """TLS's own goodbye, best effort (the peer may be gone already)."""
        try:
            if self.info.mode == "ktls":
                from balancer import ktls

                ktls.send_close_notify(self.sock)
            elif isinstance(self.sock, ssl.SSLSocket):
                self.sock.unwrap()  # sends close_notify; the peer's reply is not awaited
        except (OSError, ValueError, ssl.SSLError):
            pass


def describe(exc: BaseException) -> str:
    """An exception's text, or its type's name when the text is empty (TimeoutError())."""
    return str(exc) or type(exc).__name__


def _nothing_pending() -> int:
    return 0


class _PlainReader:
    def __init__(self, sock: socket.socket) -> None:
        self.recv_into = sock.recv_into


class _SSLReader:
    """SSLSocket.recv_into, with 'want read' reported as BlockingIOError."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._recv_into = sock.recv_into

    def recv_into(self, buffer: memoryview) -> int:
        try:
            return self._recv_into(buffer)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError from None


async def _connect_tcp(loop: asyncio.AbstractEventLoop, url: WebSocketURL, timeout: float) -> socket.socket:
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
            timeout,
        )
    except (OSError, TimeoutError) as exc:
        raise ConnectError(f"cannot resolve {url.host!r}: {exc or 'timed out'}") from None
    failures = []
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
            return sock
        except (OSError, TimeoutError) as exc:
            sock.close()
            failures.append(f"{address[0]} port {address[1]}: {exc or 'timed out'}")
        except BaseException:  # cancelled (SIGTERM): no socket left behind
            sock.close()
            raise
    raise ConnectError(f"cannot connect to {url.host}: " + "; ".join(failures))


async def _userspace_tls(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, url: WebSocketURL, cafile: str | None,
    timeout: float,
) -> tuple[ssl.SSLSocket, TLSInfo]:
    tls = client_context(cafile).wrap_socket(
        sock, server_hostname=url.host, do_handshake_on_connect=False
    )
    deadline = loop.time() + timeout
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            await wait_ready(loop, tls.fileno(), False, max(0.0, deadline - loop.time()))
        except ssl.SSLWantWriteError:
            await wait_ready(loop, tls.fileno(), True, max(0.0, deadline - loop.time()))
    cipher = tls.cipher()
    return tls, TLSInfo("userspace", tls.version() or "", cipher[0] if cipher else "")


async def _kernel_tls(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, url: WebSocketURL, cafile: str | None,
    timeout: float,
) -> tuple[Reader, TLSInfo]:
    from balancer import ktls

    handshake = ktls.KtlsHandshake(sock, ktls.make_context(cafile), url.host)
    deadline = loop.time() + timeout
    while (wanted := handshake.step()) is not None:
        await wait_ready(loop, sock.fileno(), wanted == "write", max(0.0, deadline - loop.time()))
    return ktls.KtlsReceiver(sock), TLSInfo("ktls", handshake.version, handshake.cipher)


async def open_transport(
    url: WebSocketURL, tls_mode: str, cafile: str | None, timeout: float = CONNECT_TIMEOUT
) -> Transport:
    """Resolve (on every attempt), connect to each address in turn, and set up TLS."""
    loop = asyncio.get_running_loop()
    sock = await _connect_tcp(loop, url, timeout)
    host, port = sock.getpeername()[:2]
    peer = f"{host}:{port}"
    try:
        if not url.tls:
            return Transport(sock, _PlainReader(sock), TLSInfo("none"), peer)
        if tls_mode == "ktls":
            reader, info = await _kernel_tls(loop, sock, url, cafile, timeout)
            return Transport(sock, reader, info, peer)
        tls_sock, info = await _userspace_tls(loop, sock, url, cafile, timeout)
        transport = Transport(tls_sock, _SSLReader(tls_sock), info, peer)
        return transport
    except BaseException:
        sock.close()
        raise
