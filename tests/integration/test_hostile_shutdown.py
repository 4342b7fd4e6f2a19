"""SIGTERM is prompt (<= 1 s, asserted with margin for a loaded machine) in every phase of a
connection: TCP connect, TLS handshake, upgrade, backoff (issue 10 item 10, issue 11 item 8);
and while backpressure has paused reading, lb still closes with a close frame (issue 11 item 9)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import sys
import time

import pytest

from harness.lb import LbProcess
from harness.wait import async_wait_for
from tests.integration.hostile_helpers import assert_clean_log, record
from tests.integration.hostile_server import HostileServer
from tests.integration.polyserver import PolyServer

PROMPT = 2.0  # asserted bound; the figure recorded is the measured one (<= 1 s on an idle machine)
SLOW_TIMEOUTS = ["--stats-interval", "0", "--connect-timeout", "25"]
HERE = os.path.dirname(os.path.abspath(__file__))


async def _timed_stop(lb: LbProcess) -> tuple[int, float]:
    t0 = time.monotonic()
    try:
        code = await asyncio.to_thread(lb.stop, 30.0)
    finally:
        lb.__exit__()
    return code, time.monotonic() - t0


def _assert_prompt(lb: LbProcess, case: str, code: int, took: float) -> None:
    """lb stopped cleanly within PROMPT seconds of SIGTERM, with a clean log."""
    record(case, {"shutdown_s": took})
    assert code == 0
    assert took < PROMPT, f"SIGTERM took {took:.2f} s"
    assert_clean_log(lb)


async def test_sigterm_during_a_hanging_upgrade_is_prompt(tmp_path, dump_worker):
    async def hang(conn, head):
        await asyncio.sleep(60)
        return False

    async with HostileServer(hang) as server:
        lb = LbProcess(server.url(), 3, str(tmp_path), dump_worker, options=SLOW_TIMEOUTS).start(None)
        await async_wait_for(lambda: server.requests, 20, "lb's upgrade request")
        await asyncio.sleep(0.3)
        code, took = await _timed_stop(lb)
    _assert_prompt(lb, "10 SIGTERM in the upgrade", code, took)


async def test_sigterm_during_a_silent_tls_handshake_is_prompt(tmp_path, dump_worker):
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    loop.add_reader(listener.fileno(), lambda: accepted.append(listener.accept()[0]))
    port = listener.getsockname()[1]
    try:
        lb = LbProcess(f"wss://localhost:{port}/stocks", 3, str(tmp_path), dump_worker,
                       options=[*SLOW_TIMEOUTS, "--tls", "userspace"]).start(None)
        await async_wait_for(lambda: accepted, 20, "lb's TCP connection")
        await asyncio.sleep(0.3)
        code, took = await _timed_stop(lb)
    finally:
        loop.remove_reader(listener.fileno())
        for s in [*accepted, listener]:
            s.close()
    _assert_prompt(lb, "11.8 SIGTERM in the TLS handshake", code, took)


async def test_sigterm_during_a_hanging_tcp_connect_is_prompt(tmp_path, dump_worker):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue: lb's SYN is then dropped and connect() hangs
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    try:
        lb = LbProcess(f"ws://127.0.0.1:{port}/stocks", 3, str(tmp_path), dump_worker,
                       options=SLOW_TIMEOUTS).start(None)
        await async_wait_for(lambda: lb.stats().get("connects", 0) >= 1, 20, "lb connecting")
        await asyncio.sleep(1.0)
        assert not lb.stats().get("disconnects"), "connect() did not hang"
        code, took = await _timed_stop(lb)
    finally:
        for s in [*fillers, listener]:
            s.close()
    _assert_prompt(lb, "11.8 SIGTERM in TCP connect", code, took)


async def test_sigterm_during_backoff_is_prompt(tmp_path, dump_worker):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens: every attempt is refused, lb backs off up to 5 s
    lb = LbProcess(f"ws://127.0.0.1:{port}/stocks", 3, str(tmp_path), dump_worker,
                   options=SLOW_TIMEOUTS).start(None)
    await async_wait_for(lambda: lb.stats().get("disconnects", {}).get("connect", 0) >= 4, 30,
                         "four refused connects")
    code, took = await _timed_stop(lb)
    _assert_prompt(lb, "11.8 SIGTERM in backoff", code, took)


@pytest.mark.parametrize("trades", [2000])
async def test_sigterm_while_paused_still_sends_a_close_frame(tmp_path, trades):
    """Issue 11 item 9: backpressure paused reading; SIGTERM must close with 1001, not reset."""
    from tests.integration.feedgen import Feed

    fast_file = tmp_path / "fast"
    worker = [sys.executable, os.path.join(HERE, "slow_worker.py"), "--rate", "20000",
              "--fast-file", str(fast_file)]
    feed = Feed(1)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 1, str(tmp_path), worker,
                       options=["--stats-interval", "0", "--max-backlog", "64K", "--pipe-size", "64K",
                                "--shutdown-timeout", "20"]).start(None)
        conn = await server.next_connection()
        for frame in feed.frames(trades // 100, 100):
            await conn.send_text(frame)
        await async_wait_for(lambda: lb.stats().get("paused"), 20, "backpressure pause")
        fast_file.write_text("")  # let the worker drain during the shutdown
        lb.proc.send_signal(15)
        close = await conn.wait_frame(0x8, 10)
        assert close.payload[:2] == struct.pack(">H", 1001)
        # PolyServer ends the connection on the client's close frame (lb takes that as the reply)
        code = await asyncio.to_thread(lb.wait, 30)
        lb.__exit__()
    assert code == 0
    assert_clean_log(lb)
    from tests.helpers.lb_feed import pipe_bytes
    assert pipe_bytes(str(tmp_path), 1) == [bytes(feed.expected[0])]
