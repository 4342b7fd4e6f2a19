"""--metrics: lb, simulate and lb-pool scraped over HTTP during a run with a fault (TCP reset)."""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from balancer import metrics
from harness.lb import LbProcess
from harness.net import free_port
from harness.sim import SimProcess
from harness.wait import read_json, wait_for

POOL = os.path.join(os.path.dirname(sys.executable), "lb-pool")


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """The samples at /metrics, or {} while nothing listens yet (a process still starting)."""
    try:
        reply = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return {}
        raise
    with reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_and_label_the_cause(tmp_path):
    sim_port, lb_port, pool_port = free_port(), free_port(), free_port()
    sim = SimProcess(["--rate", "20k/s", "--symbols", "300", "--drop-every", "1.5s", "--fault", "reset",
                      "--seed", "3", "--metrics", str(sim_port), "-q"]).start()
    pool_stats = str(tmp_path / "pool.json")
    lb = LbProcess(sim.url, 4, str(tmp_path),
                   [POOL, "--procs", "2", "--handler", "stats", "--interval", "0.5",
                    "--metrics", f"127.0.0.1:{pool_port}", "--stats-file", pool_stats],
                   options=["--cafile", sim.cafile or "", "--stats-interval", "0",
                            "--metrics", f"127.0.0.1:{lb_port}"])
    try:
        lb.start()
        first = wait_for(lambda: (s := scrape(lb_port)) and value(s, "lb_trades_total") > 0 and s,
                         15, "lb_trades_total above 0")
        later = wait_for(lambda: (s := scrape(lb_port))
                         and value(s, "lb_disconnects_total", cause="reset")
                         + value(s, "lb_disconnects_total", cause="eof") >= 1
                         and value(s, "lb_trades_total") > value(first, "lb_trades_total") and s,
                         15, "a reset counted and more trades")
        sim_samples = wait_for(lambda: (s := scrape(sim_port))
                               and value(s, "simulate_faults_total", cause="reset") >= 1
                               and value(s, "simulate_connections_total") >= 2 and s,
                               10, "the simulator's reset fault counted, lb back")
        pool_samples = wait_for(lambda: (s := scrape(pool_port)) and sum(
            v for (name, _), v in s.items() if name == "lb_pool_messages_total") > 0 and s,
            10, "the pool's handled messages")
        stats = lb.stats()
        pool_file = wait_for(lambda: (f := read_json(pool_stats)) and f["messages"] > 0 and f, 10,
                             "the pool's stats file with messages handled")
        assert lb.stop() == 0, lb.log()
    except BaseException:
        print(lb.log(), sim.log())  # shown by pytest when the test fails
        raise
    finally:
        lb.__exit__()
        sim.cleanup()

    # lb: counters moved between two scrapes, the fault's cause labelled, stable series
    assert value(later, "lb_reconnects_total") >= 1
    assert value(later, "lb_connects_total") >= 2
    assert value(later, "lb_received_bytes_total") > value(first, "lb_received_bytes_total")
    assert value(later, "lb_disconnects_total", cause="timeout") == 0  # exported before it happens
    assert value(later, "lb_pipe_write_seconds_count") > 0
    count = value(later, "lb_pipe_write_seconds_count")
    assert value(later, "lb_pipe_write_seconds_bucket", le="+Inf") == count
    written = sum(value(later, "lb_pipe_written_bytes_total", pipe=str(p)) for p in range(4))
    assert written > 0
    assert {"pipe": "3"} in [dict(labels) for (name, labels) in later if name == "lb_pipe_backlog_bytes"]
    info = [dict(labels) for (name, labels) in later if name == "lb_info"]
    assert info and info[0]["tls"] in ("userspace", "ktls") and info[0]["engine"] in ("native", "python")
    assert value(later, "process_cpu_seconds_total") > 0
    assert value(later, "process_resident_memory_bytes") > 0
    assert metrics.unexported(stats) == []  # every key of the real --stats-file has a metric

    # simulate and lb-pool, the same way
    assert value(sim_samples, "simulate_trades_total") > 0
    assert value(sim_samples, "simulate_faults_total", cause="stall") == 0
    assert value(pool_samples, "lb_pool_children", state="running") == 2
    assert [k for k in pool_samples if k[0] == "lb_pool_top_symbol_trades"]
    assert pool_file["program"] == "lb-pool" and pool_file["restarts"] == 0


async def test_ping_round_trip_time_is_measured(tmp_path, dump_worker):
    """A quiet feed: lb pings after --ping-interval; the pong's round trip is lb_ping_rtt_seconds."""
    import asyncio

    from harness.wait import async_wait_for
    from tests.integration.polyserver import PolyServer

    port = free_port()
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 2, str(tmp_path), dump_worker,
                       options=["--stats-interval", "0", "--ping-interval", "0.3", "--ping-timeout", "2",
                                "--metrics", str(port)])
        try:
            lb.start(wait_ready=None)
            await server.next_connection()
            await async_wait_for(lambda: lb.stats().get("pongs", 0) >= 2, 10, "two pongs")
            samples = await asyncio.to_thread(scrape, port)
            stats = lb.stats()
        finally:
            await asyncio.to_thread(lb.stop)
            lb.__exit__()
    rtt = value(samples, "lb_ping_rtt_seconds")
    assert 0 < rtt < 2, rtt
    assert 0 < stats["ping_rtt"] < 2
    assert value(samples, "lb_pongs_total") >= 2
    assert next(dict(labels) for (name, labels) in samples if name == "lb_info")["tls"] == "none"


def test_a_metrics_port_in_use_is_exit_2_before_connecting(tmp_path):
    import subprocess

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        lb = subprocess.run([sys.executable, "-m", "balancer", "--metrics", str(port), "k",
                             "ws://127.0.0.1:9/stocks", "2", str(tmp_path), "/bin/cat"],
                            capture_output=True, text=True, timeout=30)
        pool = subprocess.run([POOL, "--metrics", f"127.0.0.1:{port}", "0"], capture_output=True,
                              text=True, timeout=30)
    assert lb.returncode == 2, lb.stderr
    assert f"--metrics 127.0.0.1:{port}:" in lb.stderr and "worker" not in lb.stderr
    assert pool.returncode == 2 and f"--metrics 127.0.0.1:{port}:" in pool.stderr
