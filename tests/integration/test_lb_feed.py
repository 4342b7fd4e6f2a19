"""lb as a real process against a real websocket server, with a real worker on its pipes."""

from __future__ import annotations

import asyncio
import os

from harness.lb import LbProcess
from tests.helpers.lb_feed import wait_delivered
from tests.integration.feedgen import Feed
from tests.integration.polyserver import PolyServer


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
