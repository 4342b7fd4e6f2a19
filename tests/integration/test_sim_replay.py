"""Replay through the real process: recorded payloads and flat files arrive as recorded,
at the recorded pace (scaled) or a fixed rate; a malformed file stops it naming the line."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import time
from pathlib import Path

import orjson
import pytest

from harness.sim import SimProcess, SimulatorError
from tests.integration.sim_helpers import FeedClient, bounded

BASE = ["--stats-interval", "0", "--ping-interval", "0", "--no-tls"]
HEADER = ("ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,"
          "sip_timestamp,size,tape,trf_id,trf_timestamp")


def recording(path: Path, trades: int, step_ms: int) -> list[dict[str, object]]:
    """lb --record style: one message payload per line, some with a status event in it."""
    events = [{"ev": "T", "sym": ["AAPL", "MSFT", "SPY"][i % 3], "x": 4, "i": str(1000 + i),
               "z": 3, "p": 100 + i / 100, "s": 100, "t": 1_700_000_000_000 + i * step_ms,
               "q": 50 + i} for i in range(trades)]
    with gzip.open(path, "wt") as f:
        for i in range(0, trades, 4):
            message = events[i:i + 4]
            if i % 40 == 0:
                message = [{"ev": "status", "status": "success", "message": "x"}, *message]
            f.write(json.dumps(message, separators=(",", ":")) + "\n")
    return events


async def read_all(sim: SimProcess) -> tuple[list[bytes], float]:
    client = await FeedClient(sim.url, sim.cafile).open()
    await client.login()
    started = time.monotonic()
    received = await client.collect(timeout=30)
    assert received.close_code == 1001  # the replay ended, the server closed
    return received.trades, time.monotonic() - started


async def test_recorded_payloads_replay_byte_for_byte_at_the_recorded_pace(tmp_path: Path) -> None:
    events = recording(tmp_path / "rec.jsonl.gz", 400, step_ms=5)  # 2 s of trading
    with SimProcess([*BASE, "--replay", str(tmp_path / "rec.jsonl.gz"), "--speed", "4x"]) as sim:
        trades, elapsed = await read_all(sim)
        assert await bounded(asyncio.to_thread(sim.wait, 10), 15, "exit") == 0
        ledger = sim.ledger()
    assert trades == [orjson.dumps(e) for e in events]
    assert 0.35 <= elapsed <= 5  # 2 s at 4x is 0.5 s: never faster, loosely bounded slower
    assert ledger["totals"]["trades_sent"] == 400 and ledger["symbols"]["SPY"]["count"] == 133


async def test_flat_file_at_a_fixed_rate_with_loop(tmp_path: Path) -> None:
    rows = [f"T{i % 2},\"14,41\",0,{11 + i % 2},{i},1,{20 + i / 10},{7 + i},"
            f"{1_700_000_000_000_000_000 + i * 1_000_000},{100 * (i + 1)},3,," for i in range(10)]
    path = tmp_path / "trades.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    args = [*BASE, "--replay", str(path), "--rate", "5k/s", "--loop", "--trades", "25",
            "--batch", "5"]
    with SimProcess(args) as sim:
        trades, _ = await read_all(sim)
    events = [orjson.loads(t) for t in trades]
    assert len(events) == 25
    assert events[0] == {"ev": "T", "sym": "T0", "x": 11, "i": "0", "z": 3, "p": 20, "s": 100,
                         "c": [14, 41], "t": 1_700_000_000_000, "q": 7}
    assert [e["q"] for e in events[9:12]] == [16, 24, 25]  # a new lap: q shifted by the span
    assert all(a["t"] < b["t"] for a, b in itertools.pairwise(events))


def test_a_malformed_file_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('[{"ev":"T","sym":"A","q":1,"t":1}]\n[{"ev":"T","sym":"A","q":"x","t":2}]\n')
    sim = SimProcess([*BASE, "--replay", str(path)])
    with pytest.raises(SimulatorError, match=r"bad.jsonl:2: trade A without an integer 'q'"):
        sim.start()
    assert sim.returncode == 2


async def test_a_malformed_line_later_in_the_file_ends_the_run_with_status_2(
        tmp_path: Path) -> None:
    good = [json.dumps([{"ev": "T", "sym": "A", "q": i, "t": i}]) for i in range(1500)]
    path = tmp_path / "late.jsonl"
    path.write_text("\n".join([*good, "{oops"]) + "\n")
    with SimProcess([*BASE, "--replay", str(path), "--speed", "1000x"]) as sim:
        trades, _ = await read_all(sim)
        assert await bounded(asyncio.to_thread(sim.wait, 10), 15, "exit") == 2
        assert "late.jsonl:1501: not JSON" in sim.log()
        assert sim.ledger()["totals"]["trades_sent"] == len(trades) == 1500
