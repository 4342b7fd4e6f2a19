"""A small, scriptable Polygon-like websocket server for lb's byte-level integration tests.

Written from RFC 6455 directly (no websockets library, no balancer imports) so a
test can send any bytes at all: split frames, fragmented messages, protocol
violations, resets. The full-featured feed is the simulator; this is the scalpel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import ssl
import struct
from dataclasses import dataclass, field

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        head = bytes((b0, n))
    elif n < 65536:
        head = bytes((b0, 126)) + struct.pack(">H", n)
    else:
        head = bytes((b0, 127)) + struct.pack(">Q", n)
    return head + payload


def text(payload: bytes) -> bytes:
    return server_frame(0x1, payload)


def status(kind: str, message: str) -> bytes:
    return json.dumps([{"ev": "status", "status": kind, "message": message}],
                      separators=(",", ":")).encode()


@dataclass
class ClientFrame:
    opcode: int
    payload: bytes


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    key: str | None = None
    subscribed: list[str] = field(default_factory=list)
    received: list[ClientFrame] = field(default_factory=list)
    frame_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    answer_pings: bool = True

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_text(self, payload: bytes) -> None:
        await self.send(text(payload))

    async def wait_frame(self, opcode: int, timeout: float = 10.0) -> ClientFrame:
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.received:
                    if frame.opcode == opcode:
                        self.received.remove(frame)
                        return frame
                self.frame_arrived.clear()
                await self.frame_arrived.wait()

    def reset(self) -> None:
        """Abort with a TCP RST."""
        sock = self.writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def wait_closed(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self.closed.wait()


class PolyServer:
    """Accepts lb's connections; the test drives each one through the Connection it gets."""

    def __init__(self, keys: set[str] | None = None, ssl_context: ssl.SSLContext | None = None,
                 send_connected: bool = True) -> None:
        self.keys = keys
        self.ssl_context = ssl_context
        self.send_connected = send_connected
        self.connections: asyncio.Queue[Connection] = asyncio.Queue()
        self.count = 0
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> PolyServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self._server.wait_closed()

    def url(self, host: str = "127.0.0.1") -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://{host}:{self.port}/stocks"

    async def next_connection(self, timeout: float = 15.0) -> Connection:
        async with asyncio.timeout(timeout):
            return await self.connections.get()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = _header(head, b"sec-websocket-key")
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            if self.send_connected:
                writer.write(text(status("connected", "Connected Successfully")))
            await writer.drain()
            self.count += 1
            await self._read_loop(conn)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            conn.closed.set()
            conn.frame_arrived.set()
            writer.transport.abort()

    async def _read_loop(self, conn: Connection) -> None:
        queued = False
        while True:
            frame = await _read_client_frame(conn.reader)
            if frame.opcode == 0x1 and not conn.subscribed:
                message = json.loads(frame.payload)
                if message.get("action") == "auth":
                    conn.key = message.get("params")
                    if self.keys is not None and conn.key not in self.keys:
                        await conn.send_text(status("auth_failed", "authentication failed"))
                        await conn.send(server_frame(0x8, struct.pack(">H", 1008)))
                        return
                    await conn.send_text(status("auth_success", "authenticated"))
                elif message.get("action") == "subscribe":
                    conn.subscribed = message["params"].split(",")
                    for param in conn.subscribed:
                        await conn.send_text(status("success", f"subscribed to: {param}"))
                    if not queued:
                        queued = True
                        await self.connections.put(conn)
                continue
            if frame.opcode == 0x9 and conn.answer_pings:
                await conn.send(server_frame(0xA, frame.payload))
            conn.received.append(frame)
            conn.frame_arrived.set()
            if frame.opcode == 0x8:
                return


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    raise ValueError(f"no {name!r} header")


async def _read_client_frame(reader: asyncio.StreamReader) -> ClientFrame:
    b0, b1 = await reader.readexactly(2)
    if not b1 & 0x80:
        raise ValueError("client frame not masked")
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", await reader.readexactly(8))[0]
    mask = await reader.readexactly(4)
    data = await reader.readexactly(n)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return ClientFrame(b0 & 0x0F, payload)
