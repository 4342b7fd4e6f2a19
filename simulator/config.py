"""The simulator's settings, as parsed from the command line, and their defaults.

``Settings()`` is the one place the defaults live: ``simulate``'s options take theirs (and
the numbers in their ``--help``) from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from simulator.market import DEFAULT_TAPE_SIZE
from simulator.pacing import DEFAULT_FRAME_INTERVAL
from simulator.symbols import DEFAULT_SYMBOLS

FAULT_KINDS = ("reset", "close", "stall", "tls-close", "truncate", "garbage", "badjson")
FAULT_CHOICES = (*FAULT_KINDS, "random")


@dataclass
class TLSSettings:
    certs_dir: str
    cert_type: str = "rsa"
    version: str | None = None
    ciphers: str | None = None
    tls13_suites: list[str] | None = None


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 0
    tls: TLSSettings | None = None
    ready_file: str | None = None
    ledger: str | None = None
    # protocol
    keys: frozenset[str] | None = None
    max_connections: int = 1
    auth_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 5.0
    # market
    rate: float | None = 2000.0  # None: --rate max
    profile: str = "flat"
    profile_period: float = 60.0
    batch: int = 2  # the CLI always decides it (--batch, or from --rate and --frame-interval)
    frame_interval: float = DEFAULT_FRAME_INTERVAL
    symbols: int = DEFAULT_SYMBOLS
    seed: int = 0
    tape_size: int = DEFAULT_TAPE_SIZE
    clock_start_ms: int = 0
    stamp_ids: bool = False
    duration: float | None = None
    trades: int | None = None
    # replay
    replay: str | None = None
    replay_format: str | None = None
    speed: float | None = None
    loop: bool = False
    # faults
    drop_every: float | None = None
    fault: str = "reset"
    refuse_for: float = 0.0
    drain_timeout: float = 2.0
    fault_wait: float = 10.0
    # output
    stats_interval: float = 10.0
    stats_file: str | None = None
    metrics: tuple[str, int] | None = None  # --metrics HOST:PORT
    quiet: bool = False
    max_lag: float = 1.0
    write_limit: int = 1 << 20

    def summary(self) -> dict[str, Any]:
        """The settings as the ledger records them (JSON-friendly, no API keys)."""
        data = asdict(self)
        data["keys"] = None if self.keys is None else len(self.keys)
        return data
