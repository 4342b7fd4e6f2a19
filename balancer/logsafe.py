"""What the server says never writes lb's log: its text is escaped and cut, floods are counted.

``untrusted(text)`` is how server text (status messages, close reasons, header values) enters a
log line: control characters escaped, at most UNTRUSTED_LIMIT characters.
``LogGuard`` is a filter on the ``lb`` logger that holds for every line whatever its source:
no line holds a control character (a newline cannot forge a line) or more than LINE_LIMIT
characters, and records logged with ``extra=limited("key")`` are rate-limited per key: at most
BURST of them (or the burst given) per WINDOW seconds, then one "... N more in the last 5 s"
line when the window ends.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

UNTRUSTED_LIMIT = 200
LINE_LIMIT = 1000
WINDOW = 5.0
BURST = 3

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def escape(text: str) -> str:
    return _CONTROL.sub(_escape, text)


def untrusted(value: Any, limit: int = UNTRUSTED_LIMIT) -> str:
    """Server-supplied text fit for one log line: escaped, and cut to ``limit`` characters."""
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value[: limit * 4]).decode("utf-8", "backslashreplace")
        total = len(value)
        unit = "bytes"
    else:
        text = str(value)
        total = len(text)
        unit = "characters"
    text = escape(text[: limit * 4])
    if len(text) > limit or total > limit * 4:
        return f"{text[:limit]}... ({total} {unit})"
    return text


def limited(key: str, burst: int = BURST) -> dict[str, Any]:
    """``extra=`` for a log call that a server could repeat without end: at most ``burst`` such
    lines per key and WINDOW."""
    return {"rate_key": key, "rate_burst": burst}


@dataclass(slots=True)
class _Window:
    start: float
    shown: int = 0
    hidden: int = 0
    template: logging.LogRecord | None = field(default=None)


class LogGuard(logging.Filter):
    def __init__(self, clock: Any = time.monotonic) -> None:
        super().__init__("lb")
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._flushing = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._flushing:
            self.flush()
        key = getattr(record, "rate_key", None)
        if key is not None:
            now = self._clock()
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(now)
            if window.shown >= getattr(record, "rate_burst", BURST):
                window.hidden += 1
                window.template = record
                return False
            window.shown += 1
        message = record.getMessage()
        clean = escape(message)
        if len(clean) > LINE_LIMIT:
            clean = f"{clean[:LINE_LIMIT]}... ({len(message)} characters)"
        record.msg, record.args = clean, None
        return True

    def flush(self, logger: logging.Logger | None = None) -> None:
        """End the windows that are over: one count line each for what they held back."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            if now - window.start < WINDOW:
                continue
            del self._windows[key]
            if window.hidden and window.template is not None:
                target = logger or logging.getLogger(window.template.name)
                self._flushing = True
                try:
                    target.log(window.template.levelno, "... %s more in the last %g s (%s)",
                               f"{window.hidden:,}", WINDOW, key)
                finally:
                    self._flushing = False


GUARD = LogGuard()


def install(logger: logging.Logger) -> None:
    if GUARD not in logger.filters:
        logger.addFilter(GUARD)
