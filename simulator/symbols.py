"""The ticker universe: real names at the top of the activity ranking, plausible ones below.

Activity is Zipf-like by rank, as in a real session where SPY, QQQ, TSLA, NVDA and AAPL
alone carry a large share of all trades. The universe does not depend on ``--seed``: the
same ``--symbols N`` always means the same N tickers in the same order.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

DEFAULT_SYMBOLS = 8000
ZIPF_EXPONENT = 1.05
ZIPF_OFFSET = 2.0

# ticker, listing tape (1 NYSE, 2 NYSE Arca/American and others, 3 Nasdaq), rough price in USD
POPULAR: tuple[tuple[str, int, float], ...] = (
    ("SPY", 2, 521.40), ("QQQ", 3, 441.25), ("TSLA", 3, 248.50), ("NVDA", 3, 121.35),
    ("AAPL", 3, 189.90), ("AMD", 3, 158.20), ("AMZN", 3, 182.15), ("META", 3, 497.80),
    ("MSFT", 3, 421.60), ("IWM", 2, 201.30), ("TQQQ", 3, 61.45), ("SQQQ", 3, 9.87),
    ("PLTR", 1, 24.80), ("GOOGL", 3, 171.05), ("SOXL", 2, 31.20), ("F", 1, 12.14),
    ("BAC", 1, 38.42), ("NIO", 1, 5.06), ("INTC", 3, 30.55), ("MARA", 3, 19.87),
    ("SOFI", 3, 7.93), ("AAL", 3, 13.88), ("GOOG", 3, 172.40), ("XLF", 2, 41.12),
    ("TLT", 3, 92.60), ("SMCI", 3, 41.70), ("COIN", 3, 226.30), ("MU", 3, 128.45),
    ("T", 1, 17.21), ("PFE", 1, 28.33), ("HOOD", 3, 21.95), ("CCL", 1, 15.62),
    ("RIVN", 3, 11.08), ("UBER", 1, 69.75), ("NFLX", 3, 641.20), ("JPM", 1, 198.30),
    ("XLE", 2, 92.10), ("GME", 1, 23.40), ("BABA", 1, 76.55), ("KO", 1, 62.80),
    ("WMT", 1, 67.90), ("XOM", 1, 113.45), ("DIS", 1, 101.30), ("C", 1, 62.15),
    ("WFC", 1, 58.70), ("SNAP", 1, 15.91), ("LCID", 3, 2.71), ("VALE", 1, 11.83),
    ("GDX", 2, 34.57), ("EEM", 2, 42.96), ("HYG", 2, 77.42), ("ARKK", 2, 47.33),
    ("UVXY", 2, 28.04), ("SIRI", 3, 2.98), ("BRK.B", 1, 411.20), ("BRK.A", 1, 620150.00),
)

LETTERS = string.ascii_uppercase
_UNIVERSE_SEED = 20190301  # fixed: the universe never changes with --seed
TAPE_WEIGHTS = (0.33, 0.17, 0.50)


@dataclass(frozen=True)
class SymbolInfo:
    name: str
    tape: int
    price: float
    weight: float


def zipf_weight(rank: int) -> float:
    return 1.0 / (rank + ZIPF_OFFSET) ** ZIPF_EXPONENT


def _generated_tickers(count: int, taken: set[str], rng: random.Random) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        length = rng.choices((1, 2, 3, 4, 5), (1, 8, 40, 48, 3))[0]
        name = "".join(rng.choice(LETTERS) for _ in range(length))
        if rng.random() < 0.006 and length <= 3:
            name += "." + rng.choice("AB")  # share classes, like BF.B
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def _generated_price(rng: random.Random) -> float:
    if rng.random() < 0.05:
        return round(rng.uniform(0.05, 0.99), 4)  # sub-dollar names trade in 1/100 cent ticks
    return round(min(max(rng.lognormvariate(3.2, 1.1), 1.0), 2500.0), 2)


def universe(count: int = DEFAULT_SYMBOLS) -> list[SymbolInfo]:
    """The ``count`` most active tickers, most active first."""
    if count < 1:
        raise ValueError("the universe needs at least one symbol")
    rng = random.Random(_UNIVERSE_SEED)
    popular = list(POPULAR[:count])
    generated = _generated_tickers(max(0, count - len(popular)), {p[0] for p in POPULAR}, rng)
    infos = [SymbolInfo(name, tape, price, 0.0) for name, tape, price in popular]
    for name in generated:
        tape = rng.choices((1, 2, 3), TAPE_WEIGHTS)[0]
        infos.append(SymbolInfo(name, tape, _generated_price(rng), 0.0))
    return [SymbolInfo(s.name, s.tape, s.price, zipf_weight(rank)) for rank, s in enumerate(infos)]
