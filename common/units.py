"""The command line's quantities, one spelling for every program of the product.

``lb``, ``simulate``, ``lb-pool`` and the handlers all take durations as ``500ms``, ``20s``,
``5m``, ``1h`` or a bare number of seconds, and sizes in bytes with an optional ``K``/``M``/``G``
suffix (powers of 1024; ``KiB``/``KB`` spellings too). The parsers raise ``ValueError`` that
never repeats the input (it could be a misplaced key: the caller names the argument);
``argtype`` turns one into an argparse ``type=``.
"""

from __future__ import annotations

import argparse
import datetime
import re
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION_RE = re.compile(_NUMBER + r"\s*(ms|s|m|min|h)?$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(_NUMBER + r"\s*([kmg]?)(?:i?b)?$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

DURATION_HELP = "e.g. 500ms, 20s, 5m"
SIZE_HELP = "bytes; K, M, G suffixes are powers of 1024"


def parse_duration(text: str) -> float:
    """``60s``, ``500ms``, ``5m``, ``1h``, ``2.5`` (seconds) -> seconds (zero allowed)."""
    match = _DURATION_RE.match(text.strip())
    if not match:
        raise ValueError("not a duration (e.g. 60s, 500ms, 5m or 1h)")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds == float("inf"):  # more digits than a float holds
        raise ValueError("not a duration (e.g. 60s, 500ms, 5m or 1h)")
    return seconds


def parse_positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError("the duration must be above zero")
    return seconds


def parse_size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024): ``1G``, ``256M``, ``64KiB``, ``65536``."""
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise ValueError("not a size in bytes (e.g. 65536, 64K, 256M, 1G)")
    try:
        size = int(float(match.group(1)) * SIZE_UNITS[match.group(2).upper()])
    except OverflowError:  # more digits than a float holds
        raise ValueError("not a size in bytes (e.g. 65536, 64K, 256M, 1G)") from None
    if size <= 0:
        raise ValueError("the size must be positive")
    return size


def format_size(size: int) -> str:
    """The shortest exact spelling that ``parse_size`` reads back: 1G, 256M, 65536."""
    for suffix in ("G", "M", "K"):
        if size >= SIZE_UNITS[suffix] and size % SIZE_UNITS[suffix] == 0:
            return f"{size // SIZE_UNITS[suffix]}{suffix}"
    return str(size)


def parse_time(text: str) -> datetime.datetime:
    """A point in time: ISO 8601 (local time when it names no zone) or Unix seconds."""
    try:
        return datetime.datetime.fromtimestamp(float(text), tz=datetime.UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("not a time (ISO 8601, e.g. 2026-12-03T09:30-05:00, or Unix seconds)") from None
    return value if value.tzinfo else value.astimezone()


def format_bytes(n: float) -> str:
    """Binary units, as the size options take them: 4M is "4.0 MiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def format_duration(seconds: float) -> str:
    """A spelling ``parse_duration`` reads back: 500ms, 20s, 5m."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def argtype(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type=`` from a parser that raises ``ValueError`` with a message."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")  # argparse names it in errors
    return convert


duration = argtype(parse_duration)
"""argparse type: a duration, zero allowed."""
positive_duration = argtype(parse_positive_duration)
"""argparse type: a duration above zero."""
size = argtype(parse_size)
"""argparse type: a size in bytes above zero."""

time_arg = argtype(parse_time)
