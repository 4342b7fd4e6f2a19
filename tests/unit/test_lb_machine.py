"""Issue 11, the pure parts: the argv split after EXE, byte units, the repeated-failure log."""

from __future__ import annotations

import logging

import pytest

from balancer.app import RepeatedFailure
from balancer.cli import build_parser, default_max_backlog_total, split_argv
from common.units import format_bytes

POS = ["KEY", "ws://h/s", "2", "/tmp", "EXE"]


@pytest.mark.parametrize(("argv", "worker"), [
    ([*POS, "--", "x"], ["--", "x"]),
    ([*POS, "-v", "--stats-file", "f"], ["-v", "--stats-file", "f"]),
    (["--stats-file", "f", "-v", *POS, "a"], ["a"]),
    (["--stats-file=f", *POS], []),
    (["--stats-f", "f", *POS, "--"], ["--"]),  # an abbreviated option takes its value
    (["--", *POS, "--", "b"], ["--", "b"]),
    (["-", "ws://h/s", "--subscribe", "T.A", "2", "/tmp", "EXE", "-q"], ["-q"]),
])
def test_everything_after_exe_is_the_workers(argv, worker):
    head, tail = split_argv(build_parser(), argv)
    assert tail == worker
    assert head + tail == argv


def test_binary_units():
    assert format_bytes(4 << 20) == "4.0 MiB"
    assert format_bytes(64 << 10) == "64.0 KiB"
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 << 30) == "3.0 GiB"


def test_the_total_default_is_an_eighth_of_memory_at_least_64m():
    assert default_max_backlog_total() >= 64 << 20


def test_a_repeated_failure_is_one_warning_then_an_error_a_minute_with_the_count():
    now = [100.0]
    failure = RepeatedFailure("certificate verification", every=60.0, clock=lambda: now[0])
    assert failure.failed(1) == (logging.WARNING, None)
    levels = []
    for count in range(2, 40):  # one attempt every 5 s: 190 s
        now[0] += 5.0
        levels.append(failure.failed(count))
    errors = [line for _, line in levels if line]
    assert all(level == logging.DEBUG for level, _ in levels)
    assert len(errors) == 3  # at 60, 120, 180 s
    assert errors[0] == "certificate verification failed 13 times in a row; still retrying"
