"""lb --record writes every data payload, one per line, plain or gzip; simulate --replay plays
the recording back, and lb routes the replay exactly as it routed the original."""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest

from harness.lb import LbProcess
from harness.sim import SimProcess
from harness.wait import async_wait_for
from tests.helpers.lb_feed import pipe_bytes, wait_delivered
from tests.integration.feedgen import Feed
from tests.integration.polyserver import PolyServer, status


@pytest.mark.parametrize("name", ["rec.jsonl", "rec.jsonl.gz"])
async def test_record_then_replay(tmp_path, dump_worker, name):
    record = tmp_path / name
    first = tmp_path / "first"
    first.mkdir()
    feed = Feed(4)
    frames = list(feed.frames(20, 100))
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 4, str(first), dump_worker,
                       options=["--stats-interval", "0", "--record", str(record)]).start(wait_ready=None)
        conn = await server.next_connection()
        for frame in frames:
            await conn.send_text(frame)
        await conn.send_text(status("error", "not data"))  # status messages are recorded too
        await wait_delivered(str(first), feed)
        assert await asyncio.to_thread(lb.stop) == 0
    opener = gzip.open if name.endswith(".gz") else open
    with opener(record, "rb") as f:
        lines = f.read().splitlines()
    payloads = [line for line in lines if b'"ev":"T"' in line]
    assert payloads == frames  # byte for byte, one message per line
    assert all(isinstance(json.loads(line), list) for line in lines)

    # play it back through the simulator into a second lb: the same bytes in the same pipes
    second = tmp_path / "second"
    second.mkdir()
    sim = SimProcess(["--replay", str(record), "--rate", "20k/s", "--no-tls", "-q"]).start()
    lb2 = LbProcess(sim.url, 4, str(second), dump_worker, options=["--stats-interval", "0"])
    try:
        lb2.start()
        expected = [bytes(e) for e in feed.expected]
        await async_wait_for(lambda: pipe_bytes(str(second), 4) == expected, 30, "the replay routed")
        assert lb2.stop() == 0
    finally:
        lb2.__exit__()
        sim.cleanup()
