"""Valid (or merely odd) input a hostile server can send must be routed by one rule whatever the
layout, and the server's text must not write lb's log (issue 10, items 4 5 8 9). Each case: lb
stays connected (or reconnects), the trades before and after are delivered whole, nothing is
misrouted, memory, CPU and log volume stay bounded."""

from __future__ import annotations

import json

import pytest

from harness.wait import async_wait_for
from tests.helpers.lb_feed import wait_delivered
from tests.integration.feedgen import Feed
from tests.integration.hostile_helpers import (
    LOG_BOUND,
    RSS_BOUND,
    assert_clean_log,
    count_lines,
    exact_pipes,
    feed_and_check,
    record,
    start,
    stop,
)
from tests.integration.hostile_server import Meter
from tests.integration.polyserver import PolyServer, server_frame

NORMAL = b'{"ev":"T","sym":"MSFT","i":"1","x":4,"p":1.5,"s":10,"t":1700000000000}'


async def _route_case(tmp_path, worker, case: str, objects: list[tuple[str, bytes]]) -> None:
    """Send ``objects`` (expected symbol, bytes) after a normal trade, in a compact message and
    in one with a space after each comma, then a normal feed: every object in its sym's pipe."""
    feed = Feed(7)
    async with PolyServer() as server:
        lb = start(server, str(tmp_path), worker)
        conn = await server.next_connection()
        await feed_and_check(conn, feed, str(tmp_path))
        meter = Meter(lb.pid, lb.stderr_path)
        for sep in (b",", b", "):
            feed.expect("MSFT", NORMAL)
            for sym, obj in objects:
                feed.expect(sym, obj)
            await conn.send_text(b"[" + sep.join([NORMAL, *(obj for _, obj in objects)]) + b"]")
        await feed_and_check(conn, feed, str(tmp_path), frames=2, per_frame=10)
        figures = meter.report()
        record(case, figures)
        assert server.count == 1, "lb reconnected: the message ended the connection"
        assert await stop(lb) == 0
    log = assert_clean_log(lb)
    assert "badjson" not in log and "disconnected" not in log.replace("disconnected (shutdown)", ""), log
    assert figures["rss_growth_mb"] * 2**20 < RSS_BOUND and figures["log_bytes"] < LOG_BOUND, figures
    exact_pipes(str(tmp_path), feed)


async def test_an_escaped_quote_in_a_key_does_not_misroute(tmp_path, dump_worker):
    """Item 4: {"evabcde\\"sym":"XYZ","sym":"AAPL",...} goes to AAPL's pipe, not XYZ's."""
    await _route_case(tmp_path, dump_worker, "4 escaped quote before sym",
                      [("AAPL", b'{"evabcde\\"sym":"XYZ","sym":"AAPL","p":2,"s":1}')])


async def test_duplicate_sym_first_key_wins_on_every_path(tmp_path, dump_worker):
    """Item 5: the first sym key routes, as in the C original, compact or not."""
    await _route_case(tmp_path, dump_worker, "5 duplicate sym",
                      [("AAPL", b'{"ev":"T","sym":"AAPL","sym":"XYZ","p":2,"s":1}'),
                       ("IBM", b'{"ev":"T","sym":"IBM","p":3,"sym":"ZZZZ"}')])


async def test_invalid_utf8_passes_through_on_every_path(tmp_path, dump_worker):
    """Item 8: bytes that are not UTF-8 pass byte-identical in any layout; nothing is lost."""
    await _route_case(tmp_path, dump_worker, "8 invalid UTF-8",
                      [("AAPL", b'{"ev":"T","sym":"AAPL","c":"\xff\xfe\xc3","p":2}'),
                       ("\udcc3Z", b'{"ev":"T","sym":"\xc3Z","p":3}')])


def _log_lines(text: str) -> list[str]:
    return text.splitlines()


async def test_unroutable_flood_is_rate_limited_and_named(tmp_path, dump_worker):
    """Item 9: 100,000 objects whose sym is not a string: a few lines saying what the sym is,
    then one count line, not 100,000 lines."""
    feed = Feed(7)
    async with PolyServer() as server:
        lb = start(server, str(tmp_path), dump_worker)
        conn = await server.next_connection()
        await feed_and_check(conn, feed, str(tmp_path))
        meter = Meter(lb.pid, lb.stderr_path)
        for kind in (b"null", b"42"):
            one = b'{"ev":"T","sym":' + kind + b',"p":1}'
            for _ in range(10):
                await conn.send_text(b"[" + b",".join([one] * 5000) + b"]")
        await feed_and_check(conn, feed, str(tmp_path), frames=2, per_frame=10)
        await async_wait_for(lambda: count_lines(lb.log(), "more in the last 5 s") == 2, 15, "count lines")
        figures = meter.report()
        record("9a 100,000 objects without a string sym", figures)
        assert server.count == 1
        assert await stop(lb) == 0
    log = assert_clean_log(lb)
    assert count_lines(log, r"not routed") <= 6, log[-3000:]  # 3 of each kind
    assert "with sym null" in log and "with sym a number (42)" in log, log[-3000:]
    assert count_lines(log, r"\.\.\. 49,997 more in the last 5 s") == 2, log[-3000:]
    assert figures["log_bytes"] < LOG_BOUND, figures
    assert figures["rss_growth_mb"] * 2**20 < RSS_BOUND, figures
    exact_pipes(str(tmp_path), feed)


@pytest.mark.parametrize("how", ["huge status", "forged line"])
async def test_server_text_in_the_log_is_escaped_and_cut(tmp_path, dump_worker, how):
    """Item 9: a 4 MB status message is not a 4 MB line; a newline in it cannot forge a line."""
    feed = Feed(7)
    forged = "lb: disconnected (auth_failed): FORGED LINE"
    message = "x" * (4 << 20) if how == "huge status" else "bye\n" + forged + "\r\n" + forged
    async with PolyServer() as server:
        lb = start(server, str(tmp_path), dump_worker)
        conn = await server.next_connection()
        await feed_and_check(conn, feed, str(tmp_path))
        meter = Meter(lb.pid, lb.stderr_path)
        await conn.send_text(json.dumps([{"ev": "status", "status": "info", "message": message}]).encode())
        reason = ("x\n" + forged)[:100].encode()
        await conn.send(server_frame(0x8, b"\x03\xe8" + reason))
        conn2 = await server.next_connection(20)
        await feed_and_check(conn2, feed, str(tmp_path))
        figures = meter.report()
        record(f"9b {how}", figures)
        assert await stop(lb) == 0
    log = assert_clean_log(lb)
    lines = _log_lines(log)
    assert not any(line.startswith(forged) for line in lines), log[-3000:]
    assert max(map(len, lines)) <= 1200, max(map(len, lines))
    assert "status info: " in log and "disconnected (close)" in log, log[-3000:]
    assert figures["log_bytes"] < LOG_BOUND, figures
    exact_pipes(str(tmp_path), feed)


async def test_trades_after_an_invalid_utf8_message_arrive(tmp_path, dump_worker):
    """Item 8 (the loss it caused): the trades after an invalid-UTF-8 spaced message arrive."""
    feed = Feed(7)
    async with PolyServer() as server:
        lb = start(server, str(tmp_path), dump_worker)
        conn = await server.next_connection()
        await feed_and_check(conn, feed, str(tmp_path))
        obj = b'{"ev":"T","sym":"AAPL","c":"\x80"}'
        feed.expect("AAPL", obj)
        await conn.send_text(b"[" + obj + b", " + NORMAL + b"]")
        feed.expect("MSFT", NORMAL)
        for frame in feed.frames(20, 1):
            await conn.send_text(frame)
        await wait_delivered(str(tmp_path), feed)
        assert server.count == 1
        assert await stop(lb) == 0
    assert_clean_log(lb)
    exact_pipes(str(tmp_path), feed)
