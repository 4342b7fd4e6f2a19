"""lb's counters, the one-line status on stderr, and the JSON snapshot (--stats-file)."""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from balancer.causes import Cause

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process, from /proc."""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    tls: str = "-"
    engine: str = "python"  # the data path: "native" or "python"
    connected: bool = False
    trades: int = 0
    messages: int = 0
    frames: int = 0
    bytes: int = 0
    reads: int = 0  # read callbacks that got data (bytes / reads = average read)
    connects: int = 0
    reconnects: int = 0
    disconnects: Counter[Cause] = field(default_factory=Counter)
    status_events: int = 0
    pings: int = 0
    pongs: int = 0
    ping_timeouts: int = 0
    ping_rtt: float = 0.0  # seconds: the round trip of the last ping answered (0: none yet)
    server_closes: int = 0
    worker_pid: int = 0
    worker_starts: int = 0
    worker_restarts: int = 0
    worker_exits: list[str] = field(default_factory=list)
    backpressure_pauses: int = 0
    abandoned_pipes: int = 0  # workers restarted for holding none of the pipes
    cert_failures: int = 0  # consecutive certificate verification failures
    paused: bool = False
    # filled in from the router and the pipes at snapshot time
    slow_messages: int = 0
    slow_objects: int = 0
    unroutable: int = 0
    largest_backlog: int = 0
    total_backlog: int = 0
    backlog_peak: int = 0  # the largest total backlog seen
    pipe_size: int = 0
    pipe_writes: int = 0
    discarded_bytes: int = 0
    discarded_messages: int = 0

    def snapshot(self) -> dict[str, Any]:
        user, system = cpu_seconds()
        data = {k: v for k, v in self.__dict__.items() if k != "disconnects"}
        data["disconnects"] = {str(cause): n for cause, n in self.disconnects.items()}
        data.update(
            pid=os.getpid(),
            time=time.time(),
            uptime=time.time() - self.started,
            cpu_user=user,
            cpu_system=system,
            rss=rss_bytes(),
            max_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            open_fds=len(os.listdir("/proc/self/fd")),
        )
        return data


class WriteTimes:
    """How long each pipe ``write`` took, as a histogram with power-of-two buckets.

    ``counts[k]`` counts durations of more than ``2**(k-1)`` ns and at most ``2**k`` ns (so
    Prometheus' ``le`` holds exactly): the writer adds ``counts[(ns - 1).bit_length()] += 1``
    inline, no call and no comparison per write (writes are per pipe per socket read, never
    per trade)."""

    __slots__ = ("counts", "sum_ns")

    def __init__(self) -> None:
        self.counts = [0] * 64  # a duration of 2**63 ns is 292 years
        self.sum_ns = 0

    def observe(self, ns: int) -> None:
        self.counts[(ns - 1).bit_length()] += 1
        self.sum_ns += ns

    def to_json(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum_ns": self.sum_ns}


class StatusLine:
    """Rates between two calls, formatted as one line."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._last = (time.monotonic(), 0, 0, 0)

    def render(self) -> str:
        s = self.stats
        now = time.monotonic()
        then, trades, frames, nbytes = self._last
        dt = max(now - then, 1e-9)
        self._last = (now, s.trades, s.frames, s.bytes)
        state = "paused" if s.paused else ("up" if s.connected else "down")
        return (
            f"{(s.trades - trades) / dt:,.0f} trades/s {(s.frames - frames) / dt:,.0f} frames/s "
            f"{(s.bytes - nbytes) / dt / 1e6:.1f} MB/s | total {s.trades:,} trades {s.frames:,} frames | "
            f"{state} {s.tls} {s.engine} reconnects {s.reconnects} | "
            f"backlog max {s.largest_backlog / 1e6:.1f} MB | "
            f"worker restarts {s.worker_restarts} | slow path {s.slow_messages}"
        )
