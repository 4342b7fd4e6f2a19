"""In-process cost of lb's per-read data path, without sockets: for A/B of engine changes.

    python -m bench.path_bench [--engine native|python] [--batch 1] [--trades 200000]
                               [--read 524288] [--repeat 5]

The blaster's stream (same trades, same frames) is copied into the frame decoder's receive
buffer ``--read`` bytes at a time, as a socket read would, and each read is routed as the
session does it (the native engine's call, then the Python decoder and router for the rest,
then ``Router.take``); the batches are dropped, not written, so only user-space work is timed.
Prints ns per trade (best of --repeat). Under ``valgrind --tool=callgrind`` the instruction
count is reproducible on a loaded machine: compare two builds with ``--repeat 1`` at two
``--trades`` and take the difference per trade.
"""

from __future__ import annotations

import argparse
import time
from itertools import repeat

from balancer.engine import NativeEngine, native_available
from balancer.frames import FrameDecoder
from balancer.router import Router, RouteResult
from bench.blaster import build_stream, build_trades


def run(stream: bytes, engine_name: str, npipes: int, read: int) -> int:
    decoder = FrameDecoder()
    router = Router(npipes)
    engine = NativeEngine(npipes) if engine_name == "native" else None
    result = RouteResult()
    view = memoryview(stream)
    pos = 0
    while pos < len(stream):
        buffer = decoder.recv_buffer()
        n = min(read, len(buffer), len(stream) - pos)
        buffer[:n] = view[pos : pos + n]
        decoder.commit(n)
        pos += n
        if engine is not None:
            engine.run(decoder, router)
        events = decoder.events()
        # as the session does: a read of small frames is routed in one go when it can be
        batched = len(events) > 1 and all(map(isinstance, events, repeat(bytes)))
        if not (batched and router.route_many(events)):
            for event in events:
                if type(event) is bytes:
                    router.route(event, result)
        router.take()
    return router.trades


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=("native", "python"),
                   default="native" if native_available() else "python")
    p.add_argument("--batch", type=int, default=1, help="trades per frame")
    p.add_argument("--trades", type=int, default=200_000)
    p.add_argument("--pipes", type=int, default=32)
    p.add_argument("--read", type=int, default=512 * 1024, help="bytes per simulated read")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    stream, _ = build_stream(build_trades(args.trades), args.batch)
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        trades = run(stream, args.engine, args.pipes, args.read)
        best = min(best, time.perf_counter() - t0)
        assert trades == args.trades, (trades, args.trades)
    print(f"{args.engine} batch {args.batch} read {args.read}: {best / args.trades * 1e9:.0f} ns/trade "
          f"(best of {args.repeat})")


if __name__ == "__main__":
    main()
