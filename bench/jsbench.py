"""The JetStream row: lb -> lb-bridge -> nats-server (file storage) -> lb-remote -> draining worker,
all on this machine.

1. Sustained trades/s: bench.blaster sends N trades (1000 per frame) as fast as lb reads; the
   clock runs from the go signal to the moment the remote worker has received every byte.
2. Latency at a paced rate: simulate --stamp-ids -> ... -> bench.drain_worker --latency,
   p50/p99/max of (receive - send) per frame, CLOCK_MONOTONIC, steady state only.

    python -m bench.jsbench [--trades 1000000] [--rate 200k/s] [--pipes 32] [--nats-server PATH]
                            [--huge-pages]

The nats-server is the one on PATH (Debian's package in CI) unless --nats-server or
LB_NATS_SERVER names another binary; the row names the version it ran. It runs with
transparent huge pages off (harness.nothp), as docs/jetstream.md advises; --huge-pages leaves
them on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from harness.jetstream import BIN, NATS_SERVER, NatsServer, RemoteProcess
from harness.lb import LbProcess
from harness.sim import SimProcess
from harness.wait import FifoSignal, read_json, wait_for, wait_json

NPIPES = 32
# by path: lb-remote runs its worker in its WORKDIR, where `-m bench.drain_worker` is not importable
DRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drain_worker.py")


def _bridge(url: str, workdir: str) -> list[str]:
    return [os.path.join(BIN, "lb-bridge"), "--nats", url, "--stream", "BENCH", "--stats-file",
            os.path.join(workdir, "bridge.json")]


def server_version(binary: str = NATS_SERVER) -> str:
    """`nats-server --version`'s version ("v2.9.10"), or why it has none."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return out.strip().rpartition(" ")[2] or "unknown"


def throughput(trades: int, npipes: int = NPIPES, nats_server: str = NATS_SERVER,
               huge_pages: bool = False) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix="jsbench-")
    nats = NatsServer(os.path.join(work, "store"), binary=nats_server, huge_pages=huge_pages).start()
    ready = os.path.join(work, "blaster.json")
    fifo = os.path.join(work, "done.fifo")
    os.mkfifo(fifo)
    blaster = subprocess.Popen([sys.executable, "-m", "bench.blaster", "--trades", str(trades), "--batch",
                                "1000", "--ready-file", ready], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    lb = remote = None
    try:
        info = wait_json(ready, 120, "the blaster")
        lb = subprocess.Popen([sys.executable, "-m", "balancer", "--stats-interval", "0", "-q", "bench-key",
                               info["url"], str(npipes), work, *_bridge(nats.url, work)],
                              stdin=subprocess.DEVNULL)
        rdir = os.path.join(work, "remote")
        os.makedirs(rdir)
        worker = [sys.executable, DRAIN, "--expect", str(info["pipe_bytes"]),
                  "--notify", fifo]
        remote = RemoteProcess(nats.url, "BENCH", f"0-{npipes - 1}", rdir, worker).start()
        assert blaster.stdout is not None and blaster.stdin is not None
        if blaster.stdout.readline().strip() != "subscribed":
            raise RuntimeError("the blaster did not see lb subscribe")
        done = FifoSignal(fifo)
        t0 = time.monotonic()
        blaster.stdin.write("go\n")
        blaster.stdin.flush()
        done.wait(600, "the remote worker to receive every byte")
        elapsed = time.monotonic() - t0
        done.close()
        stats_path = os.path.join(work, "bridge.json")

        def final_stats() -> dict[str, Any] | None:  # written every second: the one with every byte
            stats = read_json(stats_path) or {}
            return stats if stats.get("published_bytes", 0) >= info["pipe_bytes"] else None

        bridge = wait_for(final_stats, 10, "the bridge's final stats")
        batch = bridge["published_bytes"] / max(1, bridge["published_messages"])
        return {"mean_batch_bytes": round(batch), "trades": trades, "seconds": round(elapsed, 3),
                "trades_per_s": round(trades / elapsed),
                "mb_per_s": round(info["pipe_bytes"] / elapsed / 1e6, 1)}
    finally:
        if remote is not None:
            remote.cleanup()
        if lb is not None:
            lb.send_signal(signal.SIGTERM)
            try:
                lb.wait(30)
            except subprocess.TimeoutExpired:
                lb.kill()
        blaster.kill()
        blaster.wait()
        nats.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def latency(rate: str, seconds: float = 12.0, skip: float = 2.0, tail: float = 1.0,
            npipes: int = NPIPES, nats_server: str = NATS_SERVER, huge_pages: bool = False) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix="jslatency-")
    nats = NatsServer(os.path.join(work, "store"), binary=nats_server, huge_pages=huge_pages).start()
    samples_path = os.path.join(work, "samples.json")
    sim = SimProcess(["--rate", rate, "--stamp-ids", "--duration", f"{seconds:g}s", "--stats-interval", "0",
                      "-q", "--seed", "5", "--no-tls"], ledger=False, workdir=work).start()
    lb = LbProcess(sim.url, npipes, work, _bridge(nats.url, work), options=["--stats-interval", "0", "-q"])
    rdir = os.path.join(work, "remote")
    os.makedirs(rdir)
    remote = RemoteProcess(nats.url, "BENCH", f"0-{npipes - 1}", rdir,
                           [sys.executable, DRAIN, "--latency", samples_path])
    try:
        remote.start()
        lb.start()
        sim.wait(seconds + 60)
        stats = lb.stats()
        wait_for(lambda: remote.stats().get("messages", 0) >= stats.get("trades", 0), 60,
                 "the remote worker to catch up")
        remote.stop(60)
    finally:
        remote.cleanup()
        lb.__exit__()
        sim.kill()
        nats.cleanup()
    try:
        samples = wait_for(lambda: _read(samples_path), 30, "latency samples")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    frames = len(samples)
    samples = sorted(samples[int(frames * skip / seconds) : int(frames * (seconds - tail) / seconds)])
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] / 1e6  # noqa: E731
    return {"rate": rate, "frames": len(samples), "trades": stats.get("trades", 0),
            "p50_ms": round(pick(0.50), 3), "p99_ms": round(pick(0.99), 3),
            "max_ms": round(samples[-1] / 1e6, 3)}


def _read(path: str) -> list[int] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def row(trades: int, rate: str, npipes: int = NPIPES, nats_server: str = NATS_SERVER,
        huge_pages: bool = False) -> dict[str, Any]:
    version = server_version(nats_server)
    print(f"\nJetStream: lb -> lb-bridge -> nats-server {version} (file, huge pages "
          f"{'on' if huge_pages else 'off'}) -> lb-remote -> drain, {npipes} pipes:", flush=True)
    tp = throughput(trades, npipes, nats_server, huge_pages)
    print(f"  sustained    {tp['trades']:>9,} trades in {tp['seconds']:.2f} s: {tp['trades_per_s']:>10,} "
          f"trades/s ({tp['mb_per_s']} MB/s of pipe bytes)", flush=True)
    lat = latency(rate, npipes=npipes, nats_server=nats_server, huge_pages=huge_pages)
    print(f"  paced {lat['rate']:<7} frames {lat['frames']:>7,}  p50 {lat['p50_ms']:.2f} ms  "
          f"p99 {lat['p99_ms']:.2f} ms  max {lat['max_ms']:.2f} ms", flush=True)
    return {"nats_server": version, "huge_pages": huge_pages, "pipes": npipes, "throughput": tp,
            "latency": lat}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.jsbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trades", type=int, default=1_000_000)
    p.add_argument("--rate", default="200k/s")
    p.add_argument("--pipes", type=int, default=NPIPES)
    p.add_argument("--nats-server", default=NATS_SERVER, metavar="PATH",
                   help="the nats-server binary (default: LB_NATS_SERVER, else the one on PATH)")
    p.add_argument("--huge-pages", action="store_true",
                   help="leave transparent huge pages on for nats-server (default off, as docs/jetstream.md "
                        "advises)")
    args = p.parse_args(argv)
    print(json.dumps(row(args.trades, args.rate, args.pipes, args.nats_server, args.huge_pages)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
