"""Parsing of the command line's quantities: rates, durations, speeds, counts."""

from __future__ import annotations

import re

_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_RATE_RE = re.compile(_NUMBER + r"\s*([kKmMgG]?)\s*(?:/\s*s(?:ec)?)?$")
_COUNT_RE = re.compile(_NUMBER + r"\s*([kKmMgG]?)$")
_DURATION_RE = re.compile(_NUMBER + r"\s*(ms|s|m|min|h)?$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_SPEED_RE = re.compile(_NUMBER + r"\s*[xX]?$")

def parse_rate(text: str) -> float | None:
    """``500k/s``, ``2M/s``, ``1000/s``, ``1500`` -> trades per second; ``max`` -> None (no
    pacing: frames go out as fast as the client reads them)."""
    value = text.strip()
    if value.lower() == "max":
        return None
    match = _RATE_RE.match(value)
    if not match:
        raise ValueError(f"bad rate {text!r}: expected e.g. 500k/s, 2M/s, 1000/s or max")
    rate = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if rate <= 0:
        raise ValueError(f"bad rate {text!r}: must be above zero")
    return rate


def parse_count(text: str) -> int:
    """``1000``, ``50k``, ``2M`` -> an integer count above zero."""
    match = _COUNT_RE.match(text.strip())
    if not match:
        raise ValueError(f"bad count {text!r}: expected e.g. 1000, 50k or 2M")
    count = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if count != int(count) or count < 1:
        raise ValueError(f"bad count {text!r}: must be a whole number above zero")
    return int(count)


def parse_duration(text: str) -> float:
    """``60s``, ``500ms``, ``5m``, ``1h``, ``2.5`` (seconds) -> seconds."""
    match = _DURATION_RE.match(text.strip())
    if not match:
        raise ValueError(f"bad duration {text!r}: expected e.g. 60s, 500ms, 5m or 1h")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"bad duration {text!r}: must be above zero")
    return seconds


def parse_speed(text: str) -> float:
    """``10x``, ``0.5x``, ``2`` -> a factor on the recorded pace."""
    match = _SPEED_RE.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"bad speed {text!r}: expected a factor above zero such as 10x or 0.5x")
    return float(match.group(1))


def format_rate(rate: float | None) -> str:
    if rate is None:
        return "max"
    for suffix, scale in (("M", 1_000_000), ("k", 1_000)):
        if rate >= scale:
            return f"{rate / scale:.4g}{suffix}/s"
    return f"{rate:.4g}/s"
