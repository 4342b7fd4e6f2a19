"""Why a connection ended: the names lb logs and counts (``disconnects`` in the stats).

One ``StrEnum``, so the session, the transport, the stats and the tests share one spelling;
members compare equal to their strings, so the JSON stats keep the same keys.
"""

from __future__ import annotations

import ssl
from enum import StrEnum

from balancer.ktls.errors import KtlsError


class Cause(StrEnum):
    CONNECT = "connect"
    """No TCP connection (resolution or every address refused / timed out)."""
    TIMEOUT = "timeout"
    """A connect phase, the subscription or the keepalive ran out of time."""
    TLS = "tls"
    """The TLS handshake failed or the TLS layer failed after it (alert, bad record), over
    userspace TLS or kernel TLS alike."""
    RESET = "reset"
    """The TCP connection was lost (RST, EPIPE, ...)."""
    EOF = "eof"
    """The server closed the TCP connection without a websocket close."""
    HANDSHAKE = "handshake"
    """The websocket upgrade was refused or malformed."""
    CLOSE = "close"
    """The server closed the websocket (a close frame)."""
    SHUTDOWN = "shutdown"
    """lb closed it: SIGTERM/SIGINT, or the closing handshake lb started."""
    PROTOCOL = "protocol"
    """The server broke the websocket protocol (RFC 6455)."""
    BADJSON = "badjson"
    """A payload that is not a JSON array of objects."""
    STATUS = "status"
    """A Polygon status message lb cannot go on after."""
    UNREAD = "unread"
    """The server stopped reading what lb sends (pongs, close) for too long."""
    MEMORY = "memory"
    """lb could not allocate room for a message the server announced (the connection ends,
    lb goes on)."""
    AUTH_FAILED = "auth_failed"
    """The key was refused (lb exits 3)."""
    EVICTED = "evicted"
    """Another connection with the same key took over."""


def read_failure(exc: OSError) -> Cause:
    """The cause for an error while reading the socket.

    A TLS failure is ``tls`` whichever side decrypts: ``ssl.SSLError`` over userspace TLS,
    ``KtlsError`` (alert, KeyUpdate, rejected record) after a kernel TLS hand-off. Both are
    ``OSError``\\ s, so this must be asked before calling anything else a lost connection.
    """
    if isinstance(exc, ssl.SSLError | KtlsError):
        return Cause.TLS
    return Cause.RESET
