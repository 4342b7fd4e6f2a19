"""Benchmark worker: drains every pipe with large reads, counts bytes, and says when it has
seen ``--expect`` bytes in all (one line on the --notify FIFO), so the benchmark samples
lb's CPU at the last byte. With --latency it also finds the send stamps that
``simulate --stamp-ids`` puts in each trade's "i" field and records receive - send."""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import time

# every trade's "i" is a stamp under --stamp-ids: any number of digits (CLOCK_MONOTONIC has
# fewer than 13 for the first 1,000 s after boot, which a fresh CI machine is within)
STAMPS = re.compile(rb'"i":"(\d+)"')


def frame_stamps(data: bytes | memoryview) -> list[int]:
    """The distinct send stamps in `data`, in order (a frame's trades share one stamp)."""
    return [int(stamp) for stamp in dict.fromkeys(STAMPS.findall(data))]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--expect", type=int, default=0, help="bytes in all pipes after which to notify")
    p.add_argument("--notify", help="FIFO to write one line to once --expect bytes arrived")
    p.add_argument("--latency", help="write latency samples (ns, JSON list) here at EOF")
    p.add_argument("fds", nargs="+", type=int)
    args = p.parse_args(argv)
    selector = selectors.DefaultSelector()
    for fd in args.fds:
        selector.register(fd, selectors.EVENT_READ)
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    total = 0
    notified = not args.expect
    samples: list[int] = []
    clock = time.monotonic_ns
    while selector.get_map():
        for key, _ in selector.select():
            n = os.readv(key.fd, [view])
            if not n:
                selector.unregister(key.fd)
                continue
            total += n
            if args.latency:
                now = clock()
                # the frame's stamps, in C: one sample per frame per read (a frame's trades share
                # one stamp), so this worker's own scanning does not become the latency it measures
                for stamp in frame_stamps(view[:n]):
                    samples.append(now - stamp)
            if not notified and total >= args.expect:
                notified = True
                with open(args.notify, "w") as f:
                    f.write(f"{total}\n")
    if args.latency:
        with open(args.latency, "w") as f:
            json.dump(samples, f)


if __name__ == "__main__":
    main()
