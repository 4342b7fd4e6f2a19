"""Slow workers and backpressure, eviction, unreachable servers, resource hygiene, bad arguments."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from balancer.causes import Cause
from harness.lb import LbProcess
from harness.sim import SimProcess
from harness.wait import async_wait_for, wait_for
from tests.helpers.lb_feed import pipe_bytes, wait_delivered
from tests.integration.feedgen import Feed
from tests.integration.polyserver import PolyServer

HERE = os.path.dirname(os.path.abspath(__file__))
FAST = ["--stats-interval", "0"]


async def stop(lb: LbProcess) -> int:
    try:
        return await asyncio.to_thread(lb.stop)
    finally:
        lb.__exit__()


async def test_slow_worker_costs_only_its_own_backlog_then_backpressure(tmp_path):
    fast_file = tmp_path / "go-fast"
    worker = [sys.executable, os.path.join(HERE, "slow_worker.py"), "--rate", "300000",
              "--fast-file", str(fast_file)]
    feed = Feed(2)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 2, str(tmp_path), worker,
                       options=[*FAST, "--pipe-size", "64K", "--max-backlog", "2M"]).start(wait_ready=None)
        conn = await server.next_connection()
        frames = list(feed.frames(120, 500))  # ~7 MB, about half of it for the slow pipe 0
        sender = asyncio.ensure_future(_send_all(conn, frames))

        # the fast pipe is served while the slow one lags: the socket keeps being read
        def fast_pipe_done() -> bool:
            return len(pipe_bytes(str(tmp_path), 2)[1]) >= len(feed.expected[1]) * 0.5
        await async_wait_for(fast_pipe_done, 30, "the fast pipe to flow")
        assert len(pipe_bytes(str(tmp_path), 2)[0]) < len(feed.expected[0]) * 0.5
        stats = await async_wait_for(lambda: lb.stats().get("backpressure_pauses", 0) >= 1 and lb.stats(),
                                     30, "backpressure to engage")
        assert stats["largest_backlog"] > 0
        fast_file.touch()
        await asyncio.wait_for(sender, 60)
        await wait_delivered(str(tmp_path), feed, timeout=60)  # nothing dropped, order kept
        final = await async_wait_for(lambda: not lb.stats().get("paused", True) and lb.stats(), 10,
                                     "backpressure to release")
        assert final["largest_backlog"] == 0 and final["trades"] == feed.trades
        assert await stop(lb) == 0
    log = lb.log()
    assert "backpressure:" in log and "backpressure released" in log


async def _send_all(conn, frames) -> None:
    for frame in frames:
        await conn.send_text(frame)


def test_eviction_waits_long_so_two_balancers_never_loop(tmp_path):
    sim = SimProcess(["--rate", "2k/s", "--no-tls", "-q"]).start()
    first = LbProcess(sim.url, 2, str(tmp_path), ["/bin/cat"], key="shared", options=FAST)
    second = LbProcess(sim.url, 2, str(tmp_path), ["/bin/cat"], key="shared", options=FAST)
    try:
        first.start()
        wait_for(lambda: first.stats().get("connected"), 15, "the first balancer to stream")
        second.start()
        wait_for(lambda: first.stats().get("disconnects", {}).get(Cause.EVICTED), 15, "the eviction")
        wait_for(lambda: second.stats().get("connected"), 15, "the second balancer to stream")
        assert "EVICTED" in first.log() and "Waiting 3" in first.log()
        # the evicted one stays away (>= 30 s): no eviction ping-pong meanwhile
        connects = first.stats()["connects"]
        try:
            wait_for(lambda: first.stats().get("connects", 0) > connects, 5, "a reconnect")
            pytest.fail("the evicted balancer reconnected within 5 s")
        except AssertionError as exc:
            assert "timed out" in str(exc)
        assert second.stats()["disconnects"].get(Cause.EVICTED, 0) == 0
        assert first.stop() == 0 and second.stop() == 0
    finally:
        first.__exit__()
        second.__exit__()
        sim.cleanup()


@pytest.mark.parametrize(("url", "message"), [
    ("ws://no-such-host.invalid:1234/stocks", "cannot resolve"),
    ("ws://127.0.0.1:1/stocks", "Connect call failed"),
])
def test_unreachable_server_retries_with_backoff_and_no_busy_loop(tmp_path, url, message):
    lb = LbProcess(url, 2, str(tmp_path), ["/bin/cat"], options=FAST).start()
    try:
        wait_for(lambda: lb.stats().get("connects", 0) >= 4, 20, "four attempts")
        before = lb.stats()
        wait_for(lambda: lb.stats().get("uptime", 0) >= before["uptime"] + 3, 10, "3 more seconds")
        after = lb.stats()
        cpu = (after["cpu_user"] + after["cpu_system"]) - (before["cpu_user"] + before["cpu_system"])
        assert cpu < 0.3, f"lb used {cpu:.2f} s of CPU in 3 s while the server was unreachable"
        assert after["connects"] - before["connects"] <= 4, "backoff spaces the attempts out"
        assert message in lb.log()
        assert lb.stop() == 0
    finally:
        lb.__exit__()


def children_of(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append((int(entry), fields[0]))
    return out


async def test_no_fd_or_memory_growth_and_no_zombies_across_100_reconnects(tmp_path, dump_worker):
    feed = Feed(3)
    async with PolyServer() as server:
        # LB_HEALTHY_AFTER=0: one delivered message counts as a healthy connection, so the next
        # reconnect is immediate (by default it takes 10 s streaming, see test_hostile_liveness)
        lb = LbProcess(server.url(), 3, str(tmp_path), dump_worker, options=FAST,
                       env={**os.environ, "LB_HEALTHY_AFTER": "0"}).start(wait_ready=None)
        samples = {}
        for n in range(1, 101):
            conn = await server.next_connection()
            await conn.send_text(feed.frame(5))  # data delivered: the next reconnect is immediate
            expected = sum(map(len, feed.expected))

            def delivered(expected: int = expected) -> bool:
                return sum(map(len, pipe_bytes(str(tmp_path), 3))) == expected
            await async_wait_for(delivered, 10, "delivery")
            if n in (10, 100):
                samples[n] = await async_wait_for(
                    lambda n=n: lb.stats().get("connects") == n and lb.stats(), 5, "fresh stats")
            conn.reset()
        await wait_delivered(str(tmp_path), feed)
        assert all(state != "Z" for _, state in children_of(lb.pid)), "a zombie child"
        assert await stop(lb) == 0
    assert samples[100]["open_fds"] == samples[10]["open_fds"]
    assert samples[100]["rss"] <= samples[10]["rss"] * 1.10, (samples[10]["rss"], samples[100]["rss"])


@pytest.mark.parametrize(("args", "message"), [
    (["k", "ws://h/s", "abc", ".", "/bin/cat"], "NPIPES must be a whole number"),
    (["k", "ws://h/s", "0", ".", "/bin/cat"], "NPIPES must be between 1"),
    (["k", "http://h/s", "2", ".", "/bin/cat"], "scheme must be ws or wss"),
    (["--no-such-option", "k", "ws://h/s", "2", ".", "/bin/cat"], "unrecognized arguments"),
    (["--ping-interval", "-1", "k", "ws://h/s", "2", ".", "/bin/cat"], "--ping-interval"),
    (["--pipe-size", "lots", "k", "ws://h/s", "2", ".", "/bin/cat"], "not a size"),
    (["--tls", "fast", "k", "ws://h/s", "2", ".", "/bin/cat"], "invalid choice"),
    (["k", "ws://h/s", "2"], "required"),
    (["", "ws://h/s", "2", ".", "/bin/cat"], "API key is empty"),
    (["-", "ws://h/s", "2", ".", "/bin/cat"], "POLYGON_API_KEY"),
    (["--cafile", "/nonexistent", "k", "wss://h/s", "2", ".", "/bin/cat"], "--cafile"),
    (["--max-message", "1024G", "k", "ws://h/s", "2", ".", "/bin/cat"], "more than this machine can hold"),
])
def test_bad_arguments_one_line_and_exit_2(args, message):
    env = {k: v for k, v in os.environ.items() if k not in ("POLYGON_API_KEY", "MASSIVE_API_KEY")}
    proc = subprocess.run([sys.executable, "-m", "balancer", *args], capture_output=True, text=True,
                          timeout=20, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "balancer", "--help"], capture_output=True, text=True,
                         timeout=20).stdout
    for option in ("--subscribe", "--cafile", "--tls", "--ping-interval", "--ping-timeout", "--pipe-size",
                   "--max-backlog", "--max-message", "--stats-interval", "--record", "--verbose",
                   "--quiet", "--stats-file", "--ready-file", "--shutdown-timeout", "--connect-timeout"):
        assert option in out
    assert "visible to other local users" in out
