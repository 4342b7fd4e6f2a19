"""``lb --metrics HOST:PORT``: every counter of ``--stats-file`` for Prometheus, at ``/metrics``.

A custom collector reads the balancer's counters when a scrape arrives (nothing is counted
twice and nothing runs per trade), and the scrape is answered on lb's own event loop by a
small asyncio HTTP responder: no thread, so nothing can hold a lock when lb forks its worker,
and the snapshot is consistent (the loop is not in the middle of a read). A scrape costs a few
hundred microseconds of the loop (docs/observability.md, "Prometheus"), once per scrape interval.

Names follow Prometheus' conventions: an ``lb_`` prefix, ``_total`` for counters, base units
(seconds, bytes) in the name, and labels ``pipe``, ``cause``, ``tls``, ``engine``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from balancer.causes import Cause

TEXT_FORMAT = b"text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes

log = logging.getLogger("lb")

DEFAULT_HOST = "127.0.0.1"

# every disconnect cause lb counts: all exported from the start, so rate() and increase()
# see a series at 0 before the first event, not a series that appears out of nowhere
CAUSES = tuple(Cause)

# stats-file key -> (metric name without _total, help) for plain counters
COUNTERS = {
    "trades": ("lb_trades", "Trades routed to the pipes"),
    "messages": ("lb_messages", "Websocket data messages received"),
    "frames": ("lb_frames", "Websocket frames received"),
    "bytes": ("lb_received_bytes", "Websocket bytes read from the socket (after TLS)"),
    "reads": ("lb_socket_reads", "Socket reads that returned data"),
    "connects": ("lb_connects", "Connection attempts"),
    "reconnects": ("lb_reconnects", "Reconnects after a disconnect"),
    "status_events": ("lb_status_events", "Polygon status events received"),
    "pings": ("lb_pings", "Pings lb sent after --ping-interval of silence"),
    "pongs": ("lb_pongs", "Pongs received"),
    "ping_timeouts": ("lb_ping_timeouts", "Connections declared dead: no pong within --ping-timeout"),
    "server_closes": ("lb_server_closes", "Websocket close frames the server sent first"),
    "worker_starts": ("lb_worker_starts", "Times the worker was started"),
    "worker_restarts": ("lb_worker_restarts", "Times the worker was re-forked after it exited or died"),
    "backpressure_pauses": ("lb_backpressure_pauses",
                            "Times lb stopped reading the socket: a pipe's backlog passed --max-backlog"),
    "slow_messages": ("lb_slow_path_messages", "Messages routed by the slow path (full JSON parse)"),
    "slow_objects": ("lb_slow_path_objects", "Objects routed by the slow path"),
    "unroutable": ("lb_unroutable_events", "Events without a sym, not routed"),
    "pipe_writes": ("lb_pipe_writes", "write() calls on the pipes"),
    "discarded_bytes": ("lb_discarded_bytes",
                        "Bytes of messages a dead worker had partly read, skipped to resync"),
    "discarded_messages": ("lb_discarded_messages", "Messages a dead worker had partly read"),
    "abandoned_pipes": ("lb_abandoned_pipes",
                        "Times the worker was restarted for holding none of its pipes while data waited"),
}

# stats-file key -> (metric name, help) for gauges
GAUGES = {
    "connected": ("lb_connected", "1 while subscribed and streaming"),
    "paused": ("lb_paused", "1 while lb does not read the socket (backpressure)"),
    "largest_backlog": ("lb_backlog_largest_bytes", "The largest pipe backlog queued in lb"),
    "total_backlog": ("lb_backlog_bytes", "Bytes queued in lb for all pipes"),
    "backlog_peak": ("lb_backlog_peak_bytes", "The largest total backlog seen"),
    "pipe_size": ("lb_pipe_size_bytes", "Pipe buffer size the kernel granted"),
    "worker_pid": ("lb_worker_pid", "The worker's pid (0 while it is being restarted)"),
    "ping_rtt": ("lb_ping_rtt_seconds", "Round trip of the last ping answered (0: none yet)"),
    "rss": ("lb_resident_memory_bytes", "Resident memory"),
    "max_rss": ("lb_max_resident_memory_bytes", "Peak resident memory"),
    "open_fds": ("lb_open_fds", "Open file descriptors"),
    "uptime": ("lb_uptime_seconds", "Seconds since lb started"),
    "started": ("lb_start_time_seconds", "Start time, seconds since the epoch"),
    "cert_failures": ("lb_certificate_failures", "Consecutive certificate verification failures"),
    "dumpable": ("lb_dumpable", "1 if lb can be dumped or traced (PR_GET_DUMPABLE); 0 by default"),
}

# stats-file keys exported otherwise, or not numbers
SPECIAL = {
    "disconnects": "lb_disconnects_total{cause}",
    "pipes": "lb_pipe_backlog_bytes{pipe}, lb_pipe_accepted_bytes_total{pipe}, "
             "lb_pipe_written_bytes_total{pipe}",
    "cpu_user": "lb_cpu_seconds_total{mode=user}",
    "cpu_system": "lb_cpu_seconds_total{mode=system}",
    "tls": "lb_info{tls, tls_version, cipher}",
    "engine": "lb_info{engine}",
    "pid": "process metrics (process_*)",
    "time": "the scrape itself",
    "worker_exits": "text of the last 20 exits; their count is lb_worker_restarts_total",
}

# lb_pipe_write_seconds buckets: 2**k ns for k in this range (256 ns .. 16.8 ms), then +Inf
BUCKET_BITS = range(8, 25)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or a bare ``PORT`` (on 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    host = host.removeprefix("[").removesuffix("]") or DEFAULT_HOST
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--metrics wants HOST:PORT or PORT, not {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--metrics port out of range: {text!r}")
    return host, number


def tls_labels(tls: str) -> dict[str, str]:
    """``userspace TLSv1.3 TLS_AES_256_GCM_SHA384`` -> tls, tls_version, cipher."""
    if tls.startswith("plain"):
        return {"tls": "none", "tls_version": "", "cipher": ""}
    parts = tls.split()
    mode = parts[0] if parts and parts[0] != "-" else "down"
    version = parts[1] if len(parts) > 1 else ""
    return {"tls": mode, "tls_version": version, "cipher": " ".join(parts[2:])}


def write_histogram(counts: list[int], sum_ns: int) -> HistogramMetricFamily:
    buckets = []
    cumulative = sum(counts[: BUCKET_BITS.start + 1])
    for k in BUCKET_BITS:
        if k > BUCKET_BITS.start:
            cumulative += counts[k]
        buckets.append((f"{2 ** k / 1e9:.9g}", cumulative))
    buckets.append(("+Inf", sum(counts)))
    return HistogramMetricFamily(
        "lb_pipe_write_seconds", "Duration of each write() on a pipe", buckets=buckets,
        sum_value=sum_ns / 1e9)


def families(snapshot: dict[str, Any], write_counts: list[int], write_sum_ns: int) -> Iterator[Metric]:
    """The metric families of one stats snapshot (the --stats-file dict)."""
    for key, (name, text) in COUNTERS.items():
        yield CounterMetricFamily(name, text, value=snapshot[key])
    for key, (name, text) in GAUGES.items():
        yield GaugeMetricFamily(name, text, value=float(snapshot[key]))
    disconnects = CounterMetricFamily("lb_disconnects", "Connections ended, by cause", labels=["cause"])
    seen = snapshot["disconnects"]
    for cause in sorted(set(CAUSES) | set(seen)):
        disconnects.add_metric([cause], seen.get(cause, 0))
    yield disconnects
    cpu = CounterMetricFamily("lb_cpu_seconds", "CPU time by mode", labels=["mode"])
    cpu.add_metric(["user"], snapshot["cpu_user"])
    cpu.add_metric(["system"], snapshot["cpu_system"])
    yield cpu
    pipes = snapshot["pipes"]
    for key, name, kind, text in (
        ("backlog", "lb_pipe_backlog_bytes", GaugeMetricFamily, "Bytes queued in lb for this pipe"),
        ("accepted", "lb_pipe_accepted", CounterMetricFamily, "Bytes accepted for this pipe (bytes)"),
        ("written", "lb_pipe_written", CounterMetricFamily, "Bytes the kernel took into this pipe (bytes)"),
    ):
        family = kind(name if kind is GaugeMetricFamily else f"{name}_bytes", text, labels=["pipe"])
        for pipe, value in enumerate(pipes[key]):
            family.add_metric([str(pipe)], value)
        yield family
    yield write_histogram(write_counts, write_sum_ns)
    info = InfoMetricFamily("lb", "The data path and the TLS of the current connection")
    info.add_metric([], {"engine": snapshot["engine"], **tls_labels(snapshot["tls"])})
    yield info


class BalancerCollector(Collector):
    """Reads the balancer at scrape time: ``snapshot`` is its refresh_stats()."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], write_times: Any) -> None:
        self.snapshot = snapshot
        self.write_times = write_times

    def collect(self) -> Iterable[Metric]:
        times = self.write_times
        return list(families(self.snapshot(), list(times.counts), times.sum_ns))


def registry_for(collector: Collector) -> CollectorRegistry:
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes...
    return registry


class MetricsServer:
    """``GET /metrics`` on the running asyncio loop; one short request per connection."""

    REQUEST_LIMIT = 8192
    REQUEST_TIMEOUT = 5.0

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.server: asyncio.Server | None = None
        self.scrapes = 0

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        address = self.server.sockets[0].getsockname()
        return address[0], address[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.REQUEST_TIMEOUT)
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if method not in (b"GET", b"HEAD"):
                status, body, kind = b"405 Method Not Allowed", b"GET only\n", b"text/plain"
            elif path not in (b"/metrics", b"/"):
                status, body, kind = b"404 Not Found", b"see /metrics\n", b"text/plain"
            else:
                self.scrapes += 1
                status, body, kind = b"200 OK", generate_latest(self.registry), TEXT_FORMAT
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
            if method != b"HEAD":
                writer.write(body)
            await asyncio.wait_for(writer.drain(), self.REQUEST_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        except Exception:  # a scrape must never take lb down
            log.exception("metrics: scrape failed")
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


async def start(balancer: Any, host: str, port: int) -> MetricsServer:
    """Serve the balancer's metrics at http://HOST:PORT/metrics on the running loop."""
    registry = registry_for(BalancerCollector(balancer.refresh_stats, balancer.pipes.write_times))
    server = MetricsServer(registry)
    bound = await server.start(host, port)
    log.info("metrics at http://%s:%d/metrics", *bound)
    return server


def unexported(snapshot: dict[str, Any]) -> list[str]:
    """Stats-file keys this module does not export (the test keeps this empty)."""
    return sorted(k for k in snapshot if k not in COUNTERS and k not in GAUGES and k not in SPECIAL)
