"""lb's settings and exit codes: what the command line produces and the balancer consumes.

Kept apart from ``cli`` (which parses) and ``app`` (which runs) so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from balancer.url import WebSocketURL

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_AUTH = 3

__all__ = ["DEFAULTS", "EXIT_AUTH", "EXIT_OK", "EXIT_USAGE", "Config", "Defaults", "TlsMode", "TlsRequest"]


@dataclass(frozen=True, slots=True)
class Defaults:
    """lb's defaults, the one place they are written: the command line, its ``--help`` and the
    layers below (transport, session, frame decoder) all take them from here."""

    subscribe: str = "T.*"
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    connect_timeout: float = 10.0
    max_message: int = 64 << 20
    pipe_size: int = 1 << 30
    max_backlog: int = 256 << 20
    max_backlog_total_floor: int = 64 << 20  # the default total is 1/8 of RAM, at least this
    shutdown_timeout: float = 30.0
    stats_interval: float = 5.0


DEFAULTS = Defaults()


class TlsRequest(StrEnum):
    """What ``--tls`` asks for (``Config.tls``); the run then decides a ``TlsMode``."""

    AUTO = "auto"
    """kernel TLS when the kernel can take it, else userspace (with one warning)."""
    KTLS = "ktls"
    """kernel TLS or exit 2 before connecting."""
    USERSPACE = "userspace"
    """OpenSSL throughout."""


class TlsMode(StrEnum):
    """The TLS path chosen once before connecting (``SessionConfig.tls_mode``, the stats' ``tls``)."""

    NONE = "none"
    """ws://: no TLS."""
    USERSPACE = "userspace"
    KTLS = "ktls"


@dataclass(slots=True)
class Config:
    key: str
    url: WebSocketURL
    npipes: int
    workdir: str
    exe: str
    args: list[str]
    subscribe: str
    cafile: str | None
    tls: TlsRequest
    ping_interval: float
    ping_timeout: float
    pipe_size: int
    max_backlog: int
    max_message: int
    stats_interval: float
    stats_file: str | None
    ready_file: str | None
    record: str | None
    shutdown_timeout: float
    connect_timeout: float
    verbosity: int
    engine: str = "auto"  # --engine: auto | native | python
    metrics: tuple[str, int] | None = None  # --metrics HOST:PORT: serve /metrics there
    max_backlog_total: int = 1 << 30  # --max-backlog-total (cli derives the default from RAM)
