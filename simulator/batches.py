"""Batches: the trades of one websocket data frame, with what the ledger needs to account them.

A batch's ``payload`` is the frame as sent to a subscriber of ``T.*``: a compact JSON array
of trade objects. For the ledger, ``groups()`` gives the same trades grouped by symbol (each
group the concatenated payload bytes of that symbol's trades, in send order), so that the
per-symbol CRC-32 chains advance with one ``zlib.crc32`` call per symbol and frame rather
than one Python step per trade. ``trades()`` gives them one by one for the slow paths
(subscriptions to a few symbols, replay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Groups:
    """Per symbol in a batch, in order of first appearance."""

    symbols: list[str]
    payloads: list[bytes]
    sizes: list[int]
    first_qs: list[int]
    last_qs: list[int]


@dataclass(frozen=True)
class Trades:
    symbols: list[str]
    payloads: list[bytes]
    qs: list[int]


class Batch(Protocol):
    count: int

    def render(self, stamp: bytes | None = None) -> bytes:
        """The frame payload; ``stamp`` (``--stamp-ids``) goes into every trade's ``i``."""
        ...

    def groups(self) -> Groups:
        """The rendered trades grouped by symbol (call after ``render``)."""
        ...

    def trades(self) -> Trades:
        """The rendered trades one by one (call after ``render``)."""
        ...


def group_trades(trades: Trades) -> Groups:
    index: dict[str, int] = {}
    symbols: list[str] = []
    parts: list[list[bytes]] = []
    firsts: list[int] = []
    lasts: list[int] = []
    for symbol, payload, q in zip(trades.symbols, trades.payloads, trades.qs, strict=True):
        g = index.get(symbol)
        if g is None:
            index[symbol] = len(symbols)
            symbols.append(symbol)
            parts.append([payload])
            firsts.append(q)
            lasts.append(q)
        else:
            parts[g].append(payload)
            lasts[g] = q
    return Groups(symbols, [b"".join(p) for p in parts], [len(p) for p in parts], firsts, lasts)


def frame_of(payloads: list[bytes]) -> bytes:
    return b"[" + b",".join(payloads) + b"]"


STAMP_TOKEN = b"\\u0000stamp\\u0000"
"""Stands for the ``--stamp-ids`` value in finished payloads (what JSON makes of NUL+stamp+NUL)."""


class TradeListBatch:
    """A batch of finished trade payloads: replay, and the slow paths."""

    def __init__(self, trades: Trades) -> None:
        self._trades = trades
        self.count = len(trades.payloads)
        self._groups: Groups | None = None

    def render(self, stamp: bytes | None = None) -> bytes:
        if stamp is not None:
            stamped = [p.replace(STAMP_TOKEN, stamp) for p in self._trades.payloads]
            self._trades = Trades(self._trades.symbols, stamped, self._trades.qs)
            self._groups = None
        return frame_of(self._trades.payloads)

    def groups(self) -> Groups:
        if self._groups is None:
            self._groups = group_trades(self._trades)
        return self._groups

    def trades(self) -> Trades:
        return self._trades


def select(trades: Trades, wanted: frozenset[str]) -> Trades:
    """The trades of ``wanted`` symbols, in order (a subscription to a few symbols)."""
    keep = [i for i, s in enumerate(trades.symbols) if s in wanted]
    return Trades([trades.symbols[i] for i in keep], [trades.payloads[i] for i in keep],
                  [trades.qs[i] for i in keep])
