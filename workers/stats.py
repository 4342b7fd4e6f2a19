"""`stats`: per-symbol trades, volume, VWAP and last price, shown as a live table.

Each worker process keeps its own table; the pool merges the children's snapshots and
prints one table per interval on stderr (redrawn in place on a terminal, one line per
interval otherwise) and a summary at the end.

    python -m workers.stats [--stats-interval DURATION] [--top N] [--summary-file PATH] FD...
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

import orjson

from workers.cli import run_standalone
from workers.files import write_json_atomically
from workers.handler import Aggregator, Handler, HandlerContext

TRADES, VOLUME, NOTIONAL, LAST = range(4)


class StatsHandler(Handler):
    name = "stats"

    def __init__(self, context: HandlerContext) -> None:
        super().__init__(context)
        self.symbols: dict[str, list[float]] = {}
        self.trades = 0
        self.bytes = 0
        self.skipped = 0
        """Payloads without a usable sym/p/s (not JSON, not a trade)."""

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("stats handler")
        group.add_argument("--top", type=int, default=12, metavar="N",
                           help="symbols shown in the table, by trade count (default 12)")
        group.add_argument("--summary-file", metavar="PATH",
                           help="write the final figures as JSON to PATH at the end")

    @classmethod
    def aggregator(cls, options: argparse.Namespace, label: str) -> Aggregator:
        return StatsDisplay(label, options.top, options.summary_file, sys.stderr)

    def on_batch(self, pipe: int, payloads: list[bytes]) -> None:
        loads = orjson.loads
        table = self.symbols
        nbytes = 0
        for payload in payloads:
            nbytes += len(payload)
            try:
                trade = loads(payload)
                symbol = trade["sym"]
                price = trade["p"]
                size = trade["s"]
                row = table.get(symbol)
                if row is None:
                    row = table[symbol] = [0, 0, 0.0, 0.0]
                row[TRADES] += 1
                row[VOLUME] += size
                row[NOTIONAL] += price * size
                row[LAST] = price
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self.skipped += 1
        self.trades += len(payloads)
        self.bytes += nbytes

    def snapshot(self) -> dict[str, Any]:
        return {"trades": self.trades, "bytes": self.bytes, "skipped": self.skipped,
                "symbols": self.symbols}

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.trades = snapshot["trades"]
        self.bytes = snapshot["bytes"]
        self.skipped = snapshot["skipped"]
        self.symbols = {symbol: list(row) for symbol, row in snapshot["symbols"].items()}


def merge_stats(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"trades": 0, "bytes": 0, "skipped": 0, "symbols": {}}
    symbols: dict[str, list[float]] = merged["symbols"]
    for snapshot in snapshots:
        if snapshot is None:
            continue
        for key in ("trades", "bytes", "skipped"):
            merged[key] += snapshot[key]
        for symbol, row in snapshot["symbols"].items():
            mine = symbols.get(symbol)
            if mine is None:
                symbols[symbol] = list(row)
            else:  # only if a symbol was misrouted onto pipes of two processes
                mine[TRADES] += row[TRADES]
                mine[VOLUME] += row[VOLUME]
                mine[NOTIONAL] += row[NOTIONAL]
                mine[LAST] = row[LAST]
    return merged


def top_rows(symbols: dict[str, list[float]], count: int) -> list[tuple[str, list[float]]]:
    return sorted(symbols.items(), key=lambda item: item[1][TRADES], reverse=True)[:count]


def vwap(row: list[float]) -> float:
    return row[NOTIONAL] / row[VOLUME] if row[VOLUME] else row[LAST]


def render_table(rows: list[tuple[str, list[float]]]) -> list[str]:
    lines = [f"  {'SYMBOL':<10}{'TRADES':>12}{'VOLUME':>15}{'VWAP':>12}{'LAST':>12}"]
    for symbol, row in rows:
        lines.append(
            f"  {symbol:<10}{int(row[TRADES]):>12,}{int(row[VOLUME]):>15,}"
            f"{vwap(row):>12.4f}{row[LAST]:>12.4f}"
        )
    return lines


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class StatsDisplay(Aggregator):
    """The demo's display: a table redrawn in place once per interval, then a summary."""

    def __init__(self, label: str, top: int, summary_file: str | None, out: TextIO) -> None:
        self.label = label
        self.top = top
        self.summary_file = summary_file
        self.out = out
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.previous: tuple[float, int] | None = None
        self.rate = 0.0
        self.peak = 0.0
        self.drawn = 0

    def merge(self, snapshots: list[Any]) -> dict[str, Any]:
        return merge_stats(snapshots)

    def on_interval(self, merged: dict[str, Any], now: float) -> None:
        self._measure(merged["trades"], now)
        if self.tty:
            self._redraw(merged, now)
        else:
            self._one_line(merged)

    def _measure(self, trades: int, now: float) -> None:
        if self.previous is not None and now > self.previous[0]:
            self.rate = (trades - self.previous[1]) / (now - self.previous[0])
            self.peak = max(self.peak, self.rate)
        self.previous = (now, trades)

    def _header(self, merged: dict[str, Any], now: float) -> str:
        return (
            f"{self.label} stats  up {_duration(now - self.started)}  "
            f"trades {merged['trades']:,}  now {self.rate:,.0f}/s  peak {self.peak:,.0f}/s  "
            f"symbols {len(merged['symbols']):,}  {merged['bytes'] / 1e6:,.1f} MB"
        )

    def _redraw(self, merged: dict[str, Any], now: float) -> None:
        lines = [self._header(merged, now), *render_table(top_rows(merged["symbols"], self.top))]
        erase = f"\x1b[{self.drawn}F\x1b[J" if self.drawn else ""
        self.out.write(erase + "\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)

    def _one_line(self, merged: dict[str, Any]) -> None:
        leaders = " ".join(
            f"{symbol}:{int(row[TRADES]):,}" for symbol, row in top_rows(merged["symbols"], 5)
        )
        self.out.write(
            f"{self.label} stats: trades {merged['trades']:,} rate {self.rate:,.0f}/s "
            f"peak {self.peak:,.0f}/s symbols {len(merged['symbols']):,} top {leaders}\n"
        )
        self.out.flush()

    def finish(self, merged: dict[str, Any], accounting: dict[str, Any]) -> None:
        elapsed = time.monotonic() - self.started
        average = merged["trades"] / elapsed if elapsed > 0 else 0.0
        lines = [
            f"{self.label} summary: {merged['trades']:,} trades, {len(merged['symbols']):,} "
            f"symbols, {merged['bytes'] / 1e6:,.1f} MB in {_duration(elapsed)}; "
            f"average {average:,.0f}/s, peak {self.peak:,.0f}/s"
            + (f"; {merged['skipped']:,} not trades" if merged["skipped"] else ""),
            *render_table(top_rows(merged["symbols"], self.top)),
        ]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        if self.summary_file:
            self._write_summary(merged, elapsed, average, accounting)

    def _write_summary(
        self, merged: dict[str, Any], elapsed: float, average: float, accounting: dict[str, Any]
    ) -> None:
        summary = {
            "trades": merged["trades"],
            "bytes": merged["bytes"],
            "skipped": merged["skipped"],
            "symbols": len(merged["symbols"]),
            "seconds": round(elapsed, 3),
            "average_per_s": round(average, 1),
            "peak_per_s": round(self.peak, 1),
            "top": [
                {"sym": symbol, "trades": int(row[TRADES]), "volume": row[VOLUME],
                 "vwap": vwap(row), "last": row[LAST]}
                for symbol, row in top_rows(merged["symbols"], self.top)
            ],
            "accounting": accounting,
        }
        write_json_atomically(self.summary_file, summary)


def main(argv: list[str] | None = None) -> int:
    return run_standalone(StatsHandler, argv, prog="python -m workers.stats", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
