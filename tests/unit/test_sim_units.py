"""simulate's command-line quantities: rates, counts, durations, speeds."""

from __future__ import annotations

import pytest

from simulator.units import (
    format_rate,
    parse_count,
    parse_duration,
    parse_positive_duration,
    parse_rate,
    parse_speed,
)


@pytest.mark.parametrize(("text", "rate"), [
    ("500k/s", 500_000.0), ("2M/s", 2_000_000.0), ("1000/s", 1000.0), ("1500", 1500.0),
    ("2.5k/s", 2500.0), ("1m/s", 1_000_000.0), ("10 k/s", 10_000.0), ("3k/sec", 3000.0),
    ("0.5/s", 0.5),
])
def test_rates(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


def test_rate_max_means_unpaced() -> None:
    assert parse_rate("max") is None
    assert parse_rate("MAX") is None


@pytest.mark.parametrize("text", ["", "fast", "0/s", "-5k/s", "5x/s", "k/s", "1e6/s", "5k/m"])
def test_bad_rates_name_the_input(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


@pytest.mark.parametrize(("text", "seconds"), [
    ("60s", 60.0), ("500ms", 0.5), ("5m", 300.0), ("5min", 300.0), ("1h", 3600.0),
    ("2.5", 2.5), ("0", 0.0), ("0.25s", 0.25),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "10d", "-1s", "1 hour", "ten"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_positive_duration_refuses_zero() -> None:
    with pytest.raises(ValueError, match="above zero"):
        parse_positive_duration("0s")


@pytest.mark.parametrize(("text", "count"), [("1000", 1000), ("50k", 50_000), ("2M", 2_000_000),
                                             ("1.5k", 1500)])
def test_counts(text: str, count: int) -> None:
    assert parse_count(text) == count


@pytest.mark.parametrize("text", ["0", "1.5", "-3", "lots", "2.5000001k"])
def test_bad_counts(text: str) -> None:
    with pytest.raises(ValueError, match="count"):
        parse_count(text)


@pytest.mark.parametrize(("text", "factor"), [("10x", 10.0), ("0.5x", 0.5), ("2", 2.0),
                                              ("1X", 1.0)])
def test_speeds(text: str, factor: float) -> None:
    assert parse_speed(text) == factor


@pytest.mark.parametrize("text", ["0x", "x", "fast", "-2x"])
def test_bad_speeds(text: str) -> None:
    with pytest.raises(ValueError, match="speed"):
        parse_speed(text)


def test_format_rate() -> None:
    assert format_rate(None) == "max"
    assert format_rate(500_000) == "500k/s"
    assert format_rate(2_000_000) == "2M/s"
    assert format_rate(950) == "950/s"
