"""CPU-microseconds per trade of a balancer process, fed by bench.blaster, drained by
bench.drain_worker. lb's user+sys CPU (from /proc) is sampled just before the first
byte is sent and when the worker has received the last byte: start-up is excluded.

Besides lb (``lb`` = native engine, ``lb-py`` = pure Python) and the naive baseline, any
external balancer command with lb's argv convention (``CMD... KEY URL NPIPES WORKDIR EXE
ARGS...``, the worker given the read ends as trailing fd arguments) can be measured, e.g. the
C original. A program that does fixed work after it subscribes (the C original memsets a
288 MB buffer on connect) is charged for it here; ``cpu_s`` lets the caller subtract a tiny
run's figure to get the cost net of start-up."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from harness.wait import FifoSignal, wait_json

TICKS = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))


def proc_cpu(pid: int) -> float:
    user, system = proc_cpu_split(pid)
    return user + system


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def proc_peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Result:
    balancer: str
    tls: str
    batch: int
    npipes: int
    trades: int
    cpu_us_per_trade: float
    trades_per_s: float
    peak_rss: int
    cpu_s: float = 0.0  # user+sys seconds between the first and the last byte
    sys_s: float = 0.0  # of which in the kernel
    net_cpu_us_per_trade: float | None = None  # net of the fixed cost of a tiny run (see bench)

    def row(self) -> str:
        net = "" if self.net_cpu_us_per_trade is None else f"{self.net_cpu_us_per_trade:>9.3f}"
        return (f"{self.balancer:<8} {self.tls:<10} {self.batch:>6} {self.npipes:>5} {self.trades:>9,} "
                f"{self.cpu_us_per_trade:>8.3f} {self.trades_per_s:>12,.0f} {self.peak_rss / 2**20:>8.1f}"
                f"{net}")


HEADER = (f"{'lb':<8} {'transport':<10} {'batch':>6} {'pipes':>5} {'trades':>9} "
          f"{'CPU-us/t':>8} {'trades/s':>12} {'RSS MiB':>8} {'net-us/t':>8}")


def certificate(workdir: str) -> tuple[str, str]:
    """(server cert+key PEM, CA PEM) for localhost, made with trustme."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_pem = os.path.join(workdir, "server.pem")
    ca_pem = os.path.join(workdir, "ca.pem")
    cert.private_key_and_cert_chain_pem.write_to_path(server_pem)
    ca.cert_pem.write_to_path(ca_pem)
    return server_pem, ca_pem


def balancer_command(balancer: str, tls: str, cafile: str | None, external: list[str] | None) -> list[str]:
    """The command line before lb's positional arguments."""
    if external is not None:
        return list(external)
    if balancer in ("lb", "lb-py"):
        cmd = [sys.executable, "-m", "balancer", "--stats-interval", "0", "-q",
               "--engine", "native" if balancer == "lb" else "python"]
        if cafile:
            cmd += ["--cafile", cafile, "--tls", tls]
        return cmd
    cmd = [sys.executable, "-m", "bench.naive_balancer"]
    if cafile:
        cmd += ["--cafile", cafile]
    return cmd


def run_once(balancer: str, tls: str, batch: int, npipes: int, trades: int,
             external: list[str] | None = None) -> Result:
    work = tempfile.mkdtemp(prefix="lbbench-")
    ready = os.path.join(work, "blaster.json")
    fifo = os.path.join(work, "done.fifo")
    os.mkfifo(fifo)
    blaster_cmd = [sys.executable, "-m", "bench.blaster", "--trades", str(trades), "--batch", str(batch),
                   "--ready-file", ready]
    cafile = None
    if tls != "none":
        server_pem, cafile = certificate(work)
        blaster_cmd += ["--certfile", server_pem]
    blaster = subprocess.Popen(blaster_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lb = None
    try:
        info = wait_json(ready, 120, "the blaster")
        # By absolute path, not -m: an external balancer may exec it in WORKDIR with execv.
        # A balancer that forwards the two status replies as trades (the C original: +138
        # bytes) is sampled that much early, a fraction of one trade.
        worker = [sys.executable, os.path.join(HERE, "drain_worker.py"), "--expect", str(info["pipe_bytes"]),
                  "--notify", fifo]
        cmd = balancer_command(balancer, tls, cafile, external)
        cmd += ["bench-key", info["url"], str(npipes), work, *worker]
        quiet = external is not None and not os.environ.get("BENCH_VERBOSE")
        lb = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL if quiet else None)
        assert blaster.stdout is not None and blaster.stdin is not None
        line = blaster.stdout.readline()
        if line.strip() != "subscribed":
            raise RuntimeError(f"blaster said {line!r}")
        done = FifoSignal(fifo)
        user0, sys0 = proc_cpu_split(lb.pid)
        profiler = None
        if os.environ.get("BENCH_PERF"):  # profile the balancer over the measured window only
            profiler = subprocess.Popen(["perf", "record", "-F", "4000", "-g", "-p", str(lb.pid),
                                         "-o", os.environ["BENCH_PERF"]], stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        blaster.stdin.write("go\n")
        blaster.stdin.flush()
        done.wait(600, "the worker to receive every byte")
        t1 = time.monotonic()
        user1, sys1 = proc_cpu_split(lb.pid)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
        cpu0, cpu1 = user0 + sys0, user1 + sys1
        done.close()
        rss = proc_peak_rss(lb.pid)
        return Result(balancer, tls, batch, npipes, trades, (cpu1 - cpu0) / trades * 1e6,
                      trades / (t1 - t0), rss, cpu1 - cpu0, sys1 - sys0)
    finally:
        if lb is not None:
            lb.send_signal(signal.SIGTERM)
            try:
                lb.wait(30)
            except subprocess.TimeoutExpired:
                lb.kill()
        blaster.kill()
        blaster.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(HEADER)
    for args in [("lb", "none", 1000, 32, 1_000_000)]:
        print(run_once(*args).row(), flush=True)
