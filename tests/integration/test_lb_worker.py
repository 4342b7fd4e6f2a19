"""lb's worker: re-forked on the same pipes after it dies, starting on a message boundary;
crash loops back off; a missing executable is refused before connecting."""

from __future__ import annotations

import asyncio
import glob
import os
import signal
import struct
import sys

from harness.lb import LbProcess
from harness.wait import async_wait_for
from tests.integration.feedgen import Feed
from tests.integration.polyserver import PolyServer

HERE = os.path.dirname(os.path.abspath(__file__))
EXACT_WORKER = [sys.executable, os.path.join(HERE, "exact_worker.py")]
FAST = ["--stats-interval", "0"]


def boundaries(stream: bytes) -> list[int]:
    out = [0]
    pos = 0
    while pos < len(stream):
        pos += 4 + struct.unpack("<I", stream[pos : pos + 4])[0]
        out.append(pos)
    return out


async def test_sigkilled_worker_is_reforked_at_a_boundary(tmp_path):
    feed = Feed(1)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 1, str(tmp_path), EXACT_WORKER, options=FAST).start()
        first_pid = lb.ready()["worker_pid"]
        conn = await server.next_connection()
        frames = list(feed.frames(400, 250))  # 100k trades, written as fast as the socket takes
        sender = asyncio.ensure_future(_send_all(conn, frames))
        first_file = tmp_path / f"received.{first_pid}.bin"
        await async_wait_for(lambda: first_file.exists() and first_file.stat().st_size > 300_000, 20,
                             "the first worker to be busy")
        os.kill(first_pid, signal.SIGKILL)
        await sender
        expected = bytes(feed.expected[0])

        def all_there() -> bool:
            files = glob.glob(str(tmp_path / "received.*.bin"))
            return len(files) == 2 and sum(os.path.getsize(f) for f in files) >= len(expected) - 2000
        await async_wait_for(all_there, 30, "the new worker to catch up")
        stats = await async_wait_for(lambda: lb.stats().get("worker_restarts") == 1 and lb.stats(), 10,
                                     "the restart counted")
        second_pid = stats["worker_pid"]
        await async_wait_for(
            lambda: os.path.getsize(tmp_path / f"received.{second_pid}.bin") + first_file.stat().st_size
            + stats["discarded_bytes"] >= len(expected) - 200, 30, "everything delivered")
        assert await asyncio.to_thread(lb.stop) == 0
    old = first_file.read_bytes()
    new = (tmp_path / f"received.{second_pid}.bin").read_bytes()
    final = lb.stats()
    marks = boundaries(expected)
    start = len(expected) - len(new)
    assert expected.endswith(new), "the new worker got a clean tail of the stream"
    assert start in marks, "the new worker started on a message boundary"
    assert expected.startswith(old), "the dead worker got a clean head of the stream"
    lost = [m for m in range(len(marks) - 1) if marks[m] < start and marks[m + 1] > len(old)]
    assert len(lost) <= 1, f"lost {len(lost)} messages"
    # what lb discarded is the rest of the message the dead worker was reading, and nothing else
    assert final["discarded_messages"] == (1 if final["discarded_bytes"] else 0)
    assert final["discarded_bytes"] <= (marks[lost[0] + 1] - marks[lost[0]] if lost else 0)
    assert "killed by SIGKILL" in lb.log()


async def _send_all(conn, frames) -> None:
    for frame in frames:
        await conn.send_text(frame)


async def test_crash_loop_backs_off(tmp_path):
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 2, str(tmp_path), ["/bin/sh", "-c", "exit 7"], options=FAST)
        lb.start(wait_ready=None)
        await server.next_connection()
        await async_wait_for(lambda: lb.stats().get("worker_restarts", 0) >= 3, 20, "three restarts")
        log = lb.log()
        assert "exited with status 7" in log and "crash loop" in log
        stats = lb.stats()
        assert stats["worker_restarts"] < 8, "restarts are spaced out, not a busy loop"
        assert await asyncio.to_thread(lb.stop) == 0


def test_missing_executable_is_refused_before_connecting(tmp_path):
    lb = LbProcess("ws://127.0.0.1:9/stocks", 2, str(tmp_path), ["./no-such-worker"]).start(wait_ready=None)
    assert lb.wait(10) == 2
    assert "not found" in lb.log()
    lb2 = LbProcess("ws://127.0.0.1:9/stocks", 2, str(tmp_path / "missing"), ["/bin/cat"])
    lb2.start(wait_ready=None)
    assert lb2.wait(10) == 2
    assert "WORKDIR" in lb2.log()
