"""A worker of your own, two ways. Run either as lb's EXE:

1. A plain script over the reader library (lb appends the fds):

       lb KEY URL 8 /tmp python -m workers.example

   Each pipe gets a PipeReader; poll() says which pipes have data; `read_batch()` does one
   read() and returns every complete message in it.

2. A handler for lb-pool, which forks the processes, re-forks crashed ones and resyncs
   their pipes for you:

       lb KEY URL 32 /tmp lb-pool --procs 4 --handler workers.example:count_trade

   `count_trade(pipe, payload)` is called for each message; a class with
   `on_batch(pipe, payloads)` (see workers/handler.py) is faster and can report.
"""

from __future__ import annotations

import select
import sys
import time
from collections import Counter

import orjson

from workers.reader import PipeReader

trades_per_symbol: Counter[str] = Counter()


def count_trade(pipe: int, payload: bytes) -> None:
    trades_per_symbol[orjson.loads(payload)["sym"]] += 1


def main(argv: list[str] | None = None) -> int:
    fds = [int(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    readers = {fd: PipeReader(fd, name=f"pipe {i} (fd {fd})") for i, fd in enumerate(fds)}
    poller = select.poll()
    for fd in readers:
        poller.register(fd, select.POLLIN)
    counts: Counter[str] = Counter()
    next_report = time.monotonic() + 1
    while readers:
        for fd, _event in poller.poll(1000):
            reader = readers[fd]
            for payload in reader.read_batch():  # raises on a framing error: fail loudly
                counts[orjson.loads(payload)["sym"]] += 1
            if reader.eof:
                poller.unregister(fd)
                del readers[fd]
        if time.monotonic() >= next_report:
            print("top:", counts.most_common(5), file=sys.stderr, flush=True)
            next_report += 1
    print(f"{sum(counts.values())} trades, {len(counts)} symbols", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
