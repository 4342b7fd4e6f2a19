"""The Polygon/Massive websocket session as a pure state machine: text in, replies out.

Texts and order follow the real service (and the ``massive`` client that speaks to it)::

    > [{"ev":"status","status":"connected","message":"Connected Successfully"}]
    < {"action":"auth","params":"KEY"}
    > [{"ev":"status","status":"auth_success","message":"authenticated"}]
    < {"action":"subscribe","params":"T.AAPL,T.MSFT"}
    > [{"ev":"status","status":"success","message":"subscribed to: T.AAPL"}]
    > [{"ev":"status","status":"success","message":"subscribed to: T.MSFT"}]

A wrong key gets ``auth_failed`` ("authentication failed") and a close; no auth in time gets
``auth_timeout`` ("No authentication request received.") and a close; an older connection
with the same key beyond the limit gets ``max_connections`` and a 1008 close. Anything but
``auth`` before authenticating gets an ``error`` status and changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import orjson

POLICY_VIOLATION = 1008
"""The close code Polygon uses when it refuses a session (eviction, failed or missing auth)."""

MAX_CONNECTIONS_MESSAGE = (
    "Maximum number of websocket connections exceeded. You have reached the connection limit "
    "for your account. Please contact support at https://polygon.io/contact to increase your limit."
)


def status_frame(status: str, message: str) -> bytes:
    """One status event in its own JSON array, compact, in Polygon's field order."""
    return orjson.dumps([{"ev": "status", "status": status, "message": message}])


CONNECTED = status_frame("connected", "Connected Successfully")
AUTH_SUCCESS = status_frame("auth_success", "authenticated")
AUTH_FAILED = status_frame("auth_failed", "authentication failed")
AUTH_TIMEOUT = status_frame("auth_timeout", "No authentication request received.")
MAX_CONNECTIONS = status_frame("max_connections", MAX_CONNECTIONS_MESSAGE)
NOT_AUTHORIZED = status_frame("error", "not authorized")


class State(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


@dataclass(frozen=True)
class Close:
    code: int
    reason: str
    end_reason: str
    """What the ledger records as the connection's end (``auth_failed``, ``auth_timeout``...)."""


@dataclass
class Reply:
    """What the server must do after one client message (in this order)."""

    frames: list[bytes] = field(default_factory=list)
    close: Close | None = None
    authenticated_key: str | None = None
    subscriptions_changed: bool = False


class Subscriptions:
    """The topics a session holds; the simulator sends trades (channel ``T``) only."""

    def __init__(self) -> None:
        self.topics: set[str] = set()

    @property
    def all_trades(self) -> bool:
        return "T.*" in self.topics

    @property
    def trade_symbols(self) -> frozenset[str]:
        """Symbols named one by one (``T.AAPL``); meaningful when not ``all_trades``."""
        return frozenset(t[2:] for t in self.topics if t.startswith("T.") and t != "T.*")

    @property
    def any_trades(self) -> bool:
        return any(t.startswith("T.") for t in self.topics)

    def wants(self, symbol: str) -> bool:
        return "T.*" in self.topics or f"T.{symbol}" in self.topics


def split_topics(params: str) -> list[str]:
    """``"T.AAPL, T.MSFT"`` -> ``["T.AAPL", "T.MSFT"]`` (empty items dropped)."""
    return [topic.strip() for topic in params.split(",") if topic.strip()]


class PolygonSession:
    """One client's session; the caller does the I/O and enforces connection limits."""

    def __init__(self, allowed_keys: frozenset[str] | None = None) -> None:
        self.allowed_keys = allowed_keys
        self.state = State.AWAITING_AUTH
        self.key: str | None = None
        self.subscriptions = Subscriptions()

    def opened(self) -> list[bytes]:
        return [CONNECTED]

    def auth_timed_out(self) -> Reply:
        if self.state is not State.AWAITING_AUTH:
            return Reply()
        self.state = State.CLOSED
        return Reply([AUTH_TIMEOUT], Close(POLICY_VIOLATION, "auth timeout", "auth_timeout"))

    def receive(self, message: str | bytes) -> Reply:
        if self.state is State.CLOSED:
            return Reply()
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            return Reply([status_frame("error", "invalid message: not JSON")])
        if not isinstance(request, dict) or not isinstance(request.get("action"), str):
            expected = 'invalid message: expected {"action":...,"params":...}'
            return Reply([status_frame("error", expected)])
        action, params = request["action"], request.get("params")
        if action == "auth":
            return self._auth(params)
        if self.state is not State.AUTHENTICATED:
            return Reply([NOT_AUTHORIZED])
        if action in ("subscribe", "unsubscribe"):
            if not isinstance(params, str):
                return Reply([status_frame("error", f"invalid {action}: params must be a string")])
            return self._subscribe(action, split_topics(params))
        return Reply([status_frame("error", f"unknown action: {action}")])

    def _auth(self, params: object) -> Reply:
        if self.state is State.AUTHENTICATED:
            return Reply([status_frame("error", "already authenticated")])
        key = params if isinstance(params, str) else ""
        allowed = bool(key) and (self.allowed_keys is None or key in self.allowed_keys)
        if not allowed:
            self.state = State.CLOSED
            close = Close(POLICY_VIOLATION, "authentication failed", "auth_failed")
            return Reply([AUTH_FAILED], close)
        self.state = State.AUTHENTICATED
        self.key = key
        return Reply([AUTH_SUCCESS], authenticated_key=key)

    def _subscribe(self, action: str, topics: list[str]) -> Reply:
        reply = Reply()
        for topic in topics:
            if "." not in topic or topic.endswith("."):
                reply.frames.append(status_frame("error", f"invalid topic: {topic}"))
                continue
            if action == "subscribe":
                self.subscriptions.topics.add(topic)
                reply.frames.append(status_frame("success", f"subscribed to: {topic}"))
            else:
                self.subscriptions.topics.discard(topic)
                reply.frames.append(status_frame("success", f"unsubscribed to: {topic}"))
            reply.subscriptions_changed = True
        return reply
