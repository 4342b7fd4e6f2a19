"""Polygon/Massive websocket session: auth and subscribe messages, status events, phases.

Pure: status events in, messages to send (or a verdict) out.
"""

from __future__ import annotations

import enum
import json
from typing import Any

from balancer.logsafe import untrusted


class AuthFailed(Exception):
    """The server rejected the API key."""


class Evicted(Exception):
    """Another connection took this key's connection slot (``max_connections``)."""


class SessionError(Exception):
    """The server ended the session for a reason other than the key."""


class Phase(enum.Enum):
    AUTHENTICATING = "authenticating"
    SUBSCRIBING = "subscribing"
    STREAMING = "streaming"


def auth_message(key: str) -> bytes:
    return json.dumps({"action": "auth", "params": key}, separators=(",", ":")).encode()


def subscribe_message(params: str) -> bytes:
    return json.dumps({"action": "subscribe", "params": params}, separators=(",", ":")).encode()


def describe(event: dict[str, Any]) -> str:
    """A status event for a log line: the server's text escaped and cut (logsafe.untrusted)."""
    return f"{untrusted(event.get('status'), 40)}: {untrusted(event.get('message', ''))}"


class PolygonSession:
    """One connection's Polygon conversation.

    Auth goes out as soon as the websocket is open (no need to wait for the
    ``connected`` status: it saves a round trip on every reconnect); subscribe goes
    out once auth succeeds.
    """

    def __init__(self, key: str, subscribe: str) -> None:
        self._key = key
        self._subscribe = subscribe
        self.phase = Phase.AUTHENTICATING
        self.subscriptions: list[str] = []

    def __repr__(self) -> str:  # never show the key
        return f"<PolygonSession {self.phase.value} subscribe={self._subscribe!r}>"

    def opening_messages(self) -> list[bytes]:
        return [auth_message(self._key)]

    def on_status(self, event: dict[str, Any]) -> list[bytes]:
        """Messages to send in reply to one status event; raises when the session cannot go on."""
        status = event.get("status")
        if status == "auth_success" and self.phase is Phase.AUTHENTICATING:
            self.phase = Phase.SUBSCRIBING
            return [subscribe_message(self._subscribe)]
        if status == "auth_failed":
            raise AuthFailed(describe(event))
        if status == "max_connections":
            raise Evicted(describe(event))
        if status == "success" and self.phase is not Phase.AUTHENTICATING:
            self.phase = Phase.STREAMING
            self.subscriptions.append(str(event.get("message", "")))
            return []
        if status in ("auth_timeout", "error") and self.phase is not Phase.STREAMING:
            raise SessionError(describe(event))
        return []
