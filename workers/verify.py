"""`verify`: checks what arrives on the pipes and writes a JSON report (CONTRACTS.md §6).

Checks: framing; every payload a JSON object; each symbol on the pipe its hash names;
per symbol strictly increasing `q` (the same `q` again is a duplicate, a smaller one is out
of order), missing `q` values counted as gaps; a crc32 chained over each symbol's payloads
in arrival order, to compare with the simulator's ledger. The report is written at EOF on
all pipes or on SIGTERM/SIGINT; in the pool, the pool merges the children's reports.

    python -m workers.verify --report PATH [--stats-interval DURATION] FD...
"""

from __future__ import annotations

import argparse
import sys
import zlib
from typing import Any

import orjson

from workers.cli import run_standalone
from workers.files import write_json_atomically
from workers.framing import FramingError
from workers.handler import Aggregator, Handler, HandlerContext
from workers.routing import PipeOfSymbol

ERRORS = ("framing", "not_json_object", "misrouted", "out_of_order", "duplicates", "no_symbol",
          "no_sequence")
MAX_EXAMPLES = 20
COUNT, FIRST_Q, LAST_Q, CRC, PIPE = range(5)


class VerifyHandler(Handler):
    name = "verify"

    def __init__(self, context: HandlerContext) -> None:
        super().__init__(context)
        self.pipe_of = PipeOfSymbol(context.npipes)
        self.messages = 0
        self.bytes = 0
        self.pipes: dict[int, list[int]] = {pipe: [0, 0] for pipe in context.pipes}
        self.symbols: dict[str, list[Any]] = {}
        self.errors = dict.fromkeys(ERRORS, 0)
        self.gaps = 0
        self.examples: list[str] = []

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("verify handler")
        group.add_argument("--report", metavar="PATH",
                           help="write the JSON report (docs/CONTRACTS.md section 6) to PATH "
                                "at EOF or SIGTERM; without it the report goes to stdout")

    @classmethod
    def aggregator(cls, options: argparse.Namespace, label: str) -> Aggregator:
        return VerifyReport(options.report, label)

    def _error(self, kind: str, description: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(description)

    def on_batch(self, pipe: int, payloads: list[bytes]) -> None:
        counters = self.pipes.setdefault(pipe, [0, 0])
        nbytes = sum(map(len, payloads))
        counters[0] += len(payloads)
        counters[1] += nbytes
        self.messages += len(payloads)
        self.bytes += nbytes
        for payload in payloads:
            self._check(pipe, payload)

    def _check(self, pipe: int, payload: bytes) -> None:
        try:
            trade = orjson.loads(payload)
        except orjson.JSONDecodeError:
            trade = None
        if type(trade) is not dict:
            self._error("not_json_object", f"pipe {pipe}: not a JSON object: {payload[:80]!r}")
            return
        symbol = trade.get("sym")
        if type(symbol) is not str:
            self._error("no_symbol", f"pipe {pipe}: no string sym: {payload[:80]!r}")
            return
        expected = self.pipe_of[symbol]
        if expected != pipe:
            self._error("misrouted", f"{symbol} arrived on pipe {pipe}, its hash names {expected}")
        q = trade.get("q")
        if type(q) is not int:
            q = None
            self._error("no_sequence", f"pipe {pipe}: {symbol} without an integer q")
        row = self.symbols.get(symbol)
        if row is None:
            self.symbols[symbol] = [1, q, q, zlib.crc32(payload), pipe]
            return
        row[COUNT] += 1
        row[CRC] = zlib.crc32(payload, row[CRC])
        if q is not None:
            self._sequence(symbol, row, q)

    def _sequence(self, symbol: str, row: list[Any], q: int) -> None:
        last = row[LAST_Q]
        if last is None:
            row[FIRST_Q] = row[LAST_Q] = q
        elif q > last:
            self.gaps += q - last - 1
            row[LAST_Q] = q
        elif q == last:
            self._error("duplicates", f"{symbol}: q {q} twice in a row")
        else:
            self._error("out_of_order", f"{symbol}: q {q} after q {last}")

    def on_framing_error(self, pipe: int, error: FramingError) -> None:
        super().on_framing_error(pipe, error)
        self._error("framing", str(error))

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": 1,
            "npipes": self.context.npipes,
            "messages": self.messages,
            "bytes": self.bytes,
            "pipes": {str(pipe): {"messages": m, "bytes": b} for pipe, (m, b) in self.pipes.items()},
            "symbols": {
                symbol: {"count": row[COUNT], "first_q": row[FIRST_Q], "last_q": row[LAST_Q],
                         "crc32": row[CRC], "pipe": row[PIPE]}
                for symbol, row in self.symbols.items()
            },
            "errors": dict(self.errors),
            "gaps": self.gaps,
            "examples": list(self.examples),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.messages = snapshot["messages"]
        self.bytes = snapshot["bytes"]
        for pipe, counters in snapshot["pipes"].items():
            self.pipes[int(pipe)] = [counters["messages"], counters["bytes"]]
        self.symbols = {
            symbol: [s["count"], s["first_q"], s["last_q"], s["crc32"], s["pipe"]]
            for symbol, s in snapshot["symbols"].items()
        }
        self.errors.update(snapshot["errors"])
        self.gaps = snapshot["gaps"]
        self.examples = list(snapshot["examples"])


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from the reports of processes that read disjoint sets of pipes."""
    merged: dict[str, Any] = {
        "version": 1, "npipes": 0, "messages": 0, "bytes": 0, "pipes": {}, "symbols": {},
        "errors": dict.fromkeys(ERRORS, 0), "gaps": 0, "examples": [],
    }
    for report in reports:
        if report is None:
            continue
        merged["npipes"] = max(merged["npipes"], report["npipes"])
        merged["messages"] += report["messages"]
        merged["bytes"] += report["bytes"]
        merged["gaps"] += report["gaps"]
        merged["pipes"].update(report["pipes"])
        for kind, count in report["errors"].items():
            merged["errors"][kind] = merged["errors"].get(kind, 0) + count
        merged["examples"].extend(report["examples"])
        for symbol, entry in report["symbols"].items():
            _merge_symbol(merged, symbol, entry)
    merged["examples"] = merged["examples"][:MAX_EXAMPLES]
    return merged


def _merge_symbol(merged: dict[str, Any], symbol: str, entry: dict[str, Any]) -> None:
    mine = merged["symbols"].get(symbol)
    if mine is None:
        merged["symbols"][symbol] = dict(entry)
        return
    # Only a misrouted symbol reaches two processes; misrouted already counts it.
    mine["count"] += entry["count"]
    qs = [q for q in (mine["first_q"], entry["first_q"]) if q is not None]
    mine["first_q"] = min(qs) if qs else None
    qs = [q for q in (mine["last_q"], entry["last_q"]) if q is not None]
    mine["last_q"] = max(qs) if qs else None
    merged["examples"].append(f"{symbol} was read by more than one process")


class VerifyReport(Aggregator):
    def __init__(self, path: str | None, label: str) -> None:
        self.path = path
        self.label = label

    def merge(self, snapshots: list[Any]) -> dict[str, Any]:
        return merge_reports(snapshots)

    def finish(self, merged: dict[str, Any], accounting: dict[str, Any]) -> None:
        report = {**merged, "accounting": accounting}
        if self.path:
            write_json_atomically(self.path, report)
        else:
            sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
            sys.stdout.flush()
        errors = sum(merged["errors"].values())
        print(f"{self.label}: verified {merged['messages']:,} messages, "
              f"{len(merged['symbols']):,} symbols, {errors} errors, {merged['gaps']} gaps"
              + (f", report {self.path}" if self.path else ""), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    return run_standalone(VerifyHandler, argv, prog="python -m workers.verify", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
