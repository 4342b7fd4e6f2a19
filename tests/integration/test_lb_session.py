"""lb's connection life against the scriptable server: TLS, reconnects, auth, ping/pong,
half-open detection, protocol violations, status events, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
import time

import pytest
import trustme

from balancer.causes import Cause
from harness.lb import LbProcess
from harness.wait import async_wait_for
from tests.helpers.lb_feed import wait_delivered
from tests.integration.feedgen import Feed
from tests.integration.polyserver import PolyServer, server_frame, status, text

FAST = ["--stats-interval", "0", "--connect-timeout", "5"]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    other = tmp_path_factory.mktemp("other") / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    return ctx, str(path), str(other)


async def stop(lb: LbProcess) -> int:
    try:
        return await asyncio.to_thread(lb.stop)
    finally:
        lb.__exit__()


async def test_wss_userspace_delivers_and_reports_tls(tmp_path, dump_worker, tls_files):
    ctx, cafile, _ = tls_files
    feed = Feed(5)
    async with PolyServer(ssl_context=ctx) as server:
        lb = LbProcess(server.url("localhost"), 5, str(tmp_path), dump_worker,
                       options=[*FAST, "--cafile", cafile, "--tls", "userspace"]).start(wait_ready=None)
        conn = await server.next_connection()
        for frame in feed.frames(20, 300):
            await conn.send_text(frame)
        await wait_delivered(str(tmp_path), feed)
        stats = await async_wait_for(lambda: lb.stats().get("connected") and lb.stats(), 10, "stats")
        assert stats["tls"].startswith("userspace TLSv1.3")
        assert await stop(lb) == 0


async def test_wrong_ca_is_refused_and_retried_with_backoff(tmp_path, dump_worker, tls_files):
    ctx, _, other_ca = tls_files
    async with PolyServer(ssl_context=ctx) as server:
        lb = LbProcess(server.url("localhost"), 2, str(tmp_path), dump_worker,
                       options=[*FAST, "--cafile", other_ca, "--tls", "userspace"])
        lb.start(wait_ready=None)
        def refused_thrice():
            stats = lb.stats()
            return stats.get("disconnects", {}).get(Cause.TLS, 0) >= 3 and stats
        stats = await async_wait_for(refused_thrice, 20, "three refused TLS handshakes")
        assert server.count == 0 and stats["trades"] == 0
        assert "certificate verification failed" in lb.log()
        assert await stop(lb) == 0


async def test_wrong_host_name_is_refused(tmp_path, dump_worker):
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("feed.example.test").configure_cert(ctx)  # valid, but not for localhost
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    async with PolyServer(ssl_context=ctx) as server:
        lb = LbProcess(server.url("localhost"), 2, str(tmp_path), dump_worker,
                       options=[*FAST, "--cafile", str(cafile), "--tls", "userspace"]).start(wait_ready=None)
        await async_wait_for(lambda: lb.stats().get("disconnects", {}).get(Cause.TLS, 0) >= 1, 20,
                             "a refusal")
        assert server.count == 0
        assert await stop(lb) == 0
    assert "localhost" in lb.log() and "certificate verification failed" in lb.log()


async def test_reconnects_after_reset_and_close_without_losing_delivered_data(tmp_path, dump_worker):
    feed = Feed(4)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 4, str(tmp_path), dump_worker, options=FAST).start(wait_ready=None)
        conn = await server.next_connection()
        for frame in feed.frames(5, 100):
            await conn.send_text(frame)
        await wait_delivered(str(tmp_path), feed)
        conn.reset()
        t0 = time.monotonic()
        conn = await server.next_connection()
        assert time.monotonic() - t0 < 3, "first reconnect is immediate"
        for frame in feed.frames(5, 100):
            await conn.send_text(frame)
        await conn.send(server_frame(0x8, struct.pack(">H", 1001) + b"going away"))
        close = await conn.wait_frame(0x8)
        assert close.payload[:2] == struct.pack(">H", 1001)  # lb answers the close
        conn = await server.next_connection()
        for frame in feed.frames(5, 100):
            await conn.send_text(frame)
        await wait_delivered(str(tmp_path), feed)
        lb.stats()
        assert await stop(lb) == 0
    final = lb.stats()
    assert final["trades"] == feed.trades
    assert final["disconnects"].get(Cause.RESET, 0) + final["disconnects"].get(Cause.EOF, 0) >= 1
    assert final["disconnects"].get(Cause.CLOSE) == 1
    assert final["worker_restarts"] == 0 and final["worker_starts"] == 1


async def test_resubscribes_after_reconnect_with_the_same_params(tmp_path, dump_worker):
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 2, str(tmp_path), dump_worker,
                       options=[*FAST, "--subscribe", "T.AAPL,T.MSFT"]).start(wait_ready=None)
        conn = await server.next_connection()
        assert conn.subscribed == ["T.AAPL", "T.MSFT"]
        conn.reset()
        conn = await server.next_connection()
        assert conn.subscribed == ["T.AAPL", "T.MSFT"] and conn.key == "test-key"
        assert await stop(lb) == 0


async def test_auth_failed_exits_3_after_one_retry(tmp_path, dump_worker):
    async with PolyServer(keys={"good"}) as server:
        lb = LbProcess(server.url(), 2, str(tmp_path), dump_worker, key="bad-key-xyz", options=FAST)
        lb.start(wait_ready=None)
        code = await asyncio.to_thread(lb.wait, 30)
        assert code == 3
        assert server.count == 2  # the first try and exactly one retry
    assert "authentication failed" in lb.log()
    assert "bad-key-xyz" not in lb.log()  # the key is never logged


async def test_key_from_environment_and_not_in_worker_env(tmp_path):
    env_dump = tmp_path / "env.txt"
    worker = ["/bin/sh", "-c", f'env > {env_dump}; cat >/dev/null', "sh"]
    async with PolyServer(keys={"secret-key-123"}) as server:
        env = dict(os.environ, POLYGON_API_KEY="secret-key-123")
        lb = LbProcess(server.url(), 1, str(tmp_path), worker, key="-", options=FAST, env=env).start()
        conn = await server.next_connection()
        assert conn.key == "secret-key-123"
        await async_wait_for(lambda: env_dump.exists() and env_dump.read_text(), 10, "the worker's env")
        assert "secret-key-123" not in env_dump.read_text()
        assert await stop(lb) == 0
    assert "secret-key-123" not in lb.log()


async def test_answers_pings_with_the_same_payload(tmp_path, dump_worker):
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 2, str(tmp_path), dump_worker, options=FAST).start(wait_ready=None)
        conn = await server.next_connection()
        await conn.send(server_frame(0x9, b"are you there"))
        pong = await conn.wait_frame(0xA)
        assert pong.payload == b"are you there"
        assert await stop(lb) == 0


async def test_half_open_connection_is_detected(tmp_path, dump_worker):
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 2, str(tmp_path), dump_worker,
                       options=[*FAST, "--ping-interval", "0.5", "--ping-timeout", "0.5"])
        lb.start(wait_ready=None)
        conn = await server.next_connection()
        conn.answer_pings = False  # the peer is gone but TCP is still open: silence
        ping = await conn.wait_frame(0x9, timeout=5)
        assert ping.payload
        t0 = time.monotonic()
        await server.next_connection(timeout=10)
        assert time.monotonic() - t0 < 5
        stats = lb.stats()
        assert await stop(lb) == 0
    assert lb.stats()["ping_timeouts"] >= 1 or stats.get("ping_timeouts", 0) >= 1


async def test_pings_answered_keep_the_connection(tmp_path, dump_worker):
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 2, str(tmp_path), dump_worker,
                       options=[*FAST, "--ping-interval", "0.3", "--ping-timeout", "0.5"])
        lb.start(wait_ready=None)
        await server.next_connection()
        await async_wait_for(lambda: lb.stats().get("pongs", 0) >= 3, 10, "three pongs")
        assert server.count == 1
        assert await stop(lb) == 0


@pytest.mark.parametrize(
    ("bad", "cause"),
    [
        (server_frame(0x1, b"x", rsv=0x40), "protocol"),
        (bytes((0x81, 0x81)) + b"\0\0\0\0x", "protocol"),  # a masked server frame
        (server_frame(0x3, b""), "protocol"),
        (server_frame(0x9, b"p", fin=False), "protocol"),
        (text(b"this is not json"), "badjson"),
        (text(b'{"ev":"T","sym":"AAPL"}'), "badjson"),
    ],
)
async def test_violations_end_the_connection_but_keep_earlier_data(tmp_path, dump_worker, bad, cause):
    feed = Feed(3)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 3, str(tmp_path), dump_worker, options=FAST).start(wait_ready=None)
        conn = await server.next_connection()
        frames = list(feed.frames(3, 50))
        await conn.send(b"".join(text(f) for f in frames) + bad + text(Feed(3, seed=9).frame(10)))
        await wait_delivered(str(tmp_path), feed)  # the later frame never arrives in a pipe
        await server.next_connection()
        stats = await async_wait_for(lambda: lb.stats().get("disconnects", {}).get(cause) and lb.stats(),
                                     10, f"a {cause} disconnect counted")
        assert stats["trades"] == feed.trades
        assert await stop(lb) == 0


async def test_oversized_message_is_refused(tmp_path, dump_worker):
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 2, str(tmp_path), dump_worker,
                       options=[*FAST, "--max-message", "1000"]).start(wait_ready=None)
        conn = await server.next_connection()
        await conn.send_text(Feed(2).frame(100))
        close = await conn.wait_frame(0x8)
        assert close.payload[:2] == struct.pack(">H", 1009)
        await server.next_connection()
        assert await stop(lb) == 0
    assert "exceeds --max-message" in lb.log()


async def test_split_and_fragmented_frames_with_interleaved_control(tmp_path, dump_worker):
    feed = Feed(3)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 3, str(tmp_path), dump_worker, options=FAST).start(wait_ready=None)
        conn = await server.next_connection()
        payload = feed.frame(200)
        third = len(payload) // 3
        stream = (server_frame(0x1, payload[:third], fin=False) + server_frame(0x9, b"mid")
                  + server_frame(0x0, payload[third : 2 * third], fin=False)
                  + server_frame(0x0, payload[2 * third :]) + text(feed.frame(10)))
        for i in range(0, len(stream), 7):  # dribble it out in 7-byte writes
            await conn.send(stream[i : i + 7])
        await wait_delivered(str(tmp_path), feed)
        assert (await conn.wait_frame(0xA)).payload == b"mid"
        assert await stop(lb) == 0


async def test_status_events_are_logged_never_piped(tmp_path, dump_worker):
    feed = Feed(2)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 2, str(tmp_path), dump_worker, options=FAST).start(wait_ready=None)
        conn = await server.next_connection()
        await conn.send_text(status("error", "something odd"))
        await conn.send_text(feed.frame(10))
        await wait_delivered(str(tmp_path), feed)
        assert await stop(lb) == 0
    assert "something odd" in lb.log()


async def test_sigterm_flushes_and_worker_sees_eof(tmp_path, dump_worker):
    feed = Feed(4)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 4, str(tmp_path), dump_worker, options=FAST).start(wait_ready=None)
        conn = await server.next_connection()
        for frame in feed.frames(30, 500):
            await conn.send_text(frame)
        await async_wait_for(lambda: lb.stats().get("trades") == feed.trades, 20, "all routed")
        code = await stop(lb)
        close = await conn.wait_frame(0x8)
        assert close.payload[:2] == struct.pack(">H", 1001)
    assert code == 0
    assert (tmp_path / "done.json").exists()
    await wait_delivered(str(tmp_path), feed, timeout=1)
