"""RFC 6455 opening handshake, client side: the upgrade request and a strict check of the reply.

Pure: bytes in, bytes or a verdict out.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
import time
from dataclasses import dataclass, field

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_RESPONSE_HEAD = 16 * 1024


class HandshakeError(Exception):
    """The server's reply is not a valid websocket upgrade. ``retry_after``: the seconds a 429 or
    503 reply's Retry-After asked for (None when it gave none, or an unreadable one)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After value: delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def new_key() -> str:
    """A random 16-byte nonce, base64: the Sec-WebSocket-Key."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_for(key: str) -> str:
    """The Sec-WebSocket-Accept value a server must send back for ``key``."""
    digest = hashlib.sha1(key.encode("ascii") + GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def build_request(host_header: str, resource: str, key: str, user_agent: str) -> bytes:
    lines = [
        f"GET {resource} HTTP/1.1",
        f"Host: {host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"User-Agent: {user_agent}",
        "",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


@dataclass(slots=True)
class Response:
    status_line: str
    status: int
    headers: dict[str, list[str]] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return ", ".join(values) if values else None


def parse_response_head(data: bytes | bytearray) -> tuple[Response, int] | None:
    """Parse the response head if complete: (response, bytes consumed), else None.

    Bytes after the head belong to the websocket stream and are left to the caller.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_RESPONSE_HEAD:
            raise HandshakeError(f"response head longer than {MAX_RESPONSE_HEAD} bytes")
        return None
    head = bytes(data[:end]).decode("iso-8859-1")
    status_line, *header_lines = head.split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HandshakeError(f"not an HTTP response: {status_line[:200]!r}")
    response = Response(status_line=status_line, status=int(parts[1]))
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(f"malformed header line {line[:200]!r}")
        response.headers.setdefault(name.lower(), []).append(value.strip())
    return response, end + 4


def check_response(response: Response, key: str) -> None:
    """Raise HandshakeError naming what is wrong unless this is a valid 101 upgrade."""
    if response.status != 101:
        wait = retry_after(response.header("retry-after")) if response.status in (429, 503) else None
        raise HandshakeError(f"server refused the upgrade: {response.status_line!r}", wait)
    upgrade = response.header("upgrade")
    if upgrade is None or upgrade.lower() != "websocket":
        raise HandshakeError(f"bad Upgrade header {upgrade!r} in {response.status_line!r}")
    connection = response.header("connection") or ""
    if "upgrade" not in [token.strip().lower() for token in connection.split(",")]:
        raise HandshakeError(f"bad Connection header {connection!r} in {response.status_line!r}")
    accept = response.header("sec-websocket-accept")
    if accept != accept_for(key):
        raise HandshakeError(f"wrong Sec-WebSocket-Accept {accept!r} in {response.status_line!r}")
    # We offered neither extensions nor subprotocols: a server that picks one breaks the RFC.
    for name in ("sec-websocket-extensions", "sec-websocket-protocol"):
        if response.header(name):
            raise HandshakeError(f"server chose {name} {response.header(name)!r} we did not offer")
