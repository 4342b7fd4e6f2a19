"""Shared steps of the hostile-server tests: start lb, feed it, check what reached the pipes,
and record each case's figures (HOSTILE_METRICS=path appends one JSON line per case)."""

from __future__ import annotations

import asyncio
import json
import os
import re

from harness.lb import LbProcess
from tests.helpers.lb_feed import pipe_bytes, wait_delivered
from tests.integration.feedgen import Feed
from tests.integration.polyserver import Connection, PolyServer

FAST = ["--stats-interval", "0", "--connect-timeout", "5"]
# Bounds every case asserts (generous: a loaded 2-core machine, a debug build of nothing).
RSS_BOUND = 64 * 2**20
LOG_BOUND = 16 * 1024


def start(server: PolyServer, workdir: str, worker: list[str], npipes: int = 7,
          options: list[str] | None = None, url: str | None = None) -> LbProcess:
    return LbProcess(url or server.url(), npipes, workdir, worker,
                     options=[*FAST, *(options or [])]).start(wait_ready=None)


async def feed_and_check(conn: Connection, feed: Feed, workdir: str, frames: int = 5,
                         per_frame: int = 60) -> None:
    for frame in feed.frames(frames, per_frame):
        await conn.send_text(frame)
    await wait_delivered(workdir, feed)


async def stop(lb: LbProcess, timeout: float = 30.0) -> int:
    try:
        return await asyncio.to_thread(lb.stop, timeout)
    finally:
        lb.__exit__()


def assert_clean_log(lb: LbProcess) -> str:
    text = lb.log()
    for bad in ("Traceback", "Exception in callback", "never retrieved", "Task was destroyed"):
        assert bad not in text, f"{bad!r} in lb's log:\n{text[-3000:]}"
    return text


def count_lines(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text))


def exact_pipes(workdir: str, feed: Feed) -> None:
    got = pipe_bytes(workdir, feed.npipes)
    assert got == [bytes(e) for e in feed.expected], "pipes differ from what was sent whole"


def record(case: str, figures: dict[str, float]) -> None:
    path = os.environ.get("HOSTILE_METRICS")
    line = json.dumps({"case": case, **{k: round(v, 3) for k, v in figures.items()}})
    print(line)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
