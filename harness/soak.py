"""``lb-soak`` (``make soak DURATION=600``): a long run with faults, checked against the ledger.

simulate --rate 500k/s --drop-every 30s --fault random (TLS, with a ledger) -> lb ->
lb-pool --handler verify. At the end it compares every symbol the simulator sent whole
with what the workers received, and prints one report: trades sent and received, lost
within connections (must be 0), reconnects by cause, worker restarts, lb's RSS after
warm-up and at the end, both taken with nothing queued for the workers (it must not grow
more than 10%), lb's CPU per trade.
Exit status 0 only if nothing was lost and memory stayed flat.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

from common.units import duration, positive_duration
from common.version import add_version_option
from harness.lb import LbProcess
from harness.report import Sampler, write_report
from harness.sim import SimProcess
from harness.wait import read_json, wait_for

BACKLOG_QUIET = 1 << 20  # bytes queued in lb: below this, memory reflects lb itself


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lb-soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(p)
    p.add_argument("--duration", type=positive_duration, default=600.0,
                   metavar="DURATION", help="e.g. 90s, 10m (default: %(default)gs)")
    p.add_argument("--rate", default="500k/s", help="simulate --rate (default: %(default)s)")
    p.add_argument("--drop-every", default="30s", help="simulate --drop-every (default: %(default)s)")
    p.add_argument("--fault", default="random", help="simulate --fault (default: %(default)s)")
    p.add_argument("--refuse-for", default="2s", help="simulate --refuse-for (default: %(default)s)")
    p.add_argument("--pipes", type=int, default=32)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--warmup", type=duration, default=None, metavar="DURATION",
                   help="seconds before the start RSS/CPU sample (default: a fifth of the run, 20 to 60)")
    p.add_argument("--report", metavar="DIR",
                   help="also write the report to DIR: report.txt and report.json, PNG charts of "
                        "trades/s, lb's RSS and CPU, backlog and reconnects over the run, the "
                        "series behind them (series.csv, series.json) and index.html")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    return p.parse_args(argv)


def compare(ledger: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """Per symbol: sent whole vs received. Lost = sent whole but never received."""
    sent, got = ledger["symbols"], report["symbols"]
    lost = extra = mismatched = 0
    for symbol, s in sent.items():
        g = got.get(symbol)
        if g is None:
            lost += s["count"]
            mismatched += 1
            continue
        if any(s[k] != g.get(k) for k in ("count", "first_q", "last_q", "crc32")):
            mismatched += 1
            lost += max(0, s["count"] - g["count"])
            extra += max(0, g["count"] - s["count"])
    extra += sum(g["count"] for symbol, g in got.items() if symbol not in sent)
    return {"lost": lost, "extra": extra, "mismatched_symbols": mismatched, "symbols": len(sent)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = tempfile.mkdtemp(prefix="lb-soak-")
    report_path = os.path.join(work, "verify.json")
    pool = os.path.join(os.path.dirname(sys.executable), "lb-pool")
    sim_stats = os.path.join(work, "simulate.json")
    sim = SimProcess(["--rate", args.rate, "--drop-every", args.drop_every, "--fault", args.fault,
                      "--refuse-for", args.refuse_for, "--duration", f"{args.duration:g}s",
                      "--seed", "20261126", "--stats-interval", "30s", "--stats-file", sim_stats],
                     workdir=work).start()
    lb = LbProcess(sim.url, args.pipes, work,
                   [pool, "--procs", str(args.procs), "--handler", "verify", "--report", report_path],
                   key="soak-key", options=["--cafile", sim.cafile or "", "--stats-interval", "30"])
    warmup = args.warmup if args.warmup is not None else min(60.0, max(20.0, args.duration / 5))
    print(f"lb-soak: {args.duration:g} s at {args.rate}, drop every {args.drop_every} "
          f"({args.fault}), outage {args.refuse_for}; work dir {work}", file=sys.stderr)
    sampler = Sampler(lb.stats, lambda: read_json(sim_stats))
    try:
        lb.start()
        sampler.start()
        # Memory is compared between two moments when no trades are queued for a slow worker
        # (a backlog is data, not a leak): the first such moment after the warm-up, and the
        # end, once the workers have caught up and lb has handed the backlog's memory back.
        start = wait_for(lambda: _sample_after(lb, warmup), args.duration / 2 + 60,
                         "a warm-up sample with no backlog")
        sim.wait(args.duration + 120)
        wait_for(lambda: _drained(lb), 300, "the workers to catch up")
        settled = lb.stats()["uptime"] + 2  # a housekeeping tick or two: memory handed back
        end = wait_for(lambda: _sample_after(lb, settled), 30, "a final sample")
        assert lb.stop(120) == 0, "lb did not exit cleanly"
    finally:
        samples = sampler.stop()
        lb.__exit__()
        sim.kill()
    final = lb.stats()
    ledger = sim.ledger()
    verify = wait_for(lambda: read_json(report_path), 30, "the verify report")
    result = build_report(args, ledger, verify, start, end, final)
    text = render(result)
    print(text, file=sys.stderr)
    if args.report:
        write_report(args.report, result, text, samples)
        print(f"lb-soak: report in {os.path.join(os.path.abspath(args.report), 'index.html')}",
              file=sys.stderr)
    if not args.keep:
        sim.cleanup()
    return 0 if result["ok"] else 1


def _sample_after(lb: LbProcess, uptime: float) -> dict[str, Any] | None:
    stats = lb.stats()
    ready = stats.get("uptime", 0) >= uptime and stats.get("trades", 0) > 0
    return stats if ready and stats["total_backlog"] < BACKLOG_QUIET else None


def _drained(lb: LbProcess) -> bool:
    stats = lb.stats()
    return bool(stats) and stats["total_backlog"] == 0


def build_report(args: argparse.Namespace, ledger: dict[str, Any], verify: dict[str, Any],
                 start: dict[str, Any], end: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    totals = ledger["totals"]
    match = compare(ledger, verify)
    cpu = (end["cpu_user"] + end["cpu_system"]) - (start["cpu_user"] + start["cpu_system"])
    trades = end["trades"] - start["trades"]
    rss_growth = end["rss"] / start["rss"] - 1
    peak_backlog = final["backlog_peak"]
    # Memory that held queued trades (bounded by --max-backlog, counted in backlog_peak) may stay
    # resident after the queue drains (malloc keeps it for the next burst): not a leak. What
    # grows beyond the new backlog peak is.
    backlog_growth = max(0, end["backlog_peak"] - start["backlog_peak"])
    unexplained = (end["rss"] - start["rss"] - backlog_growth) / start["rss"]
    errors = {k: v for k, v in verify["errors"].items() if v}
    ok = (match["lost"] == 0 and match["extra"] == 0 and not errors and unexplained <= 0.10
          and verify["gaps"] <= totals["trades_partial"])
    return {
        "ok": ok,
        "duration_s": args.duration,
        "rate": args.rate,
        "trades_sent_whole": totals["trades_sent"],
        "trades_in_cut_frames": totals["trades_partial"],
        "trades_received": verify["messages"],
        "lost_within_connections": match["lost"],
        "received_but_not_sent_whole": match["extra"],
        "symbols": match["symbols"],
        "verify_errors": errors,
        "gaps": verify["gaps"],
        "connections": totals["connections"],
        "faults_injected": totals["faults"],
        "lb_disconnects_by_cause": final["disconnects"],
        "lb_reconnects": final["reconnects"],
        "worker_restarts": final["worker_restarts"] + verify["accounting"]["restarts"],
        "backpressure_pauses": final["backpressure_pauses"],
        "rss_start_mib": round(start["rss"] / 2**20, 1),
        "rss_end_mib": round(end["rss"] / 2**20, 1),
        "backlog_peak_mib": round(peak_backlog / 2**20, 1),
        "rss_growth_pct": round(rss_growth * 100, 1),
        "rss_growth_beyond_backlog_pct": round(unexplained * 100, 1),
        "lb_cpu_us_per_trade": round(cpu / max(trades, 1) * 1e6, 3),
        "lb_tls": final["tls"],
        "measured_from_s": round(start["uptime"], 1),
        "measured_to_s": round(end["uptime"], 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def render(r: dict[str, Any]) -> str:
    return "\n".join([
        "",
        f"lb-soak report ({r['duration_s']:g} s at {r['rate']}, finished {r['finished']})",
        f"  trades sent whole        {r['trades_sent_whole']:,} ({r['trades_in_cut_frames']:,} more in "
        f"frames cut by faults)",
        f"  trades received          {r['trades_received']:,} over {r['symbols']:,} symbols",
        f"  lost within connections  {r['lost_within_connections']:,}   (must be 0)",
        f"  received, not sent whole {r['received_but_not_sent_whole']:,}   (must be 0)",
        f"  verify errors            {r['verify_errors'] or 'none'}; gaps {r['gaps']:,} "
        f"(<= trades in cut frames)",
        f"  faults injected          {r['faults_injected']} over {r['connections']} connections",
        f"  lb reconnects by cause   {r['lb_disconnects_by_cause']} ({r['lb_reconnects']} reconnects)",
        f"  worker restarts          {r['worker_restarts']}; backpressure pauses {r['backpressure_pauses']}",
        f"  lb RSS                   {r['rss_start_mib']} MiB at {r['measured_from_s']:g} s -> "
        f"{r['rss_end_mib']} MiB at {r['measured_to_s']:g} s ({r['rss_growth_pct']:+.1f}%; beyond the "
        f"backlog's new peak {r['rss_growth_beyond_backlog_pct']:+.1f}%, must not be more than 10%); "
        f"largest backlog queued for the workers {r['backlog_peak_mib']} MiB",
        f"  lb CPU per trade         {r['lb_cpu_us_per_trade']} us ({r['lb_tls']})",
        f"  verdict                  {'PASS' if r['ok'] else 'FAIL'}",
    ])


if __name__ == "__main__":
    sys.exit(main())
