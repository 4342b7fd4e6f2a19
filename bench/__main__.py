"""``python -m bench`` (``make bench``): the figures, in one run.

1. lb vs the naive baseline: CPU-us per trade (user+sys of the balancer process from /proc,
   sampled at the first and the last byte), trades/s and peak RSS, over ws:// and wss://
   (userspace TLS here: this kernel has no kTLS), for 100 and 1000 trades/frame into 4 and
   32 pipes. Medians of --runs runs, after a warm-up run.
2. End-to-end latency at a paced 500k/s: simulate --stamp-ids -> lb -> a draining worker,
   p50/p99/max of (receive - send), CLOCK_MONOTONIC, simulator, lb and worker on this machine.
3. The simulator's speed (bench.sim_bench) and the pipe reader's (bench.reader_bench).
4. The JetStream row (bench.jsbench): lb -> lb-bridge -> nats-server (file storage) -> lb-remote
   -> a draining worker, sustained trades/s and p99 latency at a paced 200k/s
   (``--jetstream``: this row only).

``--check``: the CI guard. One lb run (ws://, 1000 trades/frame, 32 pipes); fails only if
CPU-us/trade exceeds 3x the figure recorded in bench/baseline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from bench import jsbench
from bench.lbbench import HEADER, Result, run_once
from harness.lb import LbProcess
from harness.sim import SimProcess
from harness.wait import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
BASELINE = os.path.join(HERE, "baseline.json")


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def median_run(balancer: str, tls: str, batch: int, npipes: int, trades: int, runs: int) -> Result:
    results = sorted((run_once(balancer, tls, batch, npipes, trades) for _ in range(runs)),
                     key=lambda r: r.cpu_us_per_trade)
    return results[len(results) // 2]


def throughput_table(trades: int, naive_trades: int, runs: int, quick: bool) -> list[Result]:
    print(HEADER, flush=True)
    run_once("lb", "none", 1000, 32, trades)  # warm-up: a new VM's first runs are slower
    rows = []
    configs = [(tls, batch, npipes) for tls in ("none", "userspace") for batch in (100, 1000)
               for npipes in (4, 32)]
    configs = [("none", 1, 32), ("none", 10, 32), *configs]  # small frames: Polygon's common case
    if quick:
        configs = [("none", 1000, 32), ("userspace", 1000, 32)]
    for tls, batch, npipes in configs:
        for balancer, n in (("lb", trades), ("lb-py", trades), ("naive", naive_trades)):
            row = median_run(balancer, tls, batch, npipes, n, runs)
            print(row.row(), flush=True)
            rows.append(row)
    return rows


def latency(rate: str, tls: bool, seconds: float = 12.0, skip: float = 2.0,
            tail: float = 1.0) -> dict[str, Any]:
    """Send-to-receive latency of every frame at a paced rate, in the steady state: without
    the first ``skip`` s (start-up) and the last ``tail`` s (the simulator's shutdown)."""
    work = tempfile.mkdtemp(prefix="lblatency-")
    samples_path = os.path.join(work, "samples.json")
    sim_args = ["--rate", rate, "--stamp-ids", "--duration", f"{seconds:g}s", "--stats-interval", "0",
                "-q", "--seed", "5"]
    if not tls:
        sim_args.append("--no-tls")
    sim = SimProcess(sim_args, ledger=False, workdir=work).start()
    worker = [sys.executable, "-m", "bench.drain_worker", "--latency", samples_path]
    options = ["--stats-interval", "0", "-q"] + (["--cafile", sim.cafile] if sim.cafile else [])
    lb = LbProcess(sim.url, 32, work, worker, options=options)
    try:
        lb.start()
        sim.wait(seconds + 60)
        stats = lb.stats()
        lb.stop(60)
    finally:
        lb.__exit__()
        sim.kill()
    samples = wait_for(lambda: _read(samples_path), 30, "latency samples")
    frames = len(samples)
    samples = sorted(samples[int(frames * skip / seconds) : int(frames * (seconds - tail) / seconds)])
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] / 1e6  # noqa: E731
    return {"rate": rate, "transport": "wss (userspace TLS)" if tls else "ws", "frames": len(samples),
            "trades": stats.get("trades", 0), "p50_ms": round(pick(0.50), 3),
            "p99_ms": round(pick(0.99), 3), "max_ms": round(samples[-1] / 1e6, 3)}


def _read(path: str) -> list[int] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def check(trades: int) -> int:
    with open(BASELINE) as f:
        baseline = json.load(f)
    limit = baseline["lb_ws_1000_32_cpu_us_per_trade"] * baseline["gross_regression_factor"]
    run_once("lb", "none", 1000, 32, trades // 2)  # warm-up
    result = median_run("lb", "none", 1000, 32, trades, 3)
    verdict = "ok" if result.cpu_us_per_trade <= limit else "GROSS REGRESSION"
    print(f"bench --check: lb ws:// 1000 trades/frame 32 pipes: {result.cpu_us_per_trade:.3f} CPU-us/trade "
          f"(documented {baseline['lb_ws_1000_32_cpu_us_per_trade']}, limit {limit:.2f}): {verdict}")
    return 0 if verdict == "ok" else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trades", type=int, default=1_000_000, help="trades per lb run")
    p.add_argument("--naive-trades", type=int, default=300_000, help="trades per naive run")
    p.add_argument("--runs", type=int, default=3, help="runs per figure (the median is shown)")
    p.add_argument("--quick", action="store_true", help="two configurations only, no side benchmarks")
    p.add_argument("--check", action="store_true", help="the CI guard against gross regressions")
    p.add_argument("--json", help="write every figure here as JSON")
    p.add_argument("--jetstream", action="store_true", help="the JetStream row only")
    args = p.parse_args(argv)
    if args.check:
        return check(args.trades)
    print(f"machine: {machine()}\n", flush=True)
    figures: dict[str, Any] = {"machine": machine()}
    if args.jetstream:
        figures["jetstream"] = jsbench.row(args.trades, "200k/s")
        _write(args.json, figures)
        return 0
    rows = throughput_table(args.trades, args.naive_trades, args.runs, args.quick)
    figures["throughput"] = [r.__dict__ for r in rows]
    _ratios(rows)
    if not args.quick:
        print("\nend-to-end latency at a paced 500k/s (simulate -> lb -> worker, 32 pipes):", flush=True)
        figures["latency"] = []
        for tls in (False, True):
            lat = latency("500k/s", tls)
            figures["latency"].append(lat)
            print(f"  {lat['transport']:<20} frames {lat['frames']:>7,}  p50 {lat['p50_ms']:.2f} ms  "
                  f"p99 {lat['p99_ms']:.2f} ms  max {lat['max_ms']:.2f} ms", flush=True)
        figures["simulator"] = _side("bench.sim_bench")
        figures["reader"] = _side("bench.reader_bench")
        figures["jetstream"] = jsbench.row(args.trades, "200k/s")
    _write(args.json, figures)
    return 0


def _write(path: str | None, figures: dict[str, Any]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)


def _ratios(rows: list[Result]) -> None:
    by_key = {(r.balancer, r.tls, r.batch, r.npipes): r for r in rows}
    ratios = [by_key[("naive", t, b, n)].cpu_us_per_trade / r.cpu_us_per_trade
              for (name, t, b, n), r in by_key.items() if name == "lb" and ("naive", t, b, n) in by_key]
    if ratios:
        print(f"\nnaive / lb CPU per trade, same run: {min(ratios):.1f}x to {max(ratios):.1f}x "
              f"(median {statistics.median(ratios):.1f}x)", flush=True)


def _side(module: str) -> Any:
    print(f"\n{module}:", flush=True)
    proc = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=900)
    print(proc.stdout.rstrip(), flush=True)
    return proc.stdout


if __name__ == "__main__":
    sys.exit(main())
