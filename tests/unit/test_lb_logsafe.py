"""The server's text cannot write lb's log: escaped, cut, floods counted (issue 10 item 9)."""

from __future__ import annotations

import logging

from balancer import handshake, logsafe


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def logger_with_guard(name: str) -> tuple[logging.Logger, list[str], Clock, logsafe.LogGuard]:
    clock = Clock()
    guard = logsafe.LogGuard(clock)
    logger = logging.getLogger(name)
    logger.handlers[:] = []
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger.addHandler(Keep())
    logger.addFilter(guard)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, lines, clock, guard


def test_untrusted_escapes_and_cuts() -> None:
    assert logsafe.untrusted("a\nlb: FORGED\r\x1b[2J") == "a\\nlb: FORGED\\r\\x1b[2J"
    long = logsafe.untrusted("y" * 4_000_000)
    assert long.startswith("y" * 200) and long.endswith("... (4000000 characters)") and len(long) < 240
    assert logsafe.untrusted(b"\xff\n") == "\\xff\\n"


def test_every_line_is_one_line_and_bounded() -> None:
    logger, lines, _, _ = logger_with_guard("lb.test.lines")
    logger.warning("reason %s", "x\nlb: disconnected (auth_failed): FORGED LINE" + "z" * 5000)
    assert len(lines) == 1 and "\n" not in lines[0] and len(lines[0]) < 1100


def test_floods_are_counted_per_window() -> None:
    logger, lines, clock, guard = logger_with_guard("lb.test.flood")
    for i in range(100_000):
        logger.warning("event %d", i, extra=logsafe.limited("events"))
    logger.warning("other", extra=logsafe.limited("other"))
    assert lines == ["event 0", "event 1", "event 2", "other"]
    clock.now += logsafe.WINDOW
    guard.flush(logger)
    assert lines[-1] == "... 99,997 more in the last 5 s (events)"
    logger.warning("event again", extra=logsafe.limited("events"))
    assert lines[-1] == "event again"


def test_retry_after_values() -> None:
    assert handshake.retry_after("120") == 120.0
    assert handshake.retry_after(None) is None
    assert handshake.retry_after("soon") is None
    assert handshake.retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert handshake.retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
