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

``--balancer NAME=CMD`` (repeatable) adds an external balancer with lb's argv convention (``CMD
KEY URL NPIPES WORKDIR EXE ARGS...``), e.g. the C original built by
/work/shared/anchors/c-original/build.sh; it runs on the ws:// rows only (the C original needs
kTLS for wss://). Every row also shows CPU net of start-up: (CPU of the run - CPU of a tiny run
of --startup-trades) / (trades - startup trades), the tiny run's median per balancer and
transport, so a fixed cost after subscribing (the C original's 288 MB memset) is left out.

``--check``: the CI guard. One lb run (ws://, 1000 trades/frame, 32 pipes); fails only if
CPU-us/trade exceeds 3x the figure recorded in bench/baseline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
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


BUILTIN = ("lb", "lb-py", "naive")


def median_run(balancer: str, tls: str, batch: int, npipes: int, trades: int, runs: int,
               external: list[str] | None = None) -> Result:
    results = sorted((run_once(balancer, tls, batch, npipes, trades, external) for _ in range(runs)),
                     key=lambda r: r.cpu_us_per_trade)
    return results[len(results) // 2]


def throughput_table(trades: int, naive_trades: int, runs: int, quick: bool,
                     externals: dict[str, list[str]] | None = None, only: list[str] | None = None,
                     frames: list[int] | None = None, transports: list[str] | None = None,
                     startup_trades: int = 2000) -> list[Result]:
    externals = externals or {}
    balancers = [(b, None) for b in BUILTIN] + list(externals.items())
    if only:
        balancers = [(b, cmd) for b, cmd in balancers if b in only]
    print(HEADER, flush=True)
    run_once("lb", "none", 1000, 32, trades)  # warm-up: a new VM's first runs are slower
    rows = []
    configs = [(tls, batch, npipes) for tls in ("none", "userspace") for batch in (100, 1000)
               for npipes in (4, 32)]
    configs = [("none", 1, 32), ("none", 10, 32), *configs]  # small frames: Polygon's common case
    if quick:
        configs = [("none", 1000, 32), ("userspace", 1000, 32)]
    if frames:
        configs = [(t, b, n) for t in (transports or ("none", "userspace")) for b in frames for n in (32,)]
    elif transports:
        configs = [c for c in configs if c[0] in transports]
    fixed: dict[tuple[str, str], Result] = {}
    for tls, batch, npipes in configs:
        for balancer, external in balancers:
            if external is not None and tls != "none":
                continue  # the C original has no userspace TLS
            if startup_trades and (balancer, tls) not in fixed:
                fixed[balancer, tls] = median_run(balancer, tls, 1000, 32, startup_trades, runs, external)
            n = naive_trades if balancer == "naive" else trades
            row = median_run(balancer, tls, batch, npipes, n, runs, external)
            tiny = fixed.get((balancer, tls))
            if tiny is not None and n > tiny.trades:
                row.net_cpu_us_per_trade = max(0.0, row.cpu_s - tiny.cpu_s) / (n - tiny.trades) * 1e6
            print(row.row(), flush=True)
            rows.append(row)
    for (balancer, tls), tiny in fixed.items():
        print(f"  start-up run {balancer} {tls}: {tiny.trades} trades, {tiny.cpu_s * 1e3:.0f} ms CPU",
              flush=True)
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
    worker = [sys.executable, os.path.join(HERE, "drain_worker.py"), "--latency", samples_path]
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
    try:
        samples = wait_for(lambda: _read(samples_path), 30, "latency samples")
    finally:
        shutil.rmtree(work, ignore_errors=True)
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
    p.add_argument("--nats-server", default=jsbench.NATS_SERVER, metavar="PATH",
                   help="the JetStream row's nats-server binary (default: LB_NATS_SERVER, else PATH's)")
    p.add_argument("--balancer", action="append", default=[], metavar="NAME=CMD",
                   help="an external balancer (lb's argv convention), on the ws:// rows; repeatable")
    p.add_argument("--only", help="comma-separated balancers to run (lb, lb-py, naive, external names)")
    p.add_argument("--frames", help="comma-separated trades per frame (32 pipes), instead of the table's")
    p.add_argument("--transports", help="comma-separated: none (ws://), userspace (wss://)")
    p.add_argument("--startup-trades", type=int, default=2000,
                   help="trades of the tiny run whose CPU is subtracted (0: no net column)")
    p.add_argument("--no-side", action="store_true", help="no latency, simulator or reader benchmarks")
    args = p.parse_args(argv)
    if args.check:
        return check(args.trades)
    externals = {}
    for spec in args.balancer:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command.strip() or name in BUILTIN:
            p.error(f"--balancer {spec!r}: expected NAME=CMD with a new NAME")
        externals[name] = shlex.split(command)
    print(f"machine: {machine()}\n", flush=True)
    figures: dict[str, Any] = {"machine": machine(), "runs": args.runs}
    if args.jetstream:
        figures["jetstream"] = jsbench.row(args.trades, "200k/s", nats_server=args.nats_server)
        _write(args.json, figures)
        return 0
    rows = throughput_table(args.trades, args.naive_trades, args.runs, args.quick, externals,
                            args.only.split(",") if args.only else None,
                            [int(b) for b in args.frames.split(",")] if args.frames else None,
                            args.transports.split(",") if args.transports else None, args.startup_trades)
    figures["throughput"] = [r.__dict__ for r in rows]
    _ratios(rows, list(externals))
    if not args.quick and not args.no_side:
        print("\nend-to-end latency at a paced 500k/s (simulate -> lb -> worker, 32 pipes):", flush=True)
        figures["latency"] = []
        for tls in (False, True):
            lat = latency("500k/s", tls)
            figures["latency"].append(lat)
            print(f"  {lat['transport']:<20} frames {lat['frames']:>7,}  p50 {lat['p50_ms']:.2f} ms  "
                  f"p99 {lat['p99_ms']:.2f} ms  max {lat['max_ms']:.2f} ms", flush=True)
        figures["simulator"] = _side("bench.sim_bench")
        figures["reader"] = _side("bench.reader_bench")
        figures["jetstream"] = jsbench.row(args.trades, "200k/s", nats_server=args.nats_server)
    _write(args.json, figures)
    return 0


def _write(path: str | None, figures: dict[str, Any]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)


def _net(r: Result) -> float:
    return r.net_cpu_us_per_trade if r.net_cpu_us_per_trade is not None else r.cpu_us_per_trade


def _ratios(rows: list[Result], externals: list[str] | None = None) -> None:
    by_key = {(r.balancer, r.tls, r.batch, r.npipes): r for r in rows}
    ratios = [by_key[("naive", t, b, n)].cpu_us_per_trade / r.cpu_us_per_trade
              for (name, t, b, n), r in by_key.items() if name == "lb" and ("naive", t, b, n) in by_key]
    if ratios:
        print(f"\nnaive / lb CPU per trade, same run: {min(ratios):.1f}x to {max(ratios):.1f}x "
              f"(median {statistics.median(ratios):.1f}x)", flush=True)
    for ext in externals or []:
        for (name, t, b, n), r in by_key.items():
            other = by_key.get((ext, t, b, n))
            if name in ("lb", "lb-py") and other is not None and _net(r) > 0:
                print(f"{ext} / {name} net CPU per trade, {t} {b} trades/frame {n} pipes: "
                      f"{_net(other) / _net(r):.2f}x", flush=True)


def _side(module: str) -> Any:
    print(f"\n{module}:", flush=True)
    proc = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=900)
    print(proc.stdout.rstrip(), flush=True)
    return proc.stdout


if __name__ == "__main__":
    sys.exit(main())
