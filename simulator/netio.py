"""What the kernel and asyncio still hold of what we wrote, and abortive closes.

"Sent whole" in the ledger means the peer's kernel acknowledged every byte: nothing left
in asyncio's buffers (for TLS both the SSL layer's and the socket transport's under it)
and nothing in the socket's send queue (``SIOCOUTQ`` on Linux counts bytes not yet
acknowledged by the peer).
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
from typing import Any

SIOCOUTQ = 0x5411  # linux/sockios.h: TIOCOUTQ, for TCP the unacknowledged bytes
_INT = struct.Struct("i")


def no_delay(sock: Any) -> None:
    """TCP_NODELAY: each frame goes out when it is written. asyncio sets it only on sockets
    whose proto is IPPROTO_TCP, and a socket from socket.create_server() (and what it
    accepts) has proto 0: without this, Nagle held the feed's small frames until ~64 KiB
    were pending (one segment every ~11 ms at 50k trades/s)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (a test's socketpair) or already closed


def send_queue(sock: Any) -> int | None:
    """Bytes in the socket's send queue not yet acknowledged by the peer; None if closed."""
    try:
        fd = sock.fileno()
        if fd < 0:
            return None
        return _INT.unpack(fcntl.ioctl(fd, SIOCOUTQ, b"\0" * 4))[0]
    except OSError:
        return None


def _socket_transport(transport: asyncio.BaseTransport) -> asyncio.BaseTransport | None:
    # asyncio has no public way to reach the transport under an SSL transport, and its
    # buffer holds ciphertext we wrote but the kernel has not taken yet.
    protocol = getattr(transport, "_ssl_protocol", None)
    return getattr(protocol, "_transport", None) if protocol is not None else None


def buffered(transport: asyncio.WriteTransport) -> int:
    """Bytes written to ``transport`` that asyncio has not handed to the kernel yet."""
    total = transport.get_write_buffer_size()
    inner = _socket_transport(transport)
    if inner is not None and not inner.is_closing():
        total += inner.get_write_buffer_size()  # type: ignore[attr-defined]
    return total


def unconfirmed(transport: asyncio.WriteTransport, sock: Any) -> int | None:
    """Bytes not yet acknowledged by the peer (an upper bound under TLS); None if closed."""
    queued = send_queue(sock)
    if queued is None:
        return None
    return buffered(transport) + queued


def abort_with_reset(transport: asyncio.BaseTransport, sock: Any) -> None:
    """Close so that the peer gets a TCP RST: SO_LINGER on with a zero timeout, then close."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    inner = _socket_transport(transport)
    (inner or transport).abort()  # type: ignore[attr-defined]
    if inner is not None:
        transport.abort()  # type: ignore[attr-defined]
