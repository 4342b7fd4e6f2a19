"""`bars`: 1-second OHLCV bars per symbol, by the trades' own timestamps (`t`).

A bar is written when the symbol's first trade of a later second arrives, and every open
bar at the end, as JSON lines in `bars-<pipe>.jsonl` in `--bars-dir`:
`{"sym","second","o","h","l","c","v","n"}` (`second`: Unix seconds). A symbol's trades all
arrive on one pipe in order, so its bars come out in order in that pipe's file.

    python -m workers.bars [--bars-dir DIR] FD...
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import orjson

from workers.cli import run_standalone
from workers.files import open_log, write_all
from workers.handler import Aggregator, Handler, HandlerContext
from workers.log import LogSummary

SECOND, OPEN, HIGH, LOW, CLOSE, VOLUME, TRADES = range(7)


def unix_second(timestamp: int) -> int:
    """Polygon sends milliseconds; some feeds use nanoseconds or microseconds."""
    if timestamp >= 10**17:
        return timestamp // 10**9
    if timestamp >= 10**14:
        return timestamp // 10**6
    return timestamp // 1000


class BarsHandler(Handler):
    name = "bars"

    def __init__(self, context: HandlerContext) -> None:
        super().__init__(context)
        directory = context.options.bars_dir
        os.makedirs(directory, exist_ok=True)
        self.files = {
            pipe: open_log(os.path.join(directory, f"bars-{pipe}.jsonl")) for pipe in context.pipes
        }
        self.open_bars: dict[int, dict[str, list[Any]]] = {pipe: {} for pipe in context.pipes}
        self.written = {pipe: 0 for pipe in context.pipes}

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("bars handler")
        group.add_argument("--bars-dir", default=".",
                           help="directory of the bars-<i>.jsonl files (default: the working "
                                "directory)")

    @classmethod
    def aggregator(cls, options: argparse.Namespace, label: str) -> Aggregator:
        return LogSummary(options.bars_dir, label, "bars")

    def on_batch(self, pipe: int, payloads: list[bytes]) -> None:
        bars = self.open_bars[pipe]
        done: list[bytes] = []
        for payload in payloads:
            try:
                trade = orjson.loads(payload)
                symbol, price, size = trade["sym"], trade["p"], trade["s"]
                second = unix_second(trade["t"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            bar = bars.get(symbol)
            if bar is not None and bar[SECOND] == second:
                bar[HIGH] = max(bar[HIGH], price)
                bar[LOW] = min(bar[LOW], price)
                bar[CLOSE] = price
                bar[VOLUME] += size
                bar[TRADES] += 1
                continue
            if bar is not None:
                done.append(encode_bar(symbol, bar))
            bars[symbol] = [second, price, price, price, price, size, 1]
        self._write(pipe, done)

    def _write(self, pipe: int, done: list[bytes]) -> None:
        if done:
            write_all(self.files[pipe], b"\n".join(done) + b"\n")
            self.written[pipe] += len(done)

    def snapshot(self) -> dict[str, Any]:
        return {"messages": {str(pipe): count for pipe, count in self.written.items()}}

    def restore(self, snapshot: dict[str, Any]) -> None:
        for pipe, count in snapshot["messages"].items():
            self.written[int(pipe)] = count

    def close(self) -> None:
        for pipe, bars in self.open_bars.items():
            self._write(pipe, [encode_bar(symbol, bar) for symbol, bar in bars.items()])
            bars.clear()
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()


def encode_bar(symbol: str, bar: list[Any]) -> bytes:
    return orjson.dumps({"sym": symbol, "second": bar[SECOND], "o": bar[OPEN], "h": bar[HIGH],
                         "l": bar[LOW], "c": bar[CLOSE], "v": bar[VOLUME], "n": bar[TRADES]})


def main(argv: list[str] | None = None) -> int:
    return run_standalone(BarsHandler, argv, prog="python -m workers.bars", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
