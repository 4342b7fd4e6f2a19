"""Pacing, checked like a benchmark with generous bounds; --stamp-ids; --rate max.

The exact part is deterministic: frame k carries t = start + (k + 1) * batch / rate. The
timed part only bounds the wall-clock rate loosely (a loaded machine may lag, never lead)."""

from __future__ import annotations

import statistics
import time

import orjson

from harness.sim import SimProcess
from tests.integration.sim_helpers import FeedClient, RawClient

BASE = ["--tape-size", "2048", "--symbols", "400", "--stats-interval", "0",
        "--ping-interval", "0", "--seed", "8", "--no-tls"]
START = 1_735_828_200_000  # the seeded market's clock start


async def test_paced_rate_holds_loosely_and_t_follows_the_schedule() -> None:
    rate, seconds = 50_000, 2.0
    with SimProcess([*BASE, "--rate", "50k/s"]) as sim:
        client = await FeedClient(sim.url, sim.cafile).open()
        await client.login()
        received = await client.collect(lambda r: len(r.trades) >= 1, 10)
        started = time.monotonic()
        await client.collect(lambda r: time.monotonic() - started >= seconds, 10)
        elapsed = time.monotonic() - started
        await client.close()
    frames = [orjson.loads(f) for f in received.frames]
    batch = len(frames[0])
    assert batch == 50  # 50k/s at the default 1 ms per frame
    for k, frame in enumerate(frames):  # the market clock: exact, whatever the machine did
        assert {e["t"] for e in frame} == {START + (k + 1) * batch * 1000 // rate}
    got = len(received.trades)
    assert got <= rate * (elapsed + 0.1) + batch  # never ahead of the schedule
    assert got >= 0.5 * rate * seconds, f"only {got / elapsed:.0f} trades/s of {rate}"


async def test_stamp_ids_carry_the_send_time_on_the_shared_monotonic_clock() -> None:
    with SimProcess([*BASE, "--rate", "20k/s", "--stamp-ids"]) as sim:
        client = await FeedClient(sim.url, sim.cafile).open()
        await client.login()
        before = time.monotonic_ns()
        received = await client.collect(lambda r: len(r.frames) >= 50, 10)
        after = time.monotonic_ns()
        await client.close()
    previous = 0
    for frame in received.frames:
        stamps = {e["i"] for e in orjson.loads(frame)}
        assert len(stamps) == 1  # one stamp per frame, a string
        (stamp,) = stamps
        assert isinstance(stamp, str) and stamp.isdigit()
        assert before - 5 * 10**9 < int(stamp) <= after and int(stamp) >= previous
        previous = int(stamp)


async def test_rate_max_is_limited_only_by_the_reader() -> None:
    with SimProcess([*BASE, "--rate", "max", "--trades", "200k"]) as sim:
        client = await FeedClient(sim.url, sim.cafile).open()
        await client.login()
        started = time.monotonic()
        received = await client.collect(timeout=30)
        elapsed = time.monotonic() - started
    assert len(received.trades) == 200_000 and received.close_code == 1001
    assert len(received.frames) == 200  # 1000 trades per frame by default
    assert elapsed < 25  # far above any paced default; the real figure is in bench.sim_bench


async def test_open_profile_starts_quiet() -> None:
    with SimProcess([*BASE, "--rate", "100k/s", "--profile", "open", "--profile-period",
                     "10s"]) as sim:
        client = await FeedClient(sim.url, sim.cafile).open()
        await client.login()
        received = await client.collect(lambda r: len(r.frames) >= 3, 10)
        await client.close()
    frames = [orjson.loads(f) for f in received.frames]
    assert len(frames[0]) == 100  # the batch follows the peak rate
    gap_ms = frames[1][0]["t"] - frames[0][0]["t"]
    assert 40 <= gap_ms <= 60  # the quiet base: 2% of 100k/s is one 100-trade frame per 50 ms


def test_frames_leave_when_they_are_written_not_when_a_segment_fills() -> None:
    """TCP_NODELAY on the feed's socket. With Nagle's algorithm (asyncio leaves it on for a
    socket from socket.create_server), 1 ms frames of ~2.5 KB sat in the kernel until ~64 KiB
    were pending: the reader got one 64 KiB segment every ~25 ms, and every latency figure
    measured through the simulator was mostly that wait."""
    with SimProcess([*BASE, "--rate", "20k/s"]) as sim:
        client = RawClient(sim.url, sim.cafile)
        client.login()
        sizes = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            client.sock.settimeout(2)
            chunk = client.sock.recv(1 << 20)
            assert chunk
            sizes.append(len(chunk))
        client.sock.close()
    frame = 20 * 125  # 20 trades of the seeded market per 1 ms frame, about
    assert len(sizes) >= 100, f"{len(sizes)} reads in 1 s of 1 ms frames: {sizes[:20]}"
    assert statistics.median(sizes) <= 4 * frame, sizes[:50]
