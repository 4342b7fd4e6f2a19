"""``lb-demo`` (``make demo``): the whole thing on one machine, with live figures.

simulate (a TLS Polygon feed: a market-open burst) -> lb (32 pipes) -> lb-pool with the
``stats`` handler. On a terminal the live view is lb-top's dashboard (lb's rates, connection,
reconnects by cause, backlog per pipe; the simulator's rate and faults; the pool's top
symbols), redrawn in place; otherwise (a pipe, CI) the pool's plain lines. At the end: what
was sent, what lb routed and at what CPU cost per trade, what the workers saw.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Any

from common.units import positive_duration
from common.version import add_version_option
from harness.lb import LbProcess
from harness.sim import SimProcess
from harness.wait import read_json, wait_for


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lb-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(p)
    p.add_argument("--duration", type=positive_duration, default=30.0,
                   metavar="DURATION", help="e.g. 90s, 10m (default: %(default)gs)")
    p.add_argument("--rate", default="300k/s", help="peak rate of the burst (default: %(default)s)")
    p.add_argument("--pipes", type=int, default=32, help="lb's NPIPES (default: %(default)s)")
    p.add_argument("--procs", type=int, default=2, help="pool worker processes (default: %(default)s)")
    p.add_argument("--drop-every", default="12s",
                   help="simulate a disconnect this often, to show a reconnect (default: %(default)s; "
                        "0 for none)")
    p.add_argument("--no-tls", action="store_true", help="ws:// instead of wss://")
    p.add_argument("--plain", action="store_true",
                   help="plain lines even on a terminal (the default when stdout is not one)")
    p.add_argument("--workdir", help="where the stats files, logs and the summary go "
                                     "(default: a new temporary directory)")
    return p.parse_args(argv)


def pool_command(args: argparse.Namespace, summary: str, stats: str, log: str) -> list[str]:
    """The pool's table goes to ``log`` (lb hands its worker no fd but 0-2 and the pipes); the
    demo shows that file on its stderr unless the dashboard is on screen."""
    pool = os.path.join(os.path.dirname(sys.executable), "lb-pool")
    return ["/bin/sh", "-c", 'exec "$@" 2>>"$0"', log, pool, "--procs", str(args.procs),
            "--handler", "stats", "--stats-interval", "1s", "--summary-file", summary, "--stats-file", stats]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="lb-demo-")
    os.makedirs(work, exist_ok=True)
    dashboard = sys.stdout.isatty() and not args.plain
    summary_path = os.path.join(work, "summary.json")
    sim_stats, pool_stats = os.path.join(work, "simulate.json"), os.path.join(work, "pool.json")
    pool_log = os.path.join(work, "pool.log")
    sim_args = ["--stats-file", sim_stats, "--rate", args.rate, "--profile", "open",
                "--profile-period", f"{args.duration:g}s", "--duration", f"{args.duration + 2:g}s",
                "--stats-interval", "0", "-q"]
    if args.drop_every not in ("", "0", "0s"):
        sim_args += ["--drop-every", args.drop_every, "--fault", "random"]
    if args.no_tls:
        sim_args.append("--no-tls")
    print(f"lb-demo: simulate {' '.join(sim_args)}", file=sys.stderr)
    sim = SimProcess(sim_args, workdir=work).start()
    options = ["--stats-interval", "0", "--ping-interval", "2", "--ping-timeout", "2"]  # a stall shows
    if sim.cafile:
        options += ["--cafile", sim.cafile]
    lb = LbProcess(sim.url, args.pipes, work, pool_command(args, summary_path, pool_stats, pool_log),
                   key="demo-key", options=options)
    print(f"lb-demo: lb --cafile CA demo-key {sim.url} {args.pipes} {work} lb-pool --procs "
          f"{args.procs} --handler stats   (lb's log: {lb.stderr_path})", file=sys.stderr)
    lb_stats = os.path.join(work, "lb.json")  # lb rewrites its file by renaming: a link follows
    with contextlib.suppress(FileExistsError):
        os.symlink(lb.stats_file, lb_stats)
    print(f"lb-demo: watch it from another terminal with: lb-top {sim_stats} {lb_stats} {pool_stats}",
          file=sys.stderr)
    interrupted = False
    follower = None if dashboard else Follower(pool_log, sys.stderr)
    try:
        lb.start()
        try:
            if dashboard:
                show_dashboard([sim_stats, lb.stats_file, pool_stats], sim, args.duration + 60)
            sim.wait(args.duration + 60)
        except KeyboardInterrupt:
            interrupted = True
            sim.stop()
        lb_code = lb.stop(60, signal.SIGTERM)
    except KeyboardInterrupt:
        interrupted = True
        lb_code = lb.stop(60, signal.SIGTERM)
    finally:
        lb.__exit__()
        sim.kill()
        if follower is not None:
            follower.stop()
    ledger = sim.ledger() if os.path.exists(sim.ledger_file or "") else {}
    stats = lb.stats()
    summary = wait_for(lambda: read_json(summary_path), 10, "the workers' summary") \
        if not interrupted else (read_json(summary_path) or {})
    print_summary(ledger, stats, summary)
    return 0 if lb_code == 0 else 1


class Follower(threading.Thread):
    """``tail -f``: what is appended to ``path`` is copied to ``out`` until stop()."""

    def __init__(self, path: str, out: Any) -> None:
        super().__init__(daemon=True)
        self.path, self.out = path, out
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        offset = 0
        while True:
            finished = self.done.wait(0.2)
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                data = b""
            if data:
                offset += len(data)
                self.out.write(data.decode(errors="replace"))
                self.out.flush()
            if finished:
                return

    def stop(self) -> None:
        self.done.set()
        self.join(5)


def show_dashboard(files: list[str], sim: SimProcess, timeout: float) -> None:
    """lb-top's screen until the simulator's run ends (or ``timeout``)."""
    from harness.top import Dashboard

    deadline = time.monotonic() + timeout
    Dashboard(files, interval=1.0, plain=False).run(
        until=lambda: sim.returncode is not None or time.monotonic() > deadline)


def print_summary(ledger: dict, stats: dict, summary: dict) -> None:
    totals = ledger.get("totals", {})
    sent = totals.get("trades_sent", 0)
    routed = stats.get("trades", 0)
    received = summary.get("trades", 0)
    cpu = stats.get("cpu_user", 0.0) + stats.get("cpu_system", 0.0)
    lines = [
        "",
        "lb-demo summary",
        f"  simulate : {sent:,} trades sent whole on {totals.get('connections', 0)} connection(s), "
        f"{totals.get('trades_partial', 0):,} in frames cut by faults, faults {totals.get('faults', {})}",
        f"  lb       : {routed:,} trades routed over {stats.get('tls', '?')}, "
        f"{stats.get('reconnects', 0)} reconnect(s) {stats.get('disconnects', {})}, "
        f"{cpu / max(routed, 1) * 1e6:.2f} CPU-us/trade over the whole run (start-up included), "
        f"peak RSS {stats.get('max_rss', 0) / 2**20:.0f} MiB",
        f"  workers  : {received:,} trades received, {summary.get('symbols', 0):,} symbols, "
        f"peak {summary.get('peak_per_s', 0):,.0f} trades/s",
        f"  verdict  : {'every trade sent whole was received' if sent == received == routed else 'MISMATCH'}",
    ]
    print("\n".join(lines), file=sys.stderr)
    if sent != received:
        print(json.dumps({"ledger_totals": totals, "lb": stats.get("disconnects")}), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
