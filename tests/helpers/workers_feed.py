"""Playing lb for lb-pool and the handlers: pipes fed with routed trades, a ledger of what was
sent; ``feed_factory`` (the fixture) is in tests/integration/conftest.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from workers.framing import frame_all
from workers.routing import pipe_for_symbol

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SYMBOLS = ["AAPL", "MSFT", "SPY", "TSLA", "BRK.A", *(f"S{i:03d}" for i in range(45))]


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Feed:
    """Plays lb: pipes whose read ends go to lb-pool, trades routed by the contract's hash,
    `q` consecutive per symbol; remembers what it sent, like the simulator's ledger."""

    def __init__(self, npipes: int) -> None:
        self.npipes = npipes
        self.pipes = [os.pipe() for _ in range(npipes)]
        self.next_q: dict[str, int] = {}
        self.sent: dict[str, list[bytes]] = defaultdict(list)
        self.total = 0

    @property
    def read_fds(self) -> list[int]:
        return [read_end for read_end, _ in self.pipes]

    def make(self, count: int) -> dict[int, list[bytes]]:
        per_pipe: dict[int, list[bytes]] = defaultdict(list)
        for i in range(count):
            symbol = SYMBOLS[(self.total + i) * 7 % len(SYMBOLS)]
            q = self.next_q.get(symbol, 1000)
            self.next_q[symbol] = q + 1
            payload = (
                b'{"ev":"T","sym":"%s","i":"%d","x":4,"p":%d.25,"s":%d,"c":[12,37],'
                b'"t":1764130000%03d,"q":%d,"z":3}'
                % (symbol.encode(), 7000 + i, 100 + q % 50, 1 + q % 300, q % 1000, q)
            )
            self.sent[symbol].append(payload)
            per_pipe[pipe_for_symbol(symbol, self.npipes)].append(payload)
        self.total += count
        return per_pipe

    def write(self, count: int, cut: bool = False) -> None:
        """With `cut`, each pipe's bytes go in two writes split inside a message, the second
        after every pipe had its first: readers keep finding partly written messages."""
        blobs = {pipe: frame_all(payloads) for pipe, payloads in self.make(count).items()}
        halves = {pipe: len(blob) // 2 + 1 for pipe, blob in blobs.items()} if cut else {}
        for pipe, blob in blobs.items():
            os.write(self.pipes[pipe][1], blob[: halves.get(pipe, len(blob))])
        for pipe, half in halves.items():
            os.write(self.pipes[pipe][1], blobs[pipe][half:])

    def write_in_thread(self, count: int, batch: int = 500) -> threading.Thread:
        def run() -> None:
            for _ in range(count // batch):
                self.write(batch, cut=True)

        writer = threading.Thread(target=run, daemon=True)
        writer.start()
        return writer

    def close_writers(self) -> None:
        for _, write_end in self.pipes:
            os.close(write_end)

    def close_readers(self) -> None:
        for read_end, _ in self.pipes:
            os.close(read_end)

    def ledger(self) -> dict[str, dict[str, int]]:
        symbols = {}
        for symbol, payloads in self.sent.items():
            crc = 0
            for payload in payloads:
                crc = zlib.crc32(payload, crc)
            first = json.loads(payloads[0])["q"]
            symbols[symbol] = {"count": len(payloads), "first_q": first,
                               "last_q": first + len(payloads) - 1, "crc32": crc}
        return symbols
