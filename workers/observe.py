"""What the pool shows while it runs: ``lb-pool --stats-file`` (JSON, every --interval) and
``lb-pool --metrics HOST:PORT`` (Prometheus, ``/metrics``).

The pool's loop is a plain ``poll``; the metrics socket is one more fd in it, and a scrape is
answered there, between two polls (the pool only supervises: the children read the pipes, so
a scrape never delays a trade). No thread: the pool forks its children without exec, and a
thread could hold a lock at that moment.

prometheus_client is imported only with --metrics (it takes ~0.2 s to import).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

TEXT_FORMAT = b"text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes

TOP = 10


def symbol_counts(merged: Any) -> dict[str, int]:
    """Trades per symbol from a merged snapshot: the stats handler's rows or verify's report."""
    symbols = merged.get("symbols") if isinstance(merged, dict) else None
    if not isinstance(symbols, dict):
        return {}
    counts = {}
    for symbol, row in symbols.items():
        if isinstance(row, list) and row:
            counts[symbol] = int(row[0])
        elif isinstance(row, dict) and "count" in row:
            counts[symbol] = int(row["count"])
    return counts


def snapshot(pool: Any, merged: Any) -> dict[str, Any]:
    """The pool's live figures (``lb-pool --stats-file``)."""
    handled: dict[str, int] = {}
    for child in pool.children:
        if child.latest is not None:
            handled.update(child.latest["handled"])
    counts = symbol_counts(merged)
    top = sorted(counts.items(), key=lambda item: item[1], reverse=True)[:TOP]
    times = os.times()
    return {
        "program": "lb-pool",
        "pid": pool.pid,
        "time": time.time(),
        "handler": pool.options.handler,
        "npipes": pool.npipes,
        "stopping": pool.stopping,
        "messages": sum(handled.values()),
        "handled": handled,
        "children": [{"index": c.index, "pid": c.pid, "pipes": c.pipes, "state": c.state,
                      "restarts": c.restarts} for c in pool.children],
        "restarts": sum(c.restarts for c in pool.children),
        "symbols": len(counts),
        "top": [{"sym": symbol, "trades": n} for symbol, n in top],
        "accounting": pool.accounting(),
        "cpu_user": times.user,
        "cpu_system": times.system,
    }


class PoolCollector:
    """A prometheus_client collector (``collect``), imported only with --metrics."""

    def __init__(self, take: Callable[[], dict[str, Any]]) -> None:
        self.take = take

    def collect(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.take()
        messages = CounterMetricFamily("lb_pool_messages", "Messages the children handled, by pipe",
                                       labels=["pipe"])
        for pipe in range(s["npipes"]):
            messages.add_metric([str(pipe)], s["handled"].get(str(pipe), 0))
        children = GaugeMetricFamily("lb_pool_children", "Children by state", labels=["state"])
        for state in ("running", "restarting", "finished"):
            children.add_metric([state], sum(1 for c in s["children"] if c["state"] == state))
        restarts = CounterMetricFamily("lb_pool_child_restarts", "Re-forks of each child",
                                       labels=["child"])
        for c in s["children"]:
            restarts.add_metric([str(c["index"])], c["restarts"])
        out: list[Any] = [messages, children, restarts]
        accounting = s["accounting"]
        for key, text in (
            ("discarded_bytes", "Bytes of messages a dead child had partly read, skipped (bytes)"),
            ("discarded_messages", "Messages a dead child had partly read"),
            ("uncertain_resyncs", "Resyncs after a child died inside read()"),
            ("unhandled_messages", "Messages a dead child had read but not handled"),
            ("skipped_bytes", "Bytes the readers skipped as malformed framing (bytes)"),
        ):
            out.append(CounterMetricFamily(f"lb_pool_{key}", text, value=accounting[key]))
        top = GaugeMetricFamily("lb_pool_top_symbol_trades",
                                f"Trades of the {TOP} busiest symbols so far", labels=["symbol"])
        for row in s["top"]:
            top.add_metric([row["sym"]], row["trades"])
        out.append(top)
        out.append(GaugeMetricFamily("lb_pool_symbols", "Symbols seen", value=s["symbols"]))
        return out


class MetricsSocket:
    """The listening socket the pool polls; ``serve_one`` answers one scrape."""

    TIMEOUT = 2.0

    def __init__(self, host: str, port: int, take: Callable[[], dict[str, Any]]) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PoolCollector(take))
        ProcessCollector(registry=self.registry)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=16)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_one(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(self.TIMEOUT)
            try:
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 8192:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
                parts = head.split(b" ", 2)
                path = parts[1].partition(b"?")[0] if len(parts) > 2 else b""
                if parts[0] == b"GET" and path in (b"/metrics", b"/"):
                    from prometheus_client import generate_latest

                    status, body, kind = b"200 OK", generate_latest(self.registry), \
                        TEXT_FORMAT
                else:
                    status, body, kind = b"404 Not Found", b"GET /metrics\n", b"text/plain"
                conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind
                             + b"\r\nContent-Length: " + str(len(body)).encode()
                             + b"\r\nConnection: close\r\n\r\n" + body)
            except OSError:  # a client that went away or stalled past TIMEOUT
                pass

    def close(self) -> None:
        self.sock.close()


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or a bare ``PORT`` (on 127.0.0.1)."""
    import argparse

    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if sep else ""
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"HOST:PORT or PORT, not {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {text!r}")
    return host or "127.0.0.1", number
