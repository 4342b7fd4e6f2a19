"""Pacing: rates integrate to trades, frames get deterministic due times and t."""

from __future__ import annotations

import math

import pytest

from simulator.pacing import ConstantRate, FrameClock, OpenProfile, auto_batch


def test_constant_rate() -> None:
    r = ConstantRate(500_000)
    assert r.trades_due(2.0) == 1_000_000
    assert r.time_of(1_000_000) == 2.0


def test_open_profile_shape_and_inverse() -> None:
    p = OpenProfile(1_000_000, period=100)
    assert p.rate_at(5) == pytest.approx(20_000)          # quiet base: 2%
    assert p.rate_at(16) == pytest.approx(510_000)        # half-way up the ramp
    assert p.rate_at(20) == p.rate_at(36) == 1_000_000    # plateau
    assert p.rate_at(37 + 15) == pytest.approx(20_000 + 980_000 / math.e)
    assert p.rate_at(500) == pytest.approx(20_000, rel=1e-3)
    step, total = 0.001, 0.0
    for i in range(100_000):  # the closed form agrees with the integral of rate_at
        total += p.rate_at((i + 0.5) * step) * step
    assert p.trades_due(100) == pytest.approx(total, rel=1e-6)
    for n in (1, 10_000, 300_000, 5_000_000, 50_000_000):
        assert p.trades_due(p.time_of(n)) == pytest.approx(n, rel=1e-9)


def test_frame_clock_due_times_and_t() -> None:
    clock = FrameClock(ConstantRate(1000), batch=10, clock_start_ms=1_700_000_000_000)
    assert [clock.due_at(k) for k in range(3)] == [0.01, 0.02, 0.03]
    assert clock.t_ms(0) == 1_700_000_000_010 and clock.t_ms(99) == 1_700_000_001_000
    unpaced = FrameClock(None, batch=1000, clock_start_ms=0)
    assert unpaced.due_at(5) == 0.0
    assert unpaced.t_ms(3000) == 3000  # the market clock runs at a million trades a second


@pytest.mark.parametrize(("rate", "interval", "batch"), [
    (2000, 0.001, 2), (500_000, 0.001, 500), (1_000_000, 0.001, 1000), (5_000_000, 0.001, 2000),
    (10, 0.001, 1), (None, 0.001, 1000), (100_000, 0.01, 1000),
])
def test_auto_batch(rate: float | None, interval: float, batch: int) -> None:
    assert auto_batch(rate, interval) == batch
