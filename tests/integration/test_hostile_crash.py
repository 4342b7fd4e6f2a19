"""A hostile server must not crash lb, wedge it, grow its memory without bound or lose what it
sent whole (issue 10, items 1 2 3 6 7). Each case: lb stays up and reconnects, says what
happened in one line, and its memory, CPU and log stay bounded."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import ssl
import struct

import pytest
import trustme

from harness.wait import async_wait_for
from tests.helpers.lb_feed import wait_delivered
from tests.integration.feedgen import Feed
from tests.integration.hostile_helpers import (
    LOG_BOUND,
    RSS_BOUND,
    assert_clean_log,
    exact_pipes,
    feed_and_check,
    record,
    start,
    stop,
)
from tests.integration.hostile_server import (
    HostileServer,
    Meter,
    acked,
    connected,
    cork,
    raw_fd,
    rst,
    upgrade_reply,
)
from tests.integration.polyserver import PolyServer, server_frame, text


def _stats(lb):
    return lb.stats() or {}


async def test_reset_right_after_the_101_is_a_reconnect(tmp_path, dump_worker):
    """Item 1: RST as lb sends auth (the 101 and trades glued to it, then RST): no crash, the
    glued trades delivered, reconnect."""
    feed = Feed(7)
    glued = [feed.frame(100) for _ in range(3)]
    resets = 3

    async def upgrade(conn, head):
        if server.attempts > resets:
            await conn.send(upgrade_reply(head))
            return True
        payload = upgrade_reply(head) + connected() + b"".join(text(f) for f in glued) if \
            server.attempts == 1 else upgrade_reply(head)
        await conn.send(payload)
        await acked(conn)
        rst(conn)
        return False

    async with HostileServer(upgrade) as server:
        lb = start(server, str(tmp_path), dump_worker)
        meter = Meter(lb.pid, lb.stderr_path)
        conn = await server.next_connection(30)
        assert lb.proc.poll() is None, "lb died"
        await feed_and_check(conn, feed, str(tmp_path))
        figures = meter.report()
        record("1 reset after 101", figures)
        assert await stop(lb) == 0
    log = assert_clean_log(lb)
    assert server.attempts >= resets + 1
    assert _stats(lb)["disconnects"].get("reset", 0) + _stats(lb)["disconnects"].get("eof", 0) >= resets
    assert figures["log_bytes"] < LOG_BOUND, log
    exact_pipes(str(tmp_path), feed)


async def test_pings_from_a_server_that_never_reads_keep_memory_bounded(tmp_path, dump_worker):
    """Item 2: the pongs lb cannot send are bounded; past the bound the connection ends."""
    feed = Feed(7)
    async with PolyServer() as server:
        lb = start(server, str(tmp_path), dump_worker)
        conn = await server.next_connection()
        await feed_and_check(conn, feed, str(tmp_path))
        conn.writer.transport.pause_reading()  # never read again
        meter = Meter(lb.pid, lb.stderr_path)
        ping = server_frame(0x9, b"p" * 125) * 200
        loop = asyncio.get_running_loop()
        end = loop.time() + 4.0
        with contextlib.suppress(ConnectionError, OSError):
            while loop.time() < end and not conn.writer.is_closing():
                conn.writer.write(ping)
                await conn.writer.drain()
                meter.sample()
        figures = meter.report()
        record("2 ping flood, server never reads", figures)
        conn2 = await server.next_connection(20)
        await feed_and_check(conn2, feed, str(tmp_path))
        assert await stop(lb) == 0
    log = assert_clean_log(lb)
    assert figures["rss_growth_mb"] * 2**20 < RSS_BOUND, figures
    assert "does not read" in log, log[-2000:]
    assert _stats(lb)["disconnects"].get("unread", 0) == 1
    exact_pipes(str(tmp_path), feed)


async def _fragments_until_closed(conn, first: bytes, piece: bytes, seconds: float, meter: Meter) -> bool:
    """Send ``first`` then ``piece`` over and over until lb closes or ``seconds`` pass."""
    await conn.send(first)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    with contextlib.suppress(ConnectionError, OSError):
        while loop.time() < end:
            if any(f.opcode == 0x8 for f in conn.received) or conn.closed.is_set():
                return True
            conn.writer.write(piece)
            await conn.writer.drain()
            meter.sample()
    return any(f.opcode == 0x8 for f in conn.received) or conn.closed.is_set()


async def test_endless_empty_fragments_end_the_connection(tmp_path, dump_worker):
    """Item 3: zero-length continuation frames count toward --max-message."""
    feed = Feed(7)
    async with PolyServer() as server:
        lb = start(server, str(tmp_path), dump_worker, options=["--max-message", "1M"])
        conn = await server.next_connection()
        await feed_and_check(conn, feed, str(tmp_path))
        meter = Meter(lb.pid, lb.stderr_path)
        closed = await _fragments_until_closed(conn, server_frame(0x1, b"[", fin=False),
                                               server_frame(0x0, b"", fin=False) * 4096, 8.0, meter)
        figures = meter.report()
        record("3a endless empty fragments", figures)
        assert closed, f"lb never ended the endless message: {figures}"
        close = await conn.wait_frame(0x8)
        assert close.payload[:2] == struct.pack(">H", 1009)
        conn2 = await server.next_connection(20)
        await feed_and_check(conn2, feed, str(tmp_path))
        assert await stop(lb) == 0
    log = assert_clean_log(lb)
    assert figures["rss_growth_mb"] * 2**20 < RSS_BOUND, figures
    assert figures["log_bytes"] < LOG_BOUND
    assert "exceeds --max-message" in log
    exact_pipes(str(tmp_path), feed)


async def test_a_message_in_one_byte_fragments_costs_its_size(tmp_path, dump_worker):
    """Item 3: a 1 MiB message in 1-byte fragments is delivered and costs memory of its size."""
    feed = Feed(7)
    async with PolyServer() as server:
        lb = start(server, str(tmp_path), dump_worker)
        conn = await server.next_connection()
        await feed_and_check(conn, feed, str(tmp_path))
        obj = b'{"ev":"T","sym":"AAPL","q":1,"pad":"' + b"x" * (1 << 20) + b'"}'
        message = b"[" + obj + b"]"
        feed.expect("AAPL", obj)
        meter = Meter(lb.pid, lb.stderr_path)
        wire = bytearray(server_frame(0x1, message[:1], fin=False))
        for i in range(1, len(message) - 1):
            wire += b"\x00\x01" + message[i : i + 1]
        wire += server_frame(0x0, message[-1:])
        sender = asyncio.ensure_future(conn.send(bytes(wire)))
        while not sender.done():
            meter.sample()
            await asyncio.sleep(0.05)
        await sender
        await wait_delivered(str(tmp_path), feed, 60)
        figures = meter.report()
        record("3b 1 MiB in 1-byte fragments", figures)
        assert await stop(lb) == 0
    assert_clean_log(lb)
    assert figures["rss_growth_mb"] < 32, figures
    exact_pipes(str(tmp_path), feed)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ctx, str(path)


async def test_trades_before_a_corrupt_tls_record_are_delivered(tmp_path, dump_worker, tls_server):
    """Item 6: valid TLS records then a corrupt one in the same segment: all trades delivered."""
    ctx, cafile = tls_server
    feed = Feed(7)
    async with PolyServer(ssl_context=ctx) as server:
        lb = start(server, str(tmp_path), dump_worker, url=server.url("localhost"),
                   options=["--cafile", cafile, "--tls", "userspace"])
        conn = await server.next_connection()
        await feed_and_check(conn, feed, str(tmp_path))
        meter = Meter(lb.pid, lb.stderr_path)
        cork(conn, True)
        for frame in feed.frames(3, 100):
            await conn.send_text(frame)
        inner = conn.writer.transport._ssl_protocol._transport  # the TCP transport under TLS
        await async_wait_for(lambda: conn.writer.transport.get_write_buffer_size() == 0
                             and inner.get_write_buffer_size() == 0, 5, "records in the kernel")
        import os
        os.write(raw_fd(conn), b"\x17\x03\x03\x00\x40" + b"\xee" * 0x40)  # application data, garbage
        cork(conn, False)
        conn2 = await server.next_connection(20)
        await wait_delivered(str(tmp_path), feed)
        await feed_and_check(conn2, feed, str(tmp_path))
        figures = meter.report()
        record("6 corrupt TLS record after 300 trades", figures)
        assert await stop(lb) == 0
    log = assert_clean_log(lb)
    assert _stats(lb)["disconnects"].get("tls", 0) == 1, log
    exact_pipes(str(tmp_path), feed)


def _vm_size(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


async def test_a_failed_allocation_ends_the_connection(tmp_path, dump_worker):
    """Item 7: with lb's address space capped, a frame header it cannot hold is one error line
    and a reconnect, not a wedge."""
    feed = Feed(7)
    async with PolyServer() as server:
        lb = start(server, str(tmp_path), dump_worker, options=["--max-message", "1G"])
        conn = await server.next_connection()
        await feed_and_check(conn, feed, str(tmp_path))
        cap = _vm_size(lb.pid) + 256 * 2**20
        resource.prlimit(lb.pid, resource.RLIMIT_AS, (cap, cap))
        meter = Meter(lb.pid, lb.stderr_path)
        await conn.send(b"\x82\x7f" + struct.pack(">Q", 600 * 2**20) + b"\x00" * 4096)
        try:
            conn2 = await server.next_connection(15)
        finally:
            await meter.sample_for(0.5)
            figures = meter.report()
            record("7 allocation failure", figures)
        await feed_and_check(conn2, feed, str(tmp_path))
        assert await stop(lb) == 0
    log = assert_clean_log(lb)
    assert "cannot allocate" in log, log[-2000:]
    assert figures["log_bytes"] < LOG_BOUND
    assert figures["cpu_s"] < 5
    exact_pipes(str(tmp_path), feed)
