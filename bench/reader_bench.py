"""Messages/s of the workers' sync pipe reader on one core.

A writer process plays lb: it writes `[u32 LE length][trade JSON]` (realistic ~110-byte
trades) into a real pipe as fast as it can; this process reads them with PipeReader and
counts. Reported per mode: messages per CPU-second of the reading process (the figure to
compare; the machine is shared) and per wall-second.

    python -m bench.reader_bench [--messages N] [--modes batches,iter,exact]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import sys
import time
from collections.abc import Callable

from workers.framing import frame_all
from workers.reader import DEFAULT_CHUNK, PipeReader

F_SETPIPE_SZ = 1031
SYMBOLS = ["AAPL", "MSFT", "SPY", "TSLA", "NVDA", "AMZN", "BRK.A", "QQQ", "META", "AMD"]


def sample_trades(count: int) -> list[bytes]:
    """Trades shaped like Polygon's: {"ev":"T","sym":...} with ids, prices, conditions."""
    trades = []
    for i in range(count):
        sym = SYMBOLS[i % len(SYMBOLS)]
        trades.append(
            b'{"ev":"T","sym":"%s","i":"%d","x":%d,"p":%d.%02d,"s":%d,"c":[12,37],'
            b'"t":17641300%05d,"q":%d,"z":3}'
            % (sym.encode(), 52983525000000 + i, 1 + i % 20, 100 + i % 400, i % 100,
               1 + i % 300, i % 100000, 1000000 + i)
        )
    return trades


def _pipe(size: int) -> tuple[int, int]:
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, F_SETPIPE_SZ, size)
    except OSError:
        pass  # pipe-max-size below `size`: keep the default
    return read_end, write_end


def _writer(write_end: int, block: bytes, repeats: int) -> None:
    view = memoryview(block)
    for _ in range(repeats):
        written = 0
        while written < len(block):
            written += os.write(write_end, view[written:])
    os.close(write_end)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _count_batches(reader: PipeReader) -> int:
    return sum(len(batch) for batch in reader.batches())


def _count_iter(reader: PipeReader) -> int:
    count = 0
    for _ in reader:
        count += 1
    return count


def measure(mode: str, messages: int, chunk: int = DEFAULT_CHUNK) -> dict[str, float]:
    """Read `messages` trades written by a forked writer; the rates for one reader mode."""
    trades = sample_trades(1000)
    block = frame_all(trades)
    repeats = max(1, messages // len(trades))
    read_end, write_end = _pipe(1 << 20)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            _writer(write_end, block, repeats)
        finally:
            os._exit(0)
    os.close(write_end)
    reader = PipeReader(read_end, name="bench", chunk=chunk, exact=mode == "exact")
    count: Callable[[PipeReader], int] = _count_iter if mode == "iter" else _count_batches
    cpu, wall = _cpu(), time.perf_counter()
    received = count(reader)
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    os.close(read_end)
    os.waitpid(pid, 0)
    assert received == repeats * len(trades), (received, repeats * len(trades))
    return {
        "messages": received,
        "payload_bytes_avg": round(sum(map(len, trades)) / len(trades), 1),
        "cpu_s": round(cpu, 4),
        "wall_s": round(wall, 4),
        "messages_per_cpu_s": round(received / cpu),
        "messages_per_wall_s": round(received / wall),
    }


def run(messages: int = 2_000_000, modes: tuple[str, ...] = ("batches", "iter", "exact")) -> dict:
    """The figures for each mode; exact mode reads a tenth as many (it is much slower)."""
    results = {}
    for mode in modes:
        results[mode] = measure(mode, messages // 10 if mode == "exact" else messages)
    return {"benchmark": "reader", "modes": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reader_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2_000_000,
                        help="messages per mode (exact mode reads a tenth); default 2000000")
    parser.add_argument("--modes", default="batches,iter,exact",
                        help="comma-separated: batches (read_batch lists), iter (one payload "
                             "at a time), exact (header then payload); default all")
    args = parser.parse_args(argv)
    result = run(args.messages, tuple(args.modes.split(",")))
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
