"""Parsing of the command line's quantities: rates, speeds, counts (simulate's own).

Durations are the product-wide ones of ``common.units`` (re-exported here).
"""

from __future__ import annotations

import re

from common.units import parse_duration, parse_positive_duration

__all__ = ["format_rate", "parse_count", "parse_duration", "parse_positive_duration", "parse_rate",
           "parse_speed"]

_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_RATE_RE = re.compile(_NUMBER + r"\s*([kKmMgG]?)\s*(?:/\s*s(?:ec)?)?$")
_COUNT_RE = re.compile(_NUMBER + r"\s*([kKmMgG]?)$")
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
