"""The ledger: what was sent whole, per connection and for the whole run (CONTRACTS.md section 5).

Per symbol it keeps the count, the first and last ``q`` and a CRC-32 chained over the
trade payload bytes in send order (start value 0). Batches are added only once they are
confirmed (the peer's kernel acknowledged every byte); the rest count as partial.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from itertools import repeat
from operator import add
from typing import Any

import orjson

from common.atomicfile import write_atomically
from simulator.batches import Batch, Groups
from simulator.crc import crc32_combine

LEDGER_VERSION = 1


class SymbolBook:
    """Per-symbol count, first/last ``q`` and CRC-32, advanced a batch's groups at a time."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.first_q: dict[str, int] = {}
        self.last_q: dict[str, int] = {}
        self.crc: dict[str, int] = {}
        self.nbytes: dict[str, int] = {}

    def add(self, groups: Groups) -> None:
        # C-level passes, one element per symbol; each symbol appears once per batch, so each
        # lazy read below happens before the write of the same key.
        symbols, payloads = groups.symbols, groups.payloads
        crc, count, nbytes = self.crc, self.count, self.nbytes
        crcs = map(zlib.crc32, payloads, map(crc.get, symbols, repeat(0)))
        crc.update(zip(symbols, crcs, strict=True))
        counts = map(add, map(count.get, symbols, repeat(0)), groups.sizes)
        count.update(zip(symbols, counts, strict=True))
        sizes = map(add, map(nbytes.get, symbols, repeat(0)), map(len, payloads))
        nbytes.update(zip(symbols, sizes, strict=True))
        deque(map(self.first_q.setdefault, symbols, groups.first_qs), maxlen=0)
        self.last_q.update(zip(symbols, groups.last_qs, strict=True))

    def extend(self, later: SymbolBook) -> None:
        """Append another book's trades after this one's (CRCs combined, not recomputed)."""
        for symbol, n in later.count.items():
            mine = self.count.get(symbol, 0)
            self.count[symbol] = mine + n
            self.first_q.setdefault(symbol, later.first_q[symbol])
            self.last_q[symbol] = later.last_q[symbol]
            self.crc[symbol] = crc32_combine(self.crc.get(symbol, 0), later.crc[symbol],
                                             later.nbytes[symbol])
            self.nbytes[symbol] = self.nbytes.get(symbol, 0) + later.nbytes[symbol]

    def copy(self) -> SymbolBook:
        book = SymbolBook()
        book.count, book.first_q = dict(self.count), dict(self.first_q)
        book.last_q, book.crc, book.nbytes = dict(self.last_q), dict(self.crc), dict(self.nbytes)
        return book

    def to_json(self) -> dict[str, dict[str, int]]:
        return {s: {"count": n, "first_q": self.first_q[s], "last_q": self.last_q[s],
                    "crc32": self.crc[s]} for s, n in sorted(self.count.items())}


@dataclass
class ConnectionRecord:
    id: int
    peer: str
    start: float
    key: str | None = None
    end: float | None = None
    trades_sent: int = 0
    frames_sent: int = 0
    trades_partial: int = 0
    frames_partial: int = 0
    end_reason: str | None = None
    close_code: int | None = None
    tls: dict[str, Any] | None = None
    subscriptions: list[str] = field(default_factory=list)
    symbols: SymbolBook = field(default_factory=SymbolBook)
    _frozen: dict[str, Any] | None = None  # an ended connection's JSON, made once

    def to_json(self) -> dict[str, Any]:
        if self._frozen is not None:
            return self._frozen
        data = {
            "id": self.id, "key": self.key, "peer": self.peer, "start": self.start, "end": self.end,
            "trades_sent": self.trades_sent, "frames_sent": self.frames_sent,
            "trades_partial": self.trades_partial, "frames_partial": self.frames_partial,
            "end_reason": self.end_reason, "close_code": self.close_code, "tls": self.tls,
            "subscriptions": self.subscriptions, "symbols": self.symbols.to_json(),
        }
        if self.end is not None:
            self._frozen = data  # the ledger is rewritten after every connection: once is enough
        return data


@dataclass
class FaultEvent:
    time: float
    kind: str
    connection: int | None
    detail: str = ""


class RunLedger:
    """The whole run: every connection, the run-wide per-symbol book, the faults injected.

    The run-wide book is the connections' books appended in connection order (by ``id``,
    which is the order they opened); ended connections are folded in once, for good.
    """

    def __init__(self, seed: int, settings: dict[str, Any], per_symbol: bool = True) -> None:
        self.seed = seed
        self.settings = settings
        self.per_symbol = per_symbol  # off when nobody reads the books: no --ledger
        self.started = time.time()
        self.ended: float | None = None
        self.connections: list[ConnectionRecord] = []
        self.faults: list[FaultEvent] = []
        self.feed: dict[str, Any] = {}  # the feed's own counters (frames made, pace)
        self._folded = SymbolBook()
        self._folded_count = 0

    def open_connection(self, peer: str) -> ConnectionRecord:
        record = ConnectionRecord(len(self.connections) + 1, peer, time.time())
        self.connections.append(record)
        return record

    def confirm(self, record: ConnectionRecord, batch: Batch) -> None:
        """A batch the peer holds whole: into the connection's book (the run's derives)."""
        record.trades_sent += batch.count
        record.frames_sent += 1
        if self.per_symbol:
            record.symbols.add(batch.groups())

    def partial(self, record: ConnectionRecord, trades: int) -> None:
        record.trades_partial += trades
        record.frames_partial += 1

    def fault(self, kind: str, connection: int | None, detail: str = "") -> FaultEvent:
        event = FaultEvent(time.time(), kind, connection, detail)
        self.faults.append(event)
        return event

    def symbols(self) -> SymbolBook:
        """The run-wide book: every connection's trades sent whole, connection after connection."""
        while (self._folded_count < len(self.connections)
               and self.connections[self._folded_count].end is not None):
            self._folded.extend(self.connections[self._folded_count].symbols)
            self._folded_count += 1
        if self._folded_count == len(self.connections):
            return self._folded
        book = self._folded.copy()
        for record in self.connections[self._folded_count:]:
            book.extend(record.symbols)
        return book

    def totals(self) -> dict[str, Any]:
        return {
            "connections": len(self.connections),
            "trades_sent": sum(c.trades_sent for c in self.connections),
            "frames_sent": sum(c.frames_sent for c in self.connections),
            "trades_partial": sum(c.trades_partial for c in self.connections),
            "frames_partial": sum(c.frames_partial for c in self.connections),
            "faults": dict(Counter(f.kind for f in self.faults)),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "version": LEDGER_VERSION, "seed": self.seed,
            "started": self.started, "ended": self.ended, "settings": self.settings,
            "totals": self.totals(), "feed": self.feed, "symbols": self.symbols().to_json(),
            "connections": [c.to_json() for c in self.connections],
            "fault_log": [{"time": f.time, "kind": f.kind, "connection": f.connection,
                           "detail": f.detail} for f in self.faults],
        }

    def write(self, path: str) -> None:
        write_atomically(path, orjson.dumps(self.to_json()))
