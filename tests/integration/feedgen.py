"""Trades in Polygon's layout for lb's tests, and an independent reference of what each
pipe must receive (FNV-1a written here again on purpose: no balancer imports)."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterable

SYMBOLS = ["AAPL", "MSFT", "SPY", "TSLA", "BRK.A", "QQQ", "NVDA", "A", "GOOGL", "AMZN",
           "LONGSYMBOLX", "ZZ", "F", "BAC", "T", "XOM"]


def fnv1a_64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) % (1 << 64)
    return h


def pipe_of(symbol: str, npipes: int) -> int:
    return (fnv1a_64(symbol.encode("utf-8", "surrogateescape")) >> 32) % npipes  # as sent


def trade(symbol: str, q: int, rng: random.Random, extra: bool = False) -> bytes:
    fields = {"ev": "T", "sym": symbol, "x": rng.randint(1, 21), "i": str(rng.randint(1, 10**9)),
              "z": rng.randint(1, 3), "p": round(rng.uniform(1, 500), 2), "s": rng.randint(1, 900),
              "c": [0, 12], "t": 1764130000000 + q, "q": q}
    if extra:
        fields["trfi"] = 202
        fields["trft"] = 1764130000000 + q
    return json.dumps(fields, separators=(",", ":")).encode()


class Feed:
    """Generates frames and remembers, per pipe, the exact bytes lb must write."""

    def __init__(self, npipes: int, seed: int = 1, symbols: list[str] | None = None) -> None:
        self.npipes = npipes
        self.rng = random.Random(seed)
        self.symbols = symbols or SYMBOLS
        self.q = 0
        self.expected = [bytearray() for _ in range(npipes)]
        self.trades = 0

    def frame(self, n: int) -> bytes:
        objs = []
        for _ in range(n):
            self.q += 1
            sym = self.rng.choice(self.symbols)
            obj = trade(sym, self.q, self.rng, extra=self.rng.random() < 0.05)
            objs.append(obj)
            self.expect(sym, obj)
        return b"[" + b",".join(objs) + b"]"

    def expect(self, symbol: str, obj: bytes) -> None:
        self.expected[pipe_of(symbol, self.npipes)] += struct.pack("<I", len(obj)) + obj
        self.trades += 1

    def frames(self, count: int, per_frame: int) -> Iterable[bytes]:
        for _ in range(count):
            yield self.frame(per_frame)
