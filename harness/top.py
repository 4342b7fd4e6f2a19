"""``lb-top STATS_FILE...``: one terminal screen, redrawn in place, from the JSON stats files.

    lb --stats-file lb.json ...            lb's counters (balancer/stats.py)
    simulate --stats-file sim.json ...     the feed's rate, clients and faults
    lb-pool --stats-file pool.json ...     messages handled, children, top symbols

Each file is recognised by its content (``program`` in simulate's and lb-pool's, lb's counters
in lb's), read every --interval, and rates are the difference between two readings. On a
terminal the screen is redrawn in place (rich); otherwise (a pipe, CI) one plain line per
program per interval. A file that is not there yet, or has stopped changing, says so.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from common.units import positive_duration
from common.version import add_version_option

STALE = 3.0  # seconds without a rewrite: the program has probably ended
BLOCKS = " ▁▂▃▄▅▆▇█"
BAR_WIDTH = 30
TOP_PIPES = 6


def kind_of(data: dict[str, Any]) -> str:
    program = data.get("program")
    if program in ("simulate", "lb-pool"):
        return str(program)
    if "disconnects" in data and "worker_restarts" in data:
        return "lb"
    return "unknown"


@dataclass
class Source:
    """One stats file, its last two readings and the rates between them."""

    path: str
    data: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] = field(default_factory=dict)
    read_at: float = 0.0
    changed_at: float = 0.0
    rates: dict[str, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return kind_of(self.data) if self.data else "waiting"

    def refresh(self, now: float) -> None:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError):
            return  # missing, or caught between two writers: keep the last reading
        if not isinstance(data, dict) or data.get("time") == self.data.get("time"):
            return
        self.previous, self.data, self.changed_at = self.data, data, now
        self.rates = rates(self.previous, self.data)

    def stale(self, now: float) -> bool:
        return not self.data or now - self.changed_at > STALE


def rates(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Per-second differences of the counters two readings share."""
    if not before or "time" not in before:
        return {}
    dt = after.get("time", 0) - before["time"]
    if dt <= 0:
        return {}
    out = {}
    for key in ("trades", "bytes", "frames", "messages"):
        if isinstance(after.get(key), int) and isinstance(before.get(key), int):
            out[key] = (after[key] - before[key]) / dt
    cpu = (after.get("cpu_user", 0) + after.get("cpu_system", 0)
           - before.get("cpu_user", 0) - before.get("cpu_system", 0))
    out["cpu"] = cpu / dt
    return out


# -- figures ---------------------------------------------------------------------------------

def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def bar(value: float, scale: float, width: int = BAR_WIDTH) -> str:
    filled = 0 if scale <= 0 else min(width, round(value / scale * width))
    return "█" * filled + "·" * (width - filled)


def column_chart(values: list[int]) -> str:
    top = max(values, default=0)
    if top <= 0:
        return BLOCKS[1] * len(values)
    return "".join(BLOCKS[max(1, round(v / top * (len(BLOCKS) - 1))) if v else 1] for v in values)


def state_of(lb: dict[str, Any]) -> str:
    if lb.get("paused"):
        return "PAUSED (backpressure)"
    return "up" if lb.get("connected") else "DOWN (reconnecting)"


# -- the rich screen --------------------------------------------------------------------------

def lb_panel(src: Source, stale: bool) -> Panel:
    d, r = src.data, src.rates
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("rate", f"{r.get('trades', 0):,.0f} trades/s   {r.get('frames', 0):,.0f} frames/s   "
                         f"{r.get('bytes', 0) / 1e6:,.1f} MB/s")
    grid.add_row("total", f"{d['trades']:,} trades   {d['messages']:,} messages   {mb(d['bytes'])}")
    grid.add_row("connection", f"{state_of(d)}   TLS {d.get('tls', '-')}   engine {d.get('engine', '?')}")
    causes = {c: n for c, n in sorted(d.get("disconnects", {}).items()) if n}
    grid.add_row("reconnects", f"{d['reconnects']:,}   by cause: "
                 + ("  ".join(f"{c} {n}" for c, n in causes.items()) or "none"))
    grid.add_row("worker", f"pid {d.get('worker_pid', 0)}   restarts {d['worker_restarts']}   "
                           f"backpressure pauses {d['backpressure_pauses']}")
    grid.add_row("process", f"CPU {r.get('cpu', 0) * 100:.0f}%   RSS {d['rss'] / 2**20:,.0f} MiB   "
                            f"ping RTT {d.get('ping_rtt', 0) * 1000:.1f} ms")
    backlog = d.get("pipes", {}).get("backlog", [])
    peak = max(d.get("backlog_peak", 0), max(backlog, default=0), 1)
    grid.add_row("backlog", f"{mb(d['total_backlog'])} queued   largest {mb(d['largest_backlog'])}   "
                            f"peak {mb(d['backlog_peak'])}")
    grid.add_row("per pipe", column_chart(backlog))
    busiest = sorted(range(len(backlog)), key=lambda p: backlog[p], reverse=True)[:TOP_PIPES]
    for pipe in sorted(busiest):
        grid.add_row(f"  pipe {pipe:>3}", f"{bar(backlog[pipe], peak)} {mb(backlog[pipe])}")
    title = f"lb  pid {d.get('pid', '?')}  up {d.get('uptime', 0):.0f}s" + ("  [stale]" if stale else "")
    return Panel(grid, title=title, title_align="left", border_style="red" if stale else "green")


def sim_panel(src: Source, stale: bool) -> Panel:
    d, r = src.data, src.rates
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    target = d.get("rate_target")
    grid.add_row("rate", f"{r.get('trades', 0):,.0f} trades/s (target "
                         f"{'max' if target is None else f'{target:,.0f}'})   "
                         f"{r.get('bytes', 0) / 1e6:,.1f} MB/s   CPU {r.get('cpu', 0) * 100:.0f}%")
    grid.add_row("sent", f"{d['trades']:,} trades   {d['trades_sent']:,} whole   "
                         f"{d['trades_partial']:,} in cut frames")
    grid.add_row("clients", f"{d['clients']} connected   {d['receiving']} receiving   "
                            f"{d['connections']} connections so far")
    faults = d.get("faults", {})
    last = d.get("last_fault")
    ago = f"   last: {last['kind']} {max(0.0, d['time'] - last['time']):.0f}s ago" if last else ""
    grid.add_row("faults", ("  ".join(f"{k} {n}" for k, n in sorted(faults.items())) or "none")
                 + (f"   (mode {d['fault_mode']})" if d.get("fault_mode") else "") + ago)
    title = f"simulate  {d.get('url', '')}" + ("  [stale]" if stale else "")
    return Panel(grid, title=title, title_align="left", border_style="red" if stale else "blue")


def pool_panel(src: Source, stale: bool) -> Panel:
    d, r = src.data, src.rates
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("rate", f"{r.get('messages', 0):,.0f} messages/s   total {d['messages']:,}   "
                         f"{d['symbols']:,} symbols")
    states = [c["state"] for c in d["children"]]
    grid.add_row("children", "  ".join(f"{s} {states.count(s)}" for s in sorted(set(states)))
                 + f"   restarts {d['restarts']}")
    top = Table(box=None, padding=(0, 2), show_edge=False)
    top.add_column("symbol", style="bold")
    top.add_column("trades", justify="right")
    top.add_column("", no_wrap=True)
    scale = d["top"][0]["trades"] if d["top"] else 1
    for row in d["top"]:
        top.add_row(row["sym"], f"{row['trades']:,}", bar(row["trades"], scale, 20))
    title = f"lb-pool  {d.get('handler', '')}  pid {d.get('pid', '?')}" + ("  [stale]" if stale else "")
    body = Group(grid, Text("top symbols", style="bold"), top) if d["top"] else grid
    return Panel(body, title=title, title_align="left", border_style="red" if stale else "magenta")


PANELS: dict[str, Callable[[Source, bool], Panel]] = {"lb": lb_panel, "simulate": sim_panel,
                                                       "lb-pool": pool_panel}
ORDER = {"simulate": 0, "lb": 1, "lb-pool": 2}


def screen(sources: list[Source], now: float) -> RenderableType:
    parts: list[RenderableType] = [Text(f"lb-top  {time.strftime('%H:%M:%S')}  (Ctrl-C to quit)",
                                        style="bold")]
    for src in sorted(sources, key=lambda s: ORDER.get(s.kind, 9)):
        panel = PANELS.get(src.kind)
        if panel is None:
            what = 'waiting for the file' if not src.data else 'not a stats file'
            parts.append(Text(f"{src.path}: {what}"))
        else:
            try:
                parts.append(panel(src, src.stale(now)))
            except (KeyError, TypeError, ValueError) as exc:  # an older or newer file layout
                parts.append(Text(f"{src.path}: cannot show {src.kind} figures ({exc!r})"))
    return Group(*parts)


# -- plain lines --------------------------------------------------------------------------------

def plain_line(src: Source, now: float) -> str:
    d, r = src.data, src.rates
    gone = " [stale]" if src.stale(now) else ""
    try:
        if src.kind == "lb":
            causes = ",".join(f"{c}={n}" for c, n in sorted(d["disconnects"].items()) if n) or "-"
            backlog = d["pipes"]["backlog"] if "pipes" in d else []
            return (f"lb-top: lb {r.get('trades', 0):,.0f} trades/s total {d['trades']:,} "
                    f"{state_of(d)} {d['tls']} reconnects {d['reconnects']} ({causes}) "
                    f"backlog {mb(d['total_backlog'])} [{column_chart(backlog)}] "
                    f"worker restarts {d['worker_restarts']}{gone}")
        if src.kind == "simulate":
            faults = ",".join(f"{k}={n}" for k, n in sorted(d["faults"].items())) or "-"
            return (f"lb-top: simulate {r.get('trades', 0):,.0f} trades/s sent {d['trades']:,} "
                    f"clients {d['clients']} connections {d['connections']} faults {faults}{gone}")
        if src.kind == "lb-pool":
            top = " ".join(f"{t['sym']}:{t['trades']:,}" for t in d["top"][:5])
            return (f"lb-top: lb-pool {r.get('messages', 0):,.0f} messages/s total {d['messages']:,} "
                    f"restarts {d['restarts']} top {top}{gone}")
    except (KeyError, TypeError, ValueError) as exc:
        return f"lb-top: {src.path}: cannot show {src.kind} figures ({exc!r})"
    return f"lb-top: {src.path}: {'waiting for the file' if not d else 'not a stats file'}"


# -- the loop -------------------------------------------------------------------------------------

class Dashboard:
    def __init__(self, paths: list[str], interval: float = 1.0, plain: bool | None = None,
                 out: Any = None) -> None:
        self.sources = [Source(p) for p in paths]
        self.interval = interval
        self.out = out or sys.stdout
        self.plain = (not self.out.isatty()) if plain is None else plain

    def refresh(self) -> float:
        now = time.monotonic()
        for src in self.sources:
            src.refresh(now)
        return now

    def run(self, until: Callable[[], bool] | None = None, frames: int | None = None) -> None:
        """Redraw every interval until ``until()`` is true, ``frames`` were shown, or Ctrl-C."""
        shown = 0
        done = until or (lambda: False)
        try:
            if self.plain:
                while not done() and (frames is None or shown < frames):
                    now = self.refresh()
                    for src in self.sources:
                        print(plain_line(src, now), file=self.out, flush=True)
                    shown += 1
                    self._sleep(done)
                return
            console = Console(file=self.out)
            with Live(screen([], time.monotonic()), console=console, auto_refresh=False,
                      vertical_overflow="crop") as live:
                while not done() and (frames is None or shown < frames):
                    now = self.refresh()
                    live.update(screen(self.sources, now), refresh=True)
                    shown += 1
                    self._sleep(done)
                live.update(screen(self.sources, self.refresh()), refresh=True)
        except KeyboardInterrupt:
            pass

    def _sleep(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.interval
        while not done() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lb-top", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="STATS_FILE",
                   help="--stats-file of lb, simulate or lb-pool (recognised by content)")
    add_version_option(p)
    p.add_argument("--stats-interval", "--interval", dest="interval", type=positive_duration, default=1.0,
                   metavar="DURATION", help="time between redraws (default 1s)")
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    p.add_argument("--frames", type=int, help="stop after this many redraws")
    p.add_argument("--svg", metavar="PATH",
                   help="at exit, write the last screen to PATH as an SVG picture (a screenshot)")
    p.add_argument("--until-gone", action="store_true",
                   help="exit once every file has stopped changing (the programs have ended)")
    args = p.parse_args(argv)
    if args.interval <= 0:
        p.error("--interval must be > 0")
    board = Dashboard([os.path.abspath(f) for f in args.files], args.interval,
                      plain=True if args.plain else None)
    until = None
    if args.until_gone:
        def until() -> bool:
            now = time.monotonic()
            return all(s.data and s.stale(now) for s in board.sources)
    board.run(until=until, frames=args.frames)
    if args.svg:
        save_svg(board, args.svg)
    return 0


def save_svg(board: Dashboard, path: str, width: int = 110) -> None:
    """The screen as the dashboard shows it now, as SVG (rich's own terminal rendering)."""
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=True)
    console.print(screen(board.sources, board.refresh()))
    console.save_svg(path, title="lb-top")


if __name__ == "__main__":
    sys.exit(main())
