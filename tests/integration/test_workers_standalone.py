"""Reference workers run directly as lb's EXE (`python -m workers.NAME ... FD...`)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path

from tests.helpers.workers_feed import ENV, Feed, wait_for
from workers.framing import frame, frame_all


def start(module: str, args: list[str], feed: Feed, cwd: Path,
          keep_readers: bool = False) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args, *map(str, feed.read_fds)],
        pass_fds=feed.read_fds, cwd=cwd, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if not keep_readers:
        feed.close_readers()
    return process


def unread(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def finish(process: subprocess.Popen[bytes]) -> tuple[str, str]:
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate(timeout=5)
        raise AssertionError(f"worker did not exit: {err.decode()}") from None
    assert process.returncode == 0, err.decode()
    return out.decode(), err.decode()


def test_verify_worker_directly(feed_factory: Callable[[int], Feed], tmp_path: Path) -> None:
    feed = feed_factory(5)
    process = start("workers.verify", ["--report", "r.json"], feed, tmp_path)
    feed.write(8000)
    feed.close_writers()
    _, err = finish(process)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["messages"] == 8000 and report["npipes"] == 5
    assert sum(report["errors"].values()) == 0 and report["gaps"] == 0
    assert {s: {k: e[k] for k in ("count", "first_q", "last_q", "crc32")}
            for s, e in report["symbols"].items()} == feed.ledger()
    assert "verified 8,000 messages" in err


def test_verify_worker_reports_on_sigterm(
    feed_factory: Callable[[int], Feed], tmp_path: Path
) -> None:
    feed = feed_factory(2)
    process = start("workers.verify", ["--report", "r.json"], feed, tmp_path, keep_readers=True)
    feed.write(2000)  # the write ends stay open: only the signal can end the worker
    wait_for(lambda: not any(map(unread, feed.read_fds)), 10, "the worker to read everything")
    process.send_signal(signal.SIGTERM)
    _, err = finish(process)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["messages"] == 2000 and report["gaps"] == 0
    assert report["accounting"]["pipes_at_eof"] == 0
    assert f"stopped by signal {int(signal.SIGTERM)}" in err


def test_verify_worker_counts_framing_errors_and_resyncs(
    feed_factory: Callable[[int], Feed], tmp_path: Path
) -> None:
    feed = feed_factory(1)
    process = start("workers.verify", ["--report", "r.json", "--max-message", "4096"], feed,
                    tmp_path)
    payloads = feed.make(300)[0]
    garbage = struct.pack("<I", 1 << 20) + b"xx"
    stream = frame_all(payloads[:100]) + garbage + frame_all(payloads[100:])
    os.write(feed.pipes[0][1], stream + frame(payloads[0])[:9])
    feed.close_writers()
    _, err = finish(process)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["errors"]["framing"] == 2  # the oversized length, the message cut by EOF
    assert report["messages"] == 300
    assert report["accounting"]["skipped_bytes"] == len(garbage)
    assert "exceeds the bound of 4096 bytes" in err
    assert "end of pipe inside a message" in err


def test_bars_worker_writes_ohlcv(feed_factory: Callable[[int], Feed], tmp_path: Path) -> None:
    feed = feed_factory(1)
    process = start("workers.bars", [], feed, tmp_path)
    trades = [b'{"ev":"T","sym":"AAPL","p":%s,"s":%d,"t":%d,"q":%d}' % (p, s, t, q)
              for q, (p, s, t) in enumerate([(b"10.0", 1, 1764130000100),
                                             (b"12.0", 2, 1764130000900),
                                             (b"9.5", 3, 1764130000950),
                                             (b"11.0", 4, 1764130001001)])]
    os.write(feed.pipes[0][1], frame_all(trades))
    feed.close_writers()
    finish(process)
    bars = [json.loads(line) for line in (tmp_path / "bars-0.jsonl").read_text().splitlines()]
    assert bars == [
        {"sym": "AAPL", "second": 1764130000, "o": 10.0, "h": 12.0, "l": 9.5, "c": 9.5,
         "v": 6, "n": 3},
        {"sym": "AAPL", "second": 1764130001, "o": 11.0, "h": 11.0, "l": 11.0, "c": 11.0,
         "v": 4, "n": 1},
    ]


def test_example_worker(feed_factory: Callable[[int], Feed], tmp_path: Path) -> None:
    feed = feed_factory(3)
    process = start("workers.example", [], feed, tmp_path)
    feed.write(900)
    feed.close_writers()
    out, _ = finish(process)
    assert out.strip() == f"900 trades, {len(feed.sent)} symbols"
