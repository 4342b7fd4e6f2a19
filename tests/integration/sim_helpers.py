"""A websocket client for the simulator's integration tests, and what it received.

It keeps every trade's payload bytes exactly as they arrived (each frame split at the
``},{`` between objects and checked against a real JSON parse of the frame), so a test can
compare per-symbol counts, ``q`` ranges and CRC-32 chains with the simulator's ledger,
computed here independently of the simulator's code.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from harness.wait import async_wait_for as wait_until  # noqa: F401 - the name these tests use

T = TypeVar("T")


def client_ssl(cafile: str | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=cafile) if cafile else None


def _is_json(payload: bytes) -> bool:
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return True


def split_trades(payload: bytes) -> list[bytes]:
    """A frame's trade objects as raw bytes, verified against a JSON parse of the frame."""
    events = orjson.loads(payload)
    assert isinstance(events, list), f"frame is not a JSON array: {payload[:80]!r}"
    if not events:
        return []
    assert payload.startswith(b"[{") and payload.endswith(b"}]"), payload[:80]
    pieces = [b"{" + p + b"}" for p in payload[2:-2].split(b"},{")]
    assert [orjson.loads(p) for p in pieces] == events, "frame does not split into its objects"
    return pieces


@dataclass
class SymbolStats:
    count: int = 0
    first_q: int | None = None
    last_q: int | None = None
    crc32: int = 0
    qs: list[int] = field(default_factory=list)

    def add(self, q: int, payload: bytes) -> None:
        self.count += 1
        if self.first_q is None:
            self.first_q = q
        self.last_q = q
        self.crc32 = zlib.crc32(payload, self.crc32)
        self.qs.append(q)

    def as_ledger(self) -> dict[str, int | None]:
        return {"count": self.count, "first_q": self.first_q, "last_q": self.last_q,
                "crc32": self.crc32}


@dataclass
class Received:
    statuses: list[dict[str, Any]] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    trades: list[bytes] = field(default_factory=list)
    symbols: dict[str, SymbolStats] = field(default_factory=dict)
    close_code: int | None = None
    close_reason: str | None = None
    error: BaseException | None = None
    bad_payload: bytes | None = None

    def add_frame(self, payload: bytes) -> None:
        events = orjson.loads(payload)
        if events and all(isinstance(e, dict) and e.get("ev") == "status" for e in events):
            self.statuses.extend(events)
            return
        self.frames.append(payload)
        for piece in split_trades(payload):
            trade = orjson.loads(piece)
            self.trades.append(piece)
            self.symbols.setdefault(trade["sym"], SymbolStats()).add(trade["q"], piece)

    def ledger_view(self) -> dict[str, dict[str, int | None]]:
        return {s: v.as_ledger() for s, v in sorted(self.symbols.items())}


class FeedClient:
    """connect, auth, subscribe; then ``collect`` frames into a ``Received``."""

    def __init__(self, url: str, cafile: str | None, key: str = "test-key") -> None:
        self.url = url
        self.cafile = cafile
        self.key = key
        self.ws: ClientConnection | None = None
        self.received = Received()

    async def open(self, **kwargs: Any) -> FeedClient:
        # max_queue=None: a test that stops reading must not pause the socket, or a close
        # over TLS would wait for its timeout (the close frame sits behind unread data)
        options: dict[str, Any] = {"max_size": None, "max_queue": None, "compression": None,
                                   "open_timeout": 10, "close_timeout": 5} | kwargs
        self.ws = await connect(self.url, ssl=client_ssl(self.cafile), **options)
        return self

    async def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next status message (a one-element array), as a dict."""
        assert self.ws is not None
        message = await asyncio.wait_for(self.ws.recv(), timeout)
        events = json.loads(message)
        assert len(events) == 1 and events[0]["ev"] == "status", message
        self.received.statuses.append(events[0])
        return events[0]

    async def send(self, action: str, params: str) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps({"action": action, "params": params}))

    async def login(self, subscribe: str | None = "T.*") -> None:
        assert (await self.status())["status"] == "connected"
        await self.send("auth", self.key)
        assert (await self.status())["status"] == "auth_success"
        if subscribe:
            await self.send("subscribe", subscribe)
            for topic in subscribe.split(","):
                reply = await self.status()
                assert reply == {"ev": "status", "status": "success",
                                 "message": f"subscribed to: {topic}"}, reply

    async def collect(self, until: Callable[[Received], bool] | None = None,
                      timeout: float = 20.0) -> Received:
        """Frames until ``until`` holds or the server closes; errors are kept, not raised."""
        assert self.ws is not None
        deadline = time.monotonic() + timeout
        try:
            while until is None or not until(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"collect: condition not met within {timeout:g}s")
                message = await asyncio.wait_for(self.ws.recv(), left)
                payload = message if isinstance(message, bytes) else message.encode()
                if not payload.startswith(b"[") or not _is_json(payload):
                    self.received.bad_payload = payload  # as a consumer would: drop the line
                    await self.ws.close(1007, "payload is not a JSON array")
                    return self.received
                self.received.add_frame(payload)
        except ConnectionClosed as exc:
            self.received.close_code = exc.rcvd.code if exc.rcvd else None
            self.received.close_reason = exc.rcvd.reason if exc.rcvd else None
            self.received.error = exc
        return self.received

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


async def stop_while_collecting(sim: Any, client: FeedClient) -> Received:
    """SIGTERM the simulator while the client reads on: the server confirms every frame
    before its close, so the client ends up with exactly what the ledger says was sent."""
    reading = asyncio.ensure_future(client.collect(timeout=30))
    code = await asyncio.to_thread(sim.stop)
    received = await bounded(reading, 30, "the server's close")
    assert code == 0 and received.close_code == 1001, (code, received.close_code)
    return received


async def bounded(awaitable: Awaitable[T], timeout: float, what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {timeout:g}s") from None


def ledger_connection(ledger: dict[str, Any], connection_id: int) -> dict[str, Any]:
    return next(c for c in ledger["connections"] if c["id"] == connection_id)


def assert_prefix_of_received(ledger_symbols: dict[str, Any], received: Received) -> int:
    """Each symbol's trades sent whole are the first ones the client received, byte for byte.

    Returns how many trades the client received beyond those (frames the server could not
    confirm: in flight when the connection ended)."""
    extra = 0
    for symbol, entry in ledger_symbols.items():
        got = received.symbols.get(symbol)
        assert got is not None and got.count >= entry["count"], (symbol, entry)
        assert got.qs[0] == entry["first_q"], (symbol, entry, got.qs[:3])
        assert got.qs[entry["count"] - 1] == entry["last_q"], (symbol, entry)
        crc = 0
        for payload in _payloads_of(received, symbol)[: entry["count"]]:
            crc = zlib.crc32(payload, crc)
        assert crc == entry["crc32"], (symbol, "crc32 differs")
        extra += got.count - entry["count"]
    extra += sum(s.count for name, s in received.symbols.items() if name not in ledger_symbols)
    return extra


def _payloads_of(received: Received, symbol: str) -> list[bytes]:
    needle = b'"sym":"' + symbol.encode() + b'"'
    return [p for p in received.trades if needle in p[:40]]


class RawClient:
    """A websocket client on a bare socket, to see what a library would hide: how the TLS
    stream ended (close_notify, a bare TCP close, a reset), a frame cut short, a missing pong."""

    def __init__(self, url: str, cafile: str | None, key: str = "test-key") -> None:
        parts = urlsplit(url)
        raw = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.tls = parts.scheme == "wss"
        if self.tls:
            context = ssl.create_default_context(cafile=cafile)
            self.sock: socket.socket = context.wrap_socket(
                raw, server_hostname=parts.hostname, suppress_ragged_eofs=False)
        else:
            self.sock = raw
        self.key = key
        self.data = bytearray()
        upgrade = (f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(upgrade.encode())
        while b"\r\n\r\n" not in self.data:
            chunk = self.sock.recv(4096)
            assert chunk, "closed during the upgrade"
            self.data += chunk
        head, _, rest = bytes(self.data).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.data = bytearray(rest)

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def send_json(self, message: dict[str, Any]) -> None:
        self.send_frame(0x1, json.dumps(message).encode())

    def login(self, subscribe: str = "T.*") -> None:
        self.send_json({"action": "auth", "params": self.key})
        self.send_json({"action": "subscribe", "params": subscribe})
        self.read_until(lambda frames: any(b"subscribed to" in p for _, p in frames), 10)

    def frames(self) -> tuple[list[tuple[int, bytes]], int, int]:
        """Complete frames so far, and of the incomplete last one: (bytes held, bytes needed)."""
        frames, data, i = [], bytes(self.data), 0
        while True:
            header = parse_frame_header(data, i)
            if header is None:
                return frames, len(data) - i, -1
            opcode, start, length = header
            if start + length > len(data):
                return frames, len(data) - start, length
            frames.append((opcode, data[start:start + length]))
            i = start + length

    def read_until(self, done: Callable[[list[tuple[int, bytes]]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.frames()[0]):
            assert time.monotonic() < deadline, "read_until: timed out"
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(1 << 16)
            assert chunk, "closed while waiting"
            self.data += chunk

    def read_to_end(self, timeout: float) -> str:
        """Read until the stream ends; returns how: ``close_notify`` (a clean TLS close),
        ``eof`` (TCP closed with no TLS close), ``reset``, or ``open`` (still open at timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                return "open"
            except ssl.SSLEOFError:
                return "eof"
            except ConnectionResetError:
                return "reset"
            if not chunk:
                return "close_notify" if self.tls else "eof"
            self.data += chunk
        return "open"

    def close(self) -> None:
        self.sock.close()


def parse_frame_header(data: bytes, i: int) -> tuple[int, int, int] | None:
    """(opcode, payload start, payload length) of a server frame at ``data[i:]``, if whole."""
    if len(data) - i < 2:
        return None
    length, start = data[i + 1] & 0x7F, i + 2
    if length == 126:
        if len(data) - i < 4:
            return None
        length, start = int.from_bytes(data[i + 2:i + 4], "big"), i + 4
    elif length == 127:
        if len(data) - i < 10:
            return None
        length, start = int.from_bytes(data[i + 2:i + 10], "big"), i + 10
    return data[i] & 0x0F, start, length
