"""What the simulator shows while it runs: ``--stats-file`` (JSON, every second) and
``--metrics HOST:PORT`` (Prometheus, ``/metrics``).

Both read the same snapshot of the feed and the ledger, taken on the event loop. The
metrics are served by a small asyncio responder on that loop (the simulator never imports
lb's code; this is its own), and collected when a scrape arrives.

prometheus_client is imported only with --metrics (it takes ~0.2 s to import).
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Callable
from typing import Any

import orjson

from simulator.config import FAULT_KINDS
from simulator.ledger import write_atomically

TEXT_FORMAT = b"text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes

STATS_EVERY = 1.0


def snapshot(sim: Any) -> dict[str, Any]:
    """The simulator's live figures (``simulate --stats-file``)."""
    feed = sim.feed.stats
    totals = sim.ledger.totals()
    last = sim.ledger.faults[-1] if sim.ledger.faults else None
    times = os.times()
    return {
        "program": "simulate",
        "pid": os.getpid(),
        "time": time.time(),
        "started": sim.ledger.started,
        "uptime": time.time() - sim.ledger.started,
        "url": getattr(sim, "url", ""),
        "rate_target": sim.settings.rate,  # trades/s, None for --rate max or a recorded pace
        "trades": feed.trades,
        "frames": feed.frames,
        "bytes": feed.bytes,
        "lag": feed.lag,
        "lag_resets": feed.lag_resets,
        "clients": len(sim.clients),
        "receiving": len(sim.feed.clients),
        "connections": totals["connections"],
        "trades_sent": totals["trades_sent"],
        "trades_partial": totals["trades_partial"],
        "faults": totals["faults"],
        "fault_mode": sim.settings.fault if sim.settings.drop_every else None,
        "last_fault": None if last is None else {"kind": last.kind, "time": last.time},
        "cpu_user": times.user,
        "cpu_system": times.system,
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


async def write_stats(sim: Any, path: str) -> None:
    while True:
        write_atomically(path, orjson.dumps(snapshot(sim)))
        await asyncio.sleep(STATS_EVERY)


class SimulatorCollector:
    """A prometheus_client collector (``collect``), imported only with --metrics."""

    def __init__(self, take: Callable[[], dict[str, Any]]) -> None:
        self.take = take

    def collect(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.take()
        out: list[Any] = []
        for key, name, text in (
            ("trades", "simulate_trades", "Trades sent (frames handed to the connections)"),
            ("frames", "simulate_frames", "Frames sent"),
            ("bytes", "simulate_sent_bytes", "Payload bytes sent"),
            ("connections", "simulate_connections", "Connections accepted"),
            ("trades_sent", "simulate_trades_sent_whole", "Trades in frames confirmed sent whole"),
            ("trades_partial", "simulate_trades_partial", "Trades in frames cut by a fault"),
            ("lag_resets", "simulate_lag_resets", "Times the paced feed gave up a backlog"),
        ):
            out.append(CounterMetricFamily(name, text, value=s[key]))
        for key, name, text in (
            ("clients", "simulate_clients", "Connected clients"),
            ("receiving", "simulate_receiving_clients", "Clients subscribed to trades"),
            ("lag", "simulate_lag_seconds", "How far the paced feed is behind its schedule"),
            ("uptime", "simulate_uptime_seconds", "Seconds since the simulator started"),
        ):
            out.append(GaugeMetricFamily(name, text, value=s[key]))
        target = s["rate_target"]
        out.append(GaugeMetricFamily("simulate_target_trades_per_second",
                                     "--rate (NaN for max or a recorded pace)",
                                     value=float("nan") if target is None else target))
        faults = CounterMetricFamily("simulate_faults", "Faults injected, by kind", labels=["cause"])
        for kind in sorted(set(FAULT_KINDS) | set(s["faults"])):
            faults.add_metric([kind], s["faults"].get(kind, 0))
        out.append(faults)
        return out


class MetricsServer:
    """``GET /metrics`` on the running loop, one request per connection."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        address = self.server.sockets[0].getsockname()
        return address[0], address[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            path = head.split(b" ", 2)[1].partition(b"?")[0] if head.count(b" ") >= 2 else b""
            if head.startswith(b"GET ") and path in (b"/metrics", b"/"):
                from prometheus_client import generate_latest

                status, body, kind = b"200 OK", generate_latest(self.registry), TEXT_FORMAT
            else:
                status, body, kind = b"404 Not Found", b"GET /metrics\n", b"text/plain"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await asyncio.wait_for(writer.drain(), 5.0)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def serve_metrics(sim: Any, host: str, port: int) -> MetricsServer:
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SimulatorCollector(lambda: snapshot(sim)))
    ProcessCollector(registry=registry)
    server = MetricsServer(registry)
    bound = await server.start(host, port)
    sim.log(f"metrics at http://{bound[0]}:{bound[1]}/metrics")
    return server


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or a bare ``PORT`` (on 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if sep else ""
    number = int(port)  # ValueError: argparse reports it
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range: {text!r}")
    return host or "127.0.0.1", number
