"""The reference handlers on payload bytes: verify's checks, stats' figures, log's files."""

from __future__ import annotations

import argparse
import io
import os
import zlib
from pathlib import Path

import pytest

from workers.files import trim_partial_line
from workers.framing import FramingError
from workers.handler import Handler, HandlerContext, PerMessage
from workers.log import LogHandler
from workers.registry import HandlerNotFound, load_handler
from workers.routing import pipe_for_symbol
from workers.stats import StatsDisplay, StatsHandler, merge_stats
from workers.verify import VerifyHandler, merge_reports

NPIPES = 31  # AAPL -> 26, MSFT -> 0, SPY -> 22, TSLA -> 11 (CONTRACTS.md)


def trade(sym: str, q: int, p: float = 10.0, s: int = 100) -> bytes:
    return b'{"ev":"T","sym":"%s","p":%r,"s":%d,"t":1764130000123,"q":%d}' % (
        sym.encode(), p, s, q)


def context(pipes: list[int], **options: object) -> HandlerContext:
    return HandlerContext(NPIPES, pipes, argparse.Namespace(**options), "test")


def verify(batches: list[tuple[int, list[bytes]]]) -> dict:
    handler = VerifyHandler(context(list(range(NPIPES))))
    for pipe, payloads in batches:
        handler.on_batch(pipe, payloads)
    return handler.snapshot()


def test_verify_clean_stream_matches_a_ledger_style_crc() -> None:
    aapl = [trade("AAPL", q) for q in range(100, 110)]
    report = verify([(26, aapl[:4]), (0, [trade("MSFT", 5)]), (26, aapl[4:])])
    assert report["errors"] == dict.fromkeys(report["errors"], 0)
    assert report["gaps"] == 0 and report["messages"] == 11
    entry = report["symbols"]["AAPL"]
    crc = 0
    for payload in aapl:
        crc = zlib.crc32(payload, crc)
    assert entry == {"count": 10, "first_q": 100, "last_q": 109, "crc32": crc, "pipe": 26}
    assert report["pipes"]["26"] == {"messages": 10, "bytes": sum(map(len, aapl))}
    assert report["npipes"] == NPIPES and report["version"] == 1


def test_verify_catches_misrouting() -> None:
    report = verify([(26, [trade("AAPL", 1)]), (3, [trade("AAPL", 2), trade("TSLA", 1)])])
    assert report["errors"]["misrouted"] == 2
    assert any("AAPL arrived on pipe 3, its hash names 26" in e for e in report["examples"])


def test_verify_catches_reordering_duplicates_and_counts_gaps() -> None:
    qs = [1, 2, 4, 3, 5, 5, 9, 8, 10]
    report = verify([(22, [trade("SPY", q) for q in qs])])
    errors = report["errors"]
    assert errors["out_of_order"] == 2  # 3 after 4, 8 after 9
    assert errors["duplicates"] == 1  # 5 twice
    assert report["gaps"] == 1 + 3  # 3 missing at 4 (arrives later), 6..8 missing at 9
    assert report["symbols"]["SPY"]["count"] == len(qs)
    assert report["symbols"]["SPY"]["last_q"] == 10


def test_verify_catches_bad_payloads_and_framing() -> None:
    handler = VerifyHandler(context([0]))
    handler.on_batch(0, [b"not json", b"[1,2]", b'{"ev":"T"}', b'{"sym":"MSFT"}'])
    handler.on_framing_error(0, FramingError("pipe 0", 40, "length 99999999"))
    errors = handler.snapshot()["errors"]
    assert errors["not_json_object"] == 2
    assert errors["no_symbol"] == 1
    assert errors["no_sequence"] == 1
    assert errors["framing"] == 1


def test_verify_restore_continues_the_checks_and_the_crc_chain() -> None:
    payloads = [trade("TSLA", q) for q in (1, 2, 3, 6)]
    first = VerifyHandler(context([11]))
    first.on_batch(11, payloads[:2])
    second = VerifyHandler(context([11]))
    second.restore(first.snapshot())
    second.on_batch(11, payloads[2:])
    one_process = VerifyHandler(context([11]))
    one_process.on_batch(11, payloads)
    whole = one_process.snapshot()
    assert second.snapshot() == whole
    assert whole["gaps"] == 2


def test_verify_merge_of_disjoint_processes() -> None:
    one = verify([(26, [trade("AAPL", 1), trade("AAPL", 3)])])
    two = verify([(0, [trade("MSFT", 7)]), (0, [trade("MSFT", 7)])])
    merged = merge_reports([one, two])
    assert merged["messages"] == 4 and merged["gaps"] == 1
    assert merged["errors"]["duplicates"] == 1
    assert set(merged["symbols"]) == {"AAPL", "MSFT"}
    assert merged["pipes"] == {**one["pipes"], **two["pipes"]}


def test_stats_figures_and_vwap() -> None:
    handler = StatsHandler(context([26]))
    handler.on_batch(26, [trade("AAPL", 1, 10.0, 100), trade("AAPL", 2, 20.0, 300), b"nope"])
    snapshot = handler.snapshot()
    assert snapshot["trades"] == 3 and snapshot["skipped"] == 1
    trades, volume, notional, last = snapshot["symbols"]["AAPL"]
    assert (trades, volume, last) == (2, 400, 20.0)
    assert notional / volume == pytest.approx(17.5)
    again = StatsHandler(context([26]))
    again.restore(snapshot)
    assert again.snapshot() == snapshot


def test_stats_display_redraws_in_place_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    display = StatsDisplay("lb-pool", 3, None, out)
    handler = StatsHandler(context([0, 26]))
    handler.on_batch(26, [trade("AAPL", q) for q in range(5)])
    handler.on_batch(0, [trade("MSFT", 1)])
    display.on_interval(merge_stats([handler.snapshot()]), 100.0)
    handler.on_batch(26, [trade("AAPL", q) for q in range(5, 10)])
    display.on_interval(merge_stats([handler.snapshot()]), 101.0)
    frames = out.getvalue().split("\x1b[")
    assert "AAPL" in frames[0] and "MSFT" in frames[0]
    assert out.getvalue().count("\x1b[J") == 1  # second frame erased the first
    assert "now 5/s" in out.getvalue()
    lines_first = frames[0].count("\n")
    assert f"\x1b[{lines_first}F" in out.getvalue()


def test_stats_display_one_line_per_interval_otherwise(tmp_path: Path) -> None:
    out = io.StringIO()
    summary = tmp_path / "summary.json"
    display = StatsDisplay("lb-pool", 3, str(summary), out)
    merged = merge_stats([{"trades": 7, "bytes": 700, "skipped": 0,
                           "symbols": {"AAPL": [7, 700, 7000.0, 10.0]}}])
    display.on_interval(merged, 1.0)
    display.on_interval(merged, 2.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith("lb-pool stats:") for line in lines)
    display.finish(merged, {"restarts": 0})
    assert "lb-pool summary: 7 trades" in out.getvalue()
    assert '"vwap": 10.0' in summary.read_text()


def test_log_writes_one_line_per_payload_per_pipe(tmp_path: Path) -> None:
    handler = LogHandler(context([0, 26], dir=str(tmp_path)))
    handler.on_batch(26, [trade("AAPL", 1), trade("AAPL", 2)])
    handler.on_batch(0, [b'{"sym":"MSFT",\n"q":1}'])
    handler.on_batch(26, [trade("AAPL", 3)])
    handler.close()
    assert (tmp_path / "pipe-26.jsonl").read_bytes() == b"".join(
        trade("AAPL", q) + b"\n" for q in (1, 2, 3))
    assert (tmp_path / "pipe-0.jsonl").read_bytes() == b'{"sym":"MSFT", "q":1}\n'


def test_log_trims_a_line_cut_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "pipe-3.jsonl"
    path.write_bytes(b'{"a":1}\n{"b":2}\n{"c":')
    fd = os.open(path, os.O_RDWR)
    trim_partial_line(fd)
    os.close(fd)
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n'
    path.write_bytes(b'{"no newline at all"')
    fd = os.open(path, os.O_RDWR)
    trim_partial_line(fd)
    os.close(fd)
    assert path.read_bytes() == b""


seen: list[tuple[int, bytes]] = []


def record(pipe: int, payload: bytes) -> None:
    seen.append((pipe, payload))


class Plain:
    """A user class that does not subclass Handler."""

    def __init__(self, context: HandlerContext) -> None:
        self.batches = 0

    def on_batch(self, pipe: int, payloads: list[bytes]) -> None:
        self.batches += 1


def test_load_handler_named_and_users() -> None:
    assert load_handler("verify") is VerifyHandler
    per_message = load_handler(f"{__name__}:record")
    assert issubclass(per_message, PerMessage)
    per_message(context([1])).on_batch(1, [b"{}", b"{ }"])
    assert seen[-2:] == [(1, b"{}"), (1, b"{ }")]
    plain = load_handler(f"{__name__}:Plain")
    assert issubclass(plain, Handler)
    handler = plain(context([0]))
    handler.on_batch(0, [])
    handler.on_tick(0.0)
    assert handler.batches == 1 and handler.snapshot() is None


@pytest.mark.parametrize("spec", ["nope", "no.such.module:f", f"{__name__}:missing",
                                  f"{__name__}:NPIPES", ":f"])
def test_load_handler_errors(spec: str) -> None:
    with pytest.raises(HandlerNotFound):
        load_handler(spec)


def test_routing_used_by_verify_is_the_contract() -> None:
    assert [pipe_for_symbol(s, NPIPES) for s in ("AAPL", "MSFT", "SPY", "TSLA")] == [26, 0, 22, 11]
