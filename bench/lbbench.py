"""CPU-microseconds per trade of a balancer process, fed by bench.blaster, drained by
bench.drain_worker. lb's user+sys CPU (from /proc) is sampled just before the first
byte is sent and when the worker has received the last byte: start-up is excluded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from harness.wait import wait_for, wait_json

TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


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

    def row(self) -> str:
        return (f"{self.balancer:<6} {self.tls:<10} {self.batch:>6} {self.npipes:>5} {self.trades:>9,} "
                f"{self.cpu_us_per_trade:>8.3f} {self.trades_per_s:>12,.0f} {self.peak_rss / 2**20:>8.1f}")


HEADER = (f"{'lb':<6} {'transport':<10} {'batch':>6} {'pipes':>5} {'trades':>9} "
          f"{'CPU-us/t':>8} {'trades/s':>12} {'RSS MiB':>8}")


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


def run_once(balancer: str, tls: str, batch: int, npipes: int, trades: int) -> Result:
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
        worker = [sys.executable, "-m", "bench.drain_worker", "--expect", str(info["pipe_bytes"]),
                  "--notify", fifo]
        if balancer in ("lb", "lb-py"):
            cmd = [sys.executable, "-m", "balancer", "--stats-interval", "0", "-q",
                   "--engine", "native" if balancer == "lb" else "python"]
            if cafile:
                cmd += ["--cafile", cafile, "--tls", tls]
        else:
            cmd = [sys.executable, "-m", "bench.naive_balancer"]
            if cafile:
                cmd += ["--cafile", cafile]
        cmd += ["bench-key", info["url"], str(npipes), work, *worker]
        lb = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        assert blaster.stdout is not None and blaster.stdin is not None
        line = blaster.stdout.readline()
        if line.strip() != "subscribed":
            raise RuntimeError(f"blaster said {line!r}")
        done = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        cpu0 = proc_cpu(lb.pid)
        t0 = time.monotonic()
        blaster.stdin.write("go\n")
        blaster.stdin.flush()
        os.set_blocking(done, True)
        wait_for(lambda: os.read(done, 100), 600, "the worker to receive every byte", interval=0)
        t1 = time.monotonic()
        cpu1 = proc_cpu(lb.pid)
        os.close(done)
        rss = proc_peak_rss(lb.pid)
        return Result(balancer, tls, batch, npipes, trades, (cpu1 - cpu0) / trades * 1e6,
                      trades / (t1 - t0), rss)
    finally:
        if lb is not None:
            lb.send_signal(signal.SIGTERM)
            try:
                lb.wait(30)
            except subprocess.TimeoutExpired:
                lb.kill()
        blaster.kill()
        blaster.wait()


if __name__ == "__main__":
    print(HEADER)
    for args in [("lb", "none", 1000, 32, 1_000_000)]:
        print(run_once(*args).row(), flush=True)
