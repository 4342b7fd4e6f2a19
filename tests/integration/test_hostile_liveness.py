"""Issue 10, "also fix": a server that dribbles bytes, one that dies after each trade, one that
answers 429/503 with Retry-After, one that keeps writing after a violation. lb stays up, says
what happened, and its reconnects, log volume, CPU and shutdown time stay bounded."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import struct
import time

from tests.helpers.lb_feed import pipe_bytes
from tests.integration.feedgen import Feed
from tests.integration.hostile_helpers import (
    LOG_BOUND,
    assert_clean_log,
    count_lines,
    exact_pipes,
    feed_and_check,
    record,
    start,
    stop,
)
from tests.integration.hostile_server import HostileServer, Meter, acked, connected, rst, upgrade_reply
from tests.integration.polyserver import PolyServer, server_frame, status, text


def _stats(lb):
    return lb.stats() or {}


async def test_a_dribbling_server_is_not_alive(tmp_path, dump_worker):
    """One byte every 100 ms of a frame that never completes: liveness counts whole frames, so
    lb pings, gets no whole frame back, and reconnects."""
    feed = Feed(7)
    async with PolyServer() as server:
        lb = start(server, str(tmp_path), dump_worker,
                   options=["--ping-interval", "1", "--ping-timeout", "1"])
        conn = await server.next_connection()
        conn.answer_pings = False  # a pong would be a whole frame
        await feed_and_check(conn, feed, str(tmp_path))
        meter = Meter(lb.pid, lb.stderr_path)
        started = time.monotonic()
        wire = server_frame(0x1, b"[" + b" " * 10000 + b"]")
        with contextlib.suppress(ConnectionError, OSError):
            for byte in wire:
                if conn.closed.is_set() or conn.writer.is_closing() or time.monotonic() - started > 10:
                    break
                await conn.send(bytes((byte,)))
                await asyncio.sleep(0.1)
                if server.connections.qsize():
                    break
        conn2 = await server.next_connection(15)
        took = time.monotonic() - started
        await feed_and_check(conn2, feed, str(tmp_path))
        figures = {**meter.report(), "detected_after_s": took}
        record("also: 1 byte every 100 ms", figures)
        assert await stop(lb) == 0
    log = assert_clean_log(lb)
    assert took < 6, figures
    assert _stats(lb)["disconnects"].get("timeout", 0) == 1, log[-2000:]
    assert "no pong within" in log
    exact_pipes(str(tmp_path), feed)


async def test_one_trade_then_reset_backs_off(tmp_path, dump_worker):
    """Each connection subscribes, delivers one trade and is reset: the backoff does not reset on
    that trade (a connection must stream 0.5 s; a short one restarts the backoff at 0.5 s), so
    reconnects (and log lines) over 6 s stay few."""
    feed = Feed(7)
    one = [feed.frame(1) for _ in range(200)]

    async def upgrade(conn, head):
        subscribed = text(status("auth_success", "authenticated")) + text(status("success", "subscribed"))
        await conn.send(upgrade_reply(head) + connected() + subscribed
                        + text(one[min(server.attempts, len(one)) - 1]))
        await acked(conn)
        rst(conn)
        return False

    async with HostileServer(upgrade) as server:
        lb = start(server, str(tmp_path), dump_worker)
        meter = Meter(lb.pid, lb.stderr_path)
        await meter.sample_for(6.0)
        figures = {**meter.report(), "attempts": server.attempts}
        record("also: one trade then reset, 6 s", figures)
        assert lb.proc.poll() is None
        assert await stop(lb) == 0
    log = assert_clean_log(lb)
    assert 3 <= server.attempts <= 16, figures  # at most one every 0.4 s (500 ms - 20%)
    assert figures["log_bytes"] < LOG_BOUND, figures
    assert count_lines(log, r"reconnecting in") >= 3
    # what each connection delivered reached its pipe whole (the last one may have been cut by
    # the SIGTERM before lb read its trade)
    got = pipe_bytes(str(tmp_path), 7)
    expected = Feed(7)
    candidates = []
    for _ in range(server.attempts):
        candidates.append([bytes(e) for e in expected.expected])
        expected.frame(1)
    candidates.append([bytes(e) for e in expected.expected])
    assert got in candidates[-2:], "pipes differ from the trades sent"


async def test_retry_after_is_honoured(tmp_path, dump_worker):
    """HTTP 429 with Retry-After: 2, then 503 with Retry-After: 1: lb waits as asked."""
    feed = Feed(7)
    times: list[float] = []
    replies = [b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n",
               b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"]

    async def upgrade(conn, head):
        times.append(time.monotonic())
        if len(times) <= len(replies):
            await conn.send(replies[len(times) - 1])
            return False
        await conn.send(upgrade_reply(head))
        return True

    async with HostileServer(upgrade) as server:
        lb = start(server, str(tmp_path), dump_worker)
        conn = await server.next_connection(20)
        await feed_and_check(conn, feed, str(tmp_path))
        assert await stop(lb) == 0
    log = assert_clean_log(lb)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    record("also: 429/503 Retry-After", {"gap_429_s": gaps[0], "gap_503_s": gaps[1]})
    assert gaps[0] >= 1.9 and gaps[1] >= 0.9, gaps
    assert gaps[0] < 4 and gaps[1] < 3, gaps
    assert count_lines(log, r"Retry-After") == 2, log
    exact_pipes(str(tmp_path), feed)


async def test_a_huge_retry_after_is_bounded_and_sigterm_still_prompt(tmp_path, dump_worker):
    async def upgrade(conn, head):
        await conn.send(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 100000\r\n\r\n")
        return False

    async with HostileServer(upgrade) as server:
        lb = start(server, str(tmp_path), dump_worker)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while "Retry-After" not in lb.log() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert "honoured up to 60 s" in lb.log(), lb.log()
        t0 = time.monotonic()
        lb.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(lb.proc.wait, 10)
        took = time.monotonic() - t0
        lb.__exit__()
        record("also: Retry-After 100000 then SIGTERM", {"shutdown_s": took})
    assert rc == 0 and took < 1.5, took
    assert server.attempts == 1
    assert_clean_log(lb)


async def test_lb_lingers_after_its_close_frame_for_a_violation(tmp_path, dump_worker):
    """A server still writing when lb finds a violation still reads lb's close code (1002): lb
    drains the socket for at most LINGER (1 s) instead of resetting it."""
    feed = Feed(7)
    async with PolyServer() as server:
        lb = start(server, str(tmp_path), dump_worker)
        conn = await server.next_connection()
        await feed_and_check(conn, feed, str(tmp_path))
        meter = Meter(lb.pid, lb.stderr_path)
        junk = Feed(7, seed=5)
        flood = b"".join(text(f) for f in junk.frames(20, 50))
        await conn.send(server_frame(0x1, b"x", rsv=0x40))  # a reserved bit: protocol error
        loop = asyncio.get_running_loop()
        end = loop.time() + 3
        reset = None
        try:
            while loop.time() < end and not any(f.opcode == 0x8 for f in conn.received):
                conn.writer.write(flood)
                await conn.writer.drain()
                await asyncio.sleep(0.01)
        except (ConnectionError, OSError) as exc:
            reset = exc
        assert reset is None, f"lb reset the connection instead of lingering: {reset!r}"
        close = await conn.wait_frame(0x8, 5)
        assert close.payload[:2] == struct.pack(">H", 1002)
        conn2 = await server.next_connection(20)
        await feed_and_check(conn2, feed, str(tmp_path))
        figures = meter.report()
        record("also: close code seen by a server still writing", figures)
        assert await stop(lb) == 0
    log = assert_clean_log(lb)
    assert _stats(lb)["disconnects"].get("protocol", 0) == 1
    assert count_lines(log, r"disconnected \(protocol\)") == 1
    exact_pipes(str(tmp_path), feed)
