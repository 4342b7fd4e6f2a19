"""When each frame is due: constant rates, the market-open profile, and no pacing at all.

A schedule maps market time (seconds since the feed started, not counting pauses while
nobody is subscribed) to the number of trades due by then. Frames carry ``batch`` trades
each; frame ``k`` is due when ``(k + 1) * batch`` trades are, and its trades get the
market time of that moment as ``t``. Both depend only on ``k``, never on when the event
loop woke up, so a slow moment delays frames without changing their bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

DEFAULT_FRAME_INTERVAL = 0.001
MAX_AUTO_BATCH = 2000
NOMINAL_MAX_RATE = 1_000_000.0  # market clock speed under --rate max: a million trades a second


class Schedule(Protocol):
    def trades_due(self, elapsed: float) -> float:
        """Trades due by ``elapsed`` seconds of market time (non-decreasing)."""
        ...

    def time_of(self, trades: float) -> float:
        """The market time at which ``trades`` trades are due (the inverse)."""
        ...


@dataclass(frozen=True)
class ConstantRate:
    rate: float

    def trades_due(self, elapsed: float) -> float:
        return self.rate * elapsed

    def time_of(self, trades: float) -> float:
        return trades / self.rate


@dataclass(frozen=True)
class OpenProfile:
    """Like 09:30 ET: a quiet pre-open, a sharp ramp to the target rate, a plateau, a decay.

    Over ``period`` seconds: 15% at ``base`` (2% of the target), a ramp over 2%, the target
    for 20%, then an exponential decay (time constant 15% of the period) back towards base.
    """

    rate: float
    period: float = 60.0
    base_share: float = 0.02

    @property
    def _phases(self) -> tuple[float, float, float, float, float]:
        p = self.period
        return self.rate * self.base_share, 0.15 * p, 0.02 * p, 0.20 * p, 0.15 * p

    def rate_at(self, elapsed: float) -> float:
        base, quiet, ramp, hold, tau = self._phases
        if elapsed < quiet:
            return base
        if elapsed < quiet + ramp:
            return base + (self.rate - base) * (elapsed - quiet) / ramp
        if elapsed < quiet + ramp + hold:
            return self.rate
        return base + (self.rate - base) * math.exp(-(elapsed - quiet - ramp - hold) / tau)

    def trades_due(self, elapsed: float) -> float:
        base, quiet, ramp, hold, tau = self._phases
        peak = self.rate
        if elapsed < quiet:
            return base * elapsed
        total = base * quiet
        x = min(elapsed - quiet, ramp)
        total += base * x + (peak - base) * x * x / (2 * ramp)
        if elapsed < quiet + ramp:
            return total
        x = min(elapsed - quiet - ramp, hold)
        total += peak * x
        if elapsed < quiet + ramp + hold:
            return total
        x = elapsed - quiet - ramp - hold
        return total + base * x + (peak - base) * tau * (1 - math.exp(-x / tau))

    def time_of(self, trades: float) -> float:
        low, high = 0.0, self.period
        while self.trades_due(high) < trades:
            high *= 2
        for _ in range(60):
            middle = (low + high) / 2
            if self.trades_due(middle) < trades:
                low = middle
            else:
                high = middle
        return high


def auto_batch(peak_rate: float | None, frame_interval: float) -> int:
    """Trades per frame when ``--batch`` is not given: one frame per interval at peak rate."""
    if peak_rate is None:
        return 1000
    return max(1, min(MAX_AUTO_BATCH, round(peak_rate * frame_interval)))


class FrameClock:
    """Frame ``k``'s due time and its ``t``, for fixed-size frames on a schedule (or none)."""

    def __init__(self, schedule: Schedule | None, batch: int, clock_start_ms: int) -> None:
        self.schedule = schedule
        self.batch = batch
        self.clock_start_ms = clock_start_ms

    def due_at(self, frame: int) -> float:
        """Market seconds at which frame ``frame`` (0-based) is due; 0 without pacing."""
        if self.schedule is None:
            return 0.0
        return self.schedule.time_of((frame + 1) * self.batch)

    def t_ms(self, frame: int) -> int:
        seconds = self.due_at(frame) if self.schedule else frame * self.batch / NOMINAL_MAX_RATE
        return self.clock_start_ms + math.floor(seconds * 1000 + 1e-6)  # 1.001 s is 1001 ms
