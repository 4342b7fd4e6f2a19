"""``lb-soak --report DIR``: the soak run over time, as data, PNG charts and one HTML page.

While the run goes, a sampler thread reads lb's and the simulator's ``--stats-file`` once a
second. At the end ``write_report`` turns the samples into series (trades/s, lb's RSS and
CPU, backlog, reconnect events by cause), writes them next to the charts (``series.csv``,
``series.json``), draws the charts with matplotlib's Agg backend (no display needed), and an
``index.html`` that holds the text report and the charts.
"""

from __future__ import annotations

import csv
import html
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

SAMPLE_EVERY = 0.25  # lb rewrites its file every second: each rewrite is seen once
CHARTS = {
    "trades.png": "Trades per second",
    "lb_rss_cpu.png": "lb: resident memory and CPU",
    "backlog.png": "Backlog queued in lb for the workers",
    "reconnects.png": "Reconnects, by cause",
}
COLUMNS = ("t", "lb_trades_per_s", "sim_trades_per_s", "lb_rss_mib", "lb_cpu_pct",
           "backlog_mib", "largest_backlog_mib", "reconnects")


class Sampler:
    """Reads the stats files on a thread of its own, until ``stop``: one sample per rewrite of lb's."""

    def __init__(self, read_lb: Callable[[], dict[str, Any]],
                 read_sim: Callable[[], dict[str, Any] | None]) -> None:
        self.read_lb = read_lb
        self.read_sim = read_sim
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self.started = time.monotonic()

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_EVERY)

    def sample(self) -> None:
        lb = self.read_lb()
        if not lb or "trades" not in lb or (self.samples and lb["time"] == self.samples[-1]["lb_time"]):
            return  # not there yet, or not rewritten since the last sample
        sim = self.read_sim() or {}
        self.samples.append({
            "t": round(time.monotonic() - self.started, 3),
            "lb_time": lb["time"], "lb_trades": lb["trades"],
            "lb_cpu": lb["cpu_user"] + lb["cpu_system"], "lb_rss": lb["rss"],
            "backlog": lb["total_backlog"], "largest_backlog": lb["largest_backlog"],
            "reconnects": lb["reconnects"], "disconnects": dict(lb["disconnects"]),
            "sim_time": sim.get("time"), "sim_trades": sim.get("trades"),
        })

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(5)
        return self.samples


def _rate(samples: list[dict[str, Any]], i: int, value: str, clock: str) -> float:
    a, b = samples[i - 1], samples[i]
    if a.get(value) is None or b.get(value) is None or a.get(clock) is None or b.get(clock) is None:
        return 0.0
    dt = b[clock] - a[clock]  # the writer's own clock: the difference between two of its files
    return (b[value] - a[value]) / dt if dt > 0 else 0.0


def series(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Columns over time (one row per sample after the first) and the reconnect events."""
    rows = []
    events = []
    for i in range(1, len(samples)):
        s = samples[i]
        rows.append({
            "t": s["t"],
            "lb_trades_per_s": round(_rate(samples, i, "lb_trades", "lb_time"), 1),
            "sim_trades_per_s": round(_rate(samples, i, "sim_trades", "sim_time"), 1),
            "lb_rss_mib": round(s["lb_rss"] / 2**20, 2),
            "lb_cpu_pct": round(_rate(samples, i, "lb_cpu", "lb_time") * 100, 1),
            "backlog_mib": round(s["backlog"] / 2**20, 3),
            "largest_backlog_mib": round(s["largest_backlog"] / 2**20, 3),
            "reconnects": s["reconnects"],
        })
    previous: dict[str, int] = {}
    for s in samples:
        for cause, count in sorted(s["disconnects"].items()):
            if count > previous.get(cause, 0):
                events.append({"t": s["t"], "cause": cause, "count": count - previous.get(cause, 0)})
        previous = s["disconnects"]
    return {"columns": list(COLUMNS), "rows": rows, "events": events}


def _charts(data: dict[str, Any], directory: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, events = data["rows"], data["events"]
    t = [r["t"] for r in rows]
    causes = sorted({e["cause"] for e in events})
    colours = {cause: plt.get_cmap("tab10")(i % 10) for i, cause in enumerate(causes)}

    def mark_events(ax: Any) -> None:
        for e in events:
            ax.axvline(e["t"], color=colours[e["cause"]], alpha=0.35, linewidth=1)

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(os.path.join(directory, name), dpi=80)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(t, [r["lb_trades_per_s"] for r in rows], label="lb routed", linewidth=1.2)
    ax.plot(t, [r["sim_trades_per_s"] for r in rows], label="simulate sent", linewidth=0.8, alpha=0.8)
    mark_events(ax)
    ax.set(title=CHARTS["trades.png"] + " (vertical lines: disconnects)", xlabel="seconds",
           ylabel="trades/s")
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "trades.png")

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(t, [r["lb_rss_mib"] for r in rows], color="tab:blue", label="RSS")
    ax.set(title=CHARTS["lb_rss_cpu.png"], xlabel="seconds", ylabel="RSS MiB")
    ax.set_ylim(0, max([r["lb_rss_mib"] for r in rows], default=1) * 1.25)
    right = ax.twinx()
    right.plot(t, [r["lb_cpu_pct"] for r in rows], color="tab:orange", linewidth=0.8, label="CPU")
    right.set_ylabel("CPU % of one core")
    right.set_ylim(bottom=0)
    fig.legend(loc="lower right", fontsize=8)
    save(fig, "lb_rss_cpu.png")

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.fill_between(t, [r["backlog_mib"] for r in rows], step="post", alpha=0.5, label="all pipes")
    ax.plot(t, [r["largest_backlog_mib"] for r in rows], drawstyle="steps-post", color="tab:red",
            linewidth=0.8, label="largest pipe")
    ax.set(title=CHARTS["backlog.png"], xlabel="seconds", ylabel="MiB")
    ax.legend(loc="upper right", fontsize=8)
    save(fig, "backlog.png")

    fig, ax = plt.subplots(figsize=(8, 3))
    for cause in causes:
        times, totals, total = [0.0], [0], 0
        for e in events:
            if e["cause"] == cause:
                total += e["count"]
                times.append(e["t"])
                totals.append(total)
        times.append(t[-1] if t else 0.0)
        totals.append(total)
        ax.step(times, totals, where="post", color=colours[cause], label=cause)
    ax.set(title=CHARTS["reconnects.png"] + " (cumulative)", xlabel="seconds", ylabel="disconnects")
    if causes:
        ax.legend(loc="upper left", fontsize=8)
    save(fig, "reconnects.png")


def _html(text: str, data: dict[str, Any]) -> str:
    figures = "\n".join(
        f'<figure><img src="{name}" alt="{html.escape(title)}"><figcaption>{html.escape(title)}'
        f"</figcaption></figure>" for name, title in CHARTS.items())
    events = ", ".join(f"{e['t']:.0f}s {e['cause']}" for e in data["events"]) or "none"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lb-soak report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}pre{{background:#f4f4f4;
padding:1em;overflow-x:auto}}img{{max-width:100%}}</style></head>
<body><h1>lb-soak report</h1>
<pre>{html.escape(text.strip())}</pre>
{figures}
<p>Disconnect events (as lb counted them): {html.escape(events)}</p>
<p>The series: <a href="series.csv">series.csv</a>, <a href="series.json">series.json</a>;
the figures: <a href="report.json">report.json</a>.</p>
</body></html>
"""


def write_report(directory: str, result: dict[str, Any], text: str,
                 samples: list[dict[str, Any]]) -> list[str]:
    """report.txt, report.json, series.csv/json, the charts and index.html; returns their names."""
    os.makedirs(directory, exist_ok=True)
    data = series(samples)
    with open(os.path.join(directory, "report.txt"), "w") as f:
        f.write(text.strip() + "\n")
    with open(os.path.join(directory, "report.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(directory, "series.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(directory, "series.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(data["rows"])
    _charts(data, directory)
    with open(os.path.join(directory, "index.html"), "w") as f:
        f.write(_html(text, data))
    return ["report.txt", "report.json", "series.json", "series.csv", *CHARTS, "index.html"]
