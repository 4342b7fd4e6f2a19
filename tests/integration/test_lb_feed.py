"""lb as a real process against a real websocket server, with a real worker on its pipes."""

from __future__ import annotations

import asyncio
import os

from harness.lb import LbProcess
from harness.wait import async_wait_for
from tests.integration.feedgen import Feed
from tests.integration.polyserver import PolyServer


def pipe_bytes(workdir: str, npipes: int) -> list[bytes]:
    out = []
    for i in range(npipes):
        try:
            with open(os.path.join(workdir, f"pipe_{i}.bin"), "rb") as f:
                out.append(f.read())
        except FileNotFoundError:
            out.append(b"")
    return out


async def wait_delivered(workdir: str, feed: Feed, timeout: float = 20.0) -> None:
    def complete() -> bool:
        return pipe_bytes(workdir, feed.npipes) == [bytes(e) for e in feed.expected]
    try:
        await async_wait_for(complete, timeout, "every trade in its pipe")
    except AssertionError:
        got = pipe_bytes(workdir, feed.npipes)
        for i, (g, e) in enumerate(zip(got, feed.expected, strict=True)):
            if g != e:
                raise AssertionError(f"pipe {i}: got {len(g)} bytes, expected {len(e)}; "
                                     f"first difference at {_first_diff(g, bytes(e))}") from None
        raise


def _first_diff(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


async def test_byte_identical_routing_and_sigterm(tmp_path, dump_worker):
    npipes = 7
    feed = Feed(npipes)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), npipes, str(tmp_path), dump_worker,
                       options=["--stats-interval", "0"])
        lb.start(wait_ready=None)
        try:
            conn = await server.next_connection()
            for frame in feed.frames(50, 200):
                await conn.send_text(frame)
            await wait_delivered(str(tmp_path), feed)
            code = await asyncio.to_thread(lb.stop)
        finally:
            lb.__exit__()
    assert code == 0, lb.log()
    assert os.path.exists(tmp_path / "done.json"), "worker did not see EOF"
    stats = lb.stats()
    assert stats["trades"] == feed.trades
    assert stats["slow_messages"] == 0
