"""Comparing what the simulator sent whole (its ledger) with what a verify worker received.
"""

from __future__ import annotations


def compare(ledger: dict, report: dict) -> list[str]:
    """Per-symbol differences between what was sent whole and what the worker received."""
    problems = []
    sent, got = ledger["symbols"], report["symbols"]
    for symbol in sorted(set(sent) | set(got)):
        a = sent.get(symbol)
        b = {k: got.get(symbol, {}).get(k) for k in ("count", "first_q", "last_q", "crc32")}
        if a is None:
            problems.append(f"{symbol}: received {b['count']} trades never sent whole")
        elif a != b:
            problems.append(f"{symbol}: sent {a}, received {b}")
    return problems
