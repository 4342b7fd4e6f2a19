"""One CLI style: the shared units (common.units), the old option spellings, --version."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib.metadata import version

import pytest

from balancer import cli as lb_cli
from common.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_positive_duration,
    parse_size,
)
from common.version import VERSION
from simulator import cli as sim_cli
from workers import pool
from workers.cli import run_standalone  # noqa: F401  (the handlers' parser is built there)

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("20s", 20.0), ("5m", 300.0), ("5min", 300.0), ("1h", 3600.0), ("2.5", 2.5),
    ("0", 0.0), (" 7s ", 7.0),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ms", "5d", "-1s", "ten", "1 hour", "nan"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_errors_never_repeat_the_input_and_huge_numbers_are_refused() -> None:
    """A misplaced API key must not reach a usage error; more digits than a float holds is a
    bad value (ValueError), not an infinite duration or an OverflowError traceback."""
    huge = "9" * 400
    for parse, text in ((parse_duration, "sk_live_KEY"), (parse_size, "sk_live_KEY"),
                        (parse_duration, huge), (parse_size, huge), (parse_size, huge + "K")):
        with pytest.raises(ValueError) as caught:
            parse(text)
        assert text not in str(caught.value)


def test_positive_durations_refuse_zero() -> None:
    with pytest.raises(ValueError, match="above zero"):
        parse_positive_duration("0ms")


@pytest.mark.parametrize(("text", "size"), [
    ("65536", 65536), ("64K", 65536), ("64k", 65536), ("256M", 256 << 20), ("1G", 1 << 30),
    ("1GiB", 1 << 30), ("1gb", 1 << 30), ("1.5K", 1536), ("512KiB", 512 << 10),
])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "K", "0", "-1K", "1T", "1e6"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize("size", [1, 1000, 1 << 10, 3 << 20, 64 << 20, 1 << 30, (1 << 30) + 1])
def test_sizes_read_back(size: int) -> None:
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize("seconds", [0.1, 0.5, 1.0, 20.0, 90.0, 300.0])
def test_durations_read_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_every_program_takes_the_same_units() -> None:
    lb = lb_cli.build_parser().parse_args(
        ["--ping-interval", "500ms", "--shutdown-timeout", "1m", "--stats-interval", "0",
         "--pipe-size", "64K", "--max-message", "1M", "k", "ws://h/s", "2", ".", "cat"])
    assert (lb.ping_interval, lb.shutdown_timeout, lb.stats_interval) == (0.5, 60.0, 0.0)
    assert (lb.pipe_size, lb.max_message) == (64 << 10, 1 << 20)
    sim = sim_cli.build_parser().parse_args(["--ping-interval", "500ms", "--stats-interval", "5m"])
    assert (sim.ping_interval, sim.stats_interval) == (0.5, 300.0)
    lbpool = pool.build_parser().parse_args(
        ["--stats-interval", "250ms", "--shutdown-timeout", "2s", "--backoff-min", "50ms",
         "--chunk", "64K", "--max-message", "2M", "--log-dir", "logs", "3"])
    assert (lbpool.interval, lbpool.term_timeout, lbpool.backoff_min) == (0.25, 2.0, 0.05)
    assert (lbpool.chunk, lbpool.max_message, lbpool.dir) == (64 << 10, 2 << 20, "logs")


def test_the_old_spellings_still_work_but_are_not_advertised() -> None:
    parser = pool.build_parser()
    old = parser.parse_args(["--interval", "0.5", "--term-timeout", "3", "--dir", "d", "3"])
    assert (old.interval, old.term_timeout, old.dir) == (0.5, 3.0, "d")
    defaults = parser.parse_args(["3"])
    assert (defaults.interval, defaults.term_timeout, defaults.dir) == (1.0, 5.0, ".")
    shown = parser.format_help()
    for name in ("--term-timeout", "--interval ", "--dir "):
        assert name not in shown
    for name in ("--shutdown-timeout", "--stats-interval", "--log-dir", "--bars-dir"):
        assert name in shown


def test_usage_errors_still_exit_2() -> None:
    with pytest.raises(SystemExit) as exited:
        pool.build_parser().parse_args(["--chunk", "1", "3"])
    assert exited.value.code == 2
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        lb_cli.size("lots")


def test_one_version_source() -> None:
    assert version("trade-balancer") == VERSION


@pytest.mark.parametrize(("command", "prog"), [
    ([os.path.join(BIN, "lb")], "lb"),
    ([os.path.join(BIN, "simulate")], "simulate"),
    ([os.path.join(BIN, "lb-pool")], "lb-pool"),
    ([os.path.join(BIN, "lb-demo")], "lb-demo"),
    ([os.path.join(BIN, "lb-soak")], "lb-soak"),
    ([os.path.join(BIN, "lb-top")], "lb-top"),
    ([os.path.join(BIN, "lb-bridge")], "lb-bridge"),
    ([os.path.join(BIN, "lb-remote")], "lb-remote"),
    ([sys.executable, "-m", "workers.jetstream"], "python -m workers.jetstream"),
    ([sys.executable, "-m", "workers.stats"], "python -m workers.stats"),
    ([sys.executable, "-m", "workers.log"], "python -m workers.log"),
    ([sys.executable, "-m", "workers.verify"], "python -m workers.verify"),
    ([sys.executable, "-m", "workers.bars"], "python -m workers.bars"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_version_everywhere(command: list[str], prog: str) -> None:
    result = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{prog} (trade-balancer) {VERSION}\n"


def test_the_user_agent_carries_the_version() -> None:
    from balancer.session import USER_AGENT

    assert f"trade-balancer-lb/{VERSION}" == USER_AGENT


def test_points_in_time() -> None:
    import datetime

    from common.units import parse_time

    assert parse_time("1700000000") == datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.UTC)
    at = parse_time("2026-12-03T09:30-05:00")
    assert at.utcoffset() == datetime.timedelta(hours=-5) and at.hour == 9
    assert parse_time("2026-12-03T09:30").tzinfo is not None  # local time, made aware
    with pytest.raises(ValueError) as caught:
        parse_time("sk_live_KEY")
    assert "sk_live_KEY" not in str(caught.value)  # never repeats the input
