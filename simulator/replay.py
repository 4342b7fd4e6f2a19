"""Replay: recorded message payloads (``lb --record``, JSON lines) and Polygon flat-file CSV.

Both become trade events in Polygon's websocket layout, one compact JSON object each, in
file order. Files may be gzip-compressed (detected by content, not name). A malformed
line stops the run with ``FILE:LINE: what is wrong``. With ``loop``, each new lap adds to
``q`` and ``t`` the span of the first lap, so both keep increasing per symbol.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from simulator.batches import TradeListBatch, Trades

_REQUIRED_CSV = ("ticker", "exchange", "price", "sequence_number", "sip_timestamp", "size")
_JSON_NUMBER = re.compile(rb"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_GZIP_MAGIC = b"\x1f\x8b"
STAMP_PLACEHOLDER = "\x00stamp\x00"  # rendered by JSON as batches.STAMP_TOKEN


class ReplayError(ValueError):
    """A malformed input file; the message names the file and line."""


@dataclass(frozen=True)
class ReplayTrade:
    symbol: str
    q: int
    t: int
    fields: dict[str, Any]


def open_maybe_gzip(path: str) -> IO[bytes]:
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    if raw.read(2) == _GZIP_MAGIC:
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    raw.seek(0)
    return raw


def detect_format(path: str) -> str:
    """``csv`` if the first line is the flat-file header, else ``jsonl``."""
    with open_maybe_gzip(path) as f:
        first = f.readline().strip()
    return "csv" if first.startswith(b"ticker,") else "jsonl"


def _trade_from_event(event: Any, where: str) -> ReplayTrade:
    if not isinstance(event, dict):
        raise ReplayError(f"{where}: expected a JSON object per event, got {type(event).__name__}")
    symbol, q, t = event.get("sym"), event.get("q"), event.get("t")
    if not isinstance(symbol, str) or not symbol:
        raise ReplayError(f"{where}: trade without a string 'sym'")
    if not isinstance(q, int) or isinstance(q, bool):
        raise ReplayError(f"{where}: trade {symbol} without an integer 'q'")
    if not isinstance(t, int) or isinstance(t, bool):
        raise ReplayError(f"{where}: trade {symbol} without an integer 't' (ms)")
    return ReplayTrade(symbol, q, t, event)


def read_jsonl(path: str) -> Iterator[ReplayTrade]:
    """Trade events from lines that each hold one message payload (an array) or one event."""
    with open_maybe_gzip(path) as f:
        for number, line in enumerate(f, 1):
            where = f"{path}:{number}"
            if not line.strip():
                continue
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ReplayError(f"{where}: not JSON ({exc})") from None
            events = message if isinstance(message, list) else [message]
            for event in events:
                if isinstance(event, dict) and event.get("ev") != "T":
                    continue  # status and other channels: the simulator replays trades only
                yield _trade_from_event(event, where)


def _csv_int(row: dict[str, str], column: str, where: str, required: bool = True) -> int | None:
    text = (row.get(column) or "").strip()
    if not text:
        if required:
            raise ReplayError(f"{where}: empty {column}")
        return None
    try:
        return int(text)
    except ValueError:
        raise ReplayError(f"{where}: {column} is not an integer: {text!r}") from None


def _csv_number(row: dict[str, str], column: str, where: str) -> Any:
    text = (row.get(column) or "").strip()
    if not _JSON_NUMBER.fullmatch(text.encode()):
        raise ReplayError(f"{where}: {column} is not a number: {text!r}")
    value = float(text)
    return int(value) if value.is_integer() and "e" not in text.lower() else value


def _csv_trade(row: dict[str, str], where: str) -> ReplayTrade:
    symbol = (row.get("ticker") or "").strip()
    if not symbol:
        raise ReplayError(f"{where}: empty ticker")
    sip_ns = _csv_int(row, "sip_timestamp", where)
    q = _csv_int(row, "sequence_number", where)
    assert sip_ns is not None and q is not None
    event: dict[str, Any] = {"ev": "T", "sym": symbol, "x": _csv_int(row, "exchange", where),
                             "i": (row.get("id") or "").strip()}
    tape = _csv_int(row, "tape", where, required=False)
    if tape is not None:
        event["z"] = tape
    event["p"] = _csv_number(row, "price", where)
    event["s"] = _csv_number(row, "size", where)
    conditions = (row.get("conditions") or "").strip()
    if conditions:
        try:
            event["c"] = [int(c) for c in conditions.split(",")]
        except ValueError:
            raise ReplayError(f"{where}: conditions are not integers: {conditions!r}") from None
    event["t"] = sip_ns // 1_000_000
    event["q"] = q
    trf_id = _csv_int(row, "trf_id", where, required=False)
    if trf_id is not None:
        event["trfi"] = trf_id
        trf_ns = _csv_int(row, "trf_timestamp", where, required=False)
        if trf_ns is not None:
            event["trft"] = trf_ns // 1_000_000
    return ReplayTrade(symbol, q, event["t"], event)


def read_csv(path: str) -> Iterator[ReplayTrade]:
    """Trades from a Polygon flat file (``us_stocks_sip/trades_v1``), converted to ``T`` events."""
    with open_maybe_gzip(path) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ReplayError(f"{path}:1: {exc}") from None
        missing = [c for c in _REQUIRED_CSV if c not in header]
        if missing:
            names = ", ".join(missing)
            raise ReplayError(f"{path}:1: not a trades flat-file header: missing {names}")
        try:
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row:
                    continue
                if len(row) != len(header):
                    raise ReplayError(f"{where}: {len(row)} fields, the header has {len(header)}")
                yield _csv_trade(dict(zip(header, row, strict=True)), where)
        except csv.Error as exc:
            raise ReplayError(f"{path}:{reader.line_num}: {exc}") from None


class ReplaySource:
    """Trades of a file, lap after lap with ``loop``, rendered and cut into batches."""

    def __init__(self, path: str, loop: bool = False, stamped: bool = False,
                 file_format: str | None = None) -> None:
        self.path = path
        self.loop = loop
        self.stamped = stamped
        self.format = file_format or detect_format(path)
        self.lap = 0
        self.q_span = 0
        self.t_span = 0
        self._first_t: int | None = None
        self._laps = self._trades()
        self._next: ReplayTrade | None = None
        self._error: ReplayError | None = None  # raised once the trades before it are out
        self.exhausted = False

    def _read(self) -> Iterator[ReplayTrade]:
        return read_csv(self.path) if self.format == "csv" else read_jsonl(self.path)

    def _trades(self) -> Iterator[ReplayTrade]:
        max_q, min_t, max_t = 0, None, None
        while True:
            count = 0
            for trade in self._read():
                count += 1
                if self.lap == 0:
                    max_q = max(max_q, trade.q)
                    min_t = trade.t if min_t is None else min(min_t, trade.t)
                    max_t = trade.t if max_t is None else max(max_t, trade.t)
                yield trade
            if not self.loop or count == 0:
                return
            if self.lap == 0:
                assert min_t is not None and max_t is not None
                self.q_span, self.t_span = max_q + 1, max_t - min_t + 1
            self.lap += 1

    def peek_t(self) -> int | None:
        """The next trade's ``t`` as it will be sent, or None at the end of the file; raises
        ``ReplayError`` at a malformed line."""
        if self._next is None:
            if self._error is not None:
                raise self._error
            try:
                self._next = next(self._laps, None)
            except ReplayError as exc:
                self._error = exc
                raise
            if self._next is None:
                self.exhausted = True
                return None
        return self._next.t + self.lap * self.t_span

    def _take(self) -> ReplayTrade | None:
        if self.peek_t() is None:
            return None
        trade, self._next = self._next, None
        return trade

    def next_batch(self, count: int, until_t: int | None = None) -> TradeListBatch | None:
        """Up to ``count`` trades (those with ``t <= until_t`` only, if given); None if none."""
        symbols: list[str] = []
        payloads: list[bytes] = []
        qs: list[int] = []
        while len(payloads) < count:
            try:
                t = self.peek_t()
            except ReplayError:
                if payloads:
                    break  # send what was read before the bad line; the error comes next call
                raise
            if t is None or (until_t is not None and t > until_t):
                break
            trade = self._take()
            assert trade is not None
            fields = dict(trade.fields)
            q = trade.q + self.lap * self.q_span
            if self.lap:
                fields["q"], fields["t"] = q, t
            if self.stamped:
                fields["i"] = STAMP_PLACEHOLDER
            symbols.append(trade.symbol)
            payloads.append(orjson.dumps(fields))
            qs.append(q)
        if not payloads:
            return None
        return TradeListBatch(Trades(symbols, payloads, qs))
