"""A misbehaving websocket server for lb's hostile-input tests, and the probes the tests use
to bound lb's memory, CPU and log volume (from /proc).

``HostileServer`` is the scriptable ``PolyServer`` with one more hook: ``upgrade(conn, head)``
runs in place of the normal 101 reply and may misbehave there (hang, refuse with 503, answer
and reset at once...). It returns True to go on with the normal Polygon conversation (it must
then have sent the 101 itself), False to end the connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable

from tests.integration.polyserver import GUID, Connection, PolyServer, _header, status, text

Upgrade = Callable[[Connection, bytes], Awaitable[bool]]


def upgrade_reply(head: bytes) -> bytes:
    """The valid 101 reply to the request ``head``."""
    accept = base64.b64encode(hashlib.sha1(_header(head, b"sec-websocket-key") + GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def connected() -> bytes:
    return text(status("connected", "Connected Successfully"))


class HostileServer(PolyServer):
    def __init__(self, upgrade: Upgrade | None = None, ssl_context: ssl.SSLContext | None = None,
                 **kwargs: object) -> None:
        super().__init__(ssl_context=ssl_context, **kwargs)  # type: ignore[arg-type]
        self.upgrade = upgrade
        self.attempts = 0  # connections accepted, whatever became of them
        self.requests: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.attempts += 1
        if self.upgrade is None:
            await super()._serve(reader, writer)
            return
        conn = Connection(reader, writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            if await self.upgrade(conn, head):
                await conn.send(connected())
                self.count += 1
                await self._read_loop(conn)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            conn.closed.set()
            conn.frame_arrived.set()
            writer.transport.abort()


def raw_fd(conn: Connection) -> int:
    return conn.writer.get_extra_info("socket").fileno()


def cork(conn: Connection, on: bool) -> None:
    """TCP_CORK: what is written while corked leaves in as few segments as possible."""
    conn.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(on))


def rst(conn: Connection) -> None:
    conn.reset()


async def acked(conn: Connection, timeout: float = 5.0) -> None:
    """Until the peer's kernel has acknowledged every byte written (SIOCOUTQ 0)."""
    import fcntl
    import termios

    await conn.writer.drain()
    sock = conn.writer.get_extra_info("socket")
    async with asyncio.timeout(timeout):
        while True:
            buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
            if struct.unpack("i", buf)[0] == 0:
                return
            await asyncio.sleep(0.005)


# -- probes --------------------------------------------------------------------------------------

def rss(pid: int) -> int:
    """Resident set size in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def cpu(pid: int) -> float:
    """User + system CPU seconds used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """RSS, CPU and log growth of an lb process over one fault."""

    def __init__(self, pid: int, log_path: str) -> None:
        self.pid = pid
        self.log_path = log_path
        self.rss0 = rss(pid)
        self.cpu0 = cpu(pid)
        self.log0 = self._log_size()
        self.peak = self.rss0
        self.t0 = asyncio.get_running_loop().time()

    def _log_size(self) -> int:
        with contextlib.suppress(FileNotFoundError):
            return os.path.getsize(self.log_path)
        return 0

    def sample(self) -> None:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            self.peak = max(self.peak, rss(self.pid))

    def report(self) -> dict[str, float]:
        self.sample()
        wall = asyncio.get_running_loop().time() - self.t0
        return {"rss_growth_mb": (self.peak - self.rss0) / 2**20, "cpu_s": cpu(self.pid) - self.cpu0,
                "wall_s": wall, "log_bytes": self._log_size() - self.log0}

    async def sample_for(self, seconds: float, interval: float = 0.05) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            self.sample()
            await asyncio.sleep(interval)
