"""What lb --metrics costs: timing every pipe write, and answering one scrape.

    python -m bench.metrics_bench [--writes N] [--pipes P] [--size BYTES] [--scrapes N]

CPU time of this process (user+sys), median of 5 runs:
1. the timing alone: two ``perf_counter_ns`` calls and ``WriteTimes.observe``, per write;
2. ``PipeSet.submit`` of one chunk per pipe into drained pipes, as lb does per socket read
   (plus the reads that keep the pipes empty), per write: the share of 1. in it is the
   overhead of the histogram.
3. one scrape of lb's registry with P pipes: refresh_stats()-sized snapshot (reading /proc),
   the collector, and the text exposition (what lb's loop spends per scrape).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from prometheus_client import generate_latest

from balancer import metrics
from balancer.pipes import PipeSet
from balancer.router import Chunk
from balancer.stats import Stats, WriteTimes


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def timing_alone(writes: int) -> float:
    times = WriteTimes()
    clock = time.perf_counter_ns
    started = _cpu()
    for _ in range(writes):
        t0 = clock()
        took = clock() - t0
        times.counts[(took - 1).bit_length()] += 1
        times.sum_ns += took
    return (_cpu() - started) / writes * 1e9


def submit_cost(writes: int, npipes: int, size: int) -> float:
    pipes = PipeSet(npipes, 1 << 20)
    data = b"x" * size
    batches = [(p, [Chunk(data, [size - 4], 4)]) for p in range(npipes)]
    rounds = max(1, writes // npipes)
    try:
        started = _cpu()
        for _ in range(rounds):
            pipes.submit(batches)
            for fd in pipes.read_fds:  # keep the pipes empty: every write goes straight through
                os.read(fd, size)
        spent = _cpu() - started
    finally:
        pipes.close()
    return spent / (rounds * npipes) * 1e9


def scrape_cost(scrapes: int, npipes: int) -> float:
    stats = Stats()
    stats.tls = "userspace TLSv1.3 TLS_AES_256_GCM_SHA384"
    times = WriteTimes()
    for ns in range(1000, 200_000, 7):
        times.observe(ns)

    def take() -> dict:
        data = stats.snapshot()
        data["pipes"] = {"accepted": [1 << 30] * npipes, "written": [1 << 30] * npipes,
                         "backlog": [4096] * npipes}
        return data

    registry = metrics.registry_for(metrics.BalancerCollector(take, times))
    started = _cpu()
    for _ in range(scrapes):
        generate_latest(registry)
    return (_cpu() - started) / scrapes * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metrics_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--writes", type=int, default=200_000)
    p.add_argument("--pipes", type=int, default=32)
    p.add_argument("--size", type=int, default=4096, help="bytes per write (default 4096)")
    p.add_argument("--scrapes", type=int, default=300)
    args = p.parse_args(argv)
    alone = statistics.median(timing_alone(args.writes) for _ in range(5))
    submit = statistics.median(submit_cost(args.writes, args.pipes, args.size) for _ in range(5))
    print(f"timing alone     {alone:7.0f} ns per write")
    print(f"submit + read    {submit:7.0f} ns per write ({args.size} B, {args.pipes} pipes)")
    print(f"share            {alone / submit * 100:7.1f} %")
    scrape = statistics.median(scrape_cost(args.scrapes, args.pipes) for _ in range(5))
    print(f"one scrape       {scrape:7.0f} us of CPU ({args.pipes} pipes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
