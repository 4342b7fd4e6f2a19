"""The JetStream chain for tests: simulate -> lb -> lb-bridge -> nats-server -> lb-remote -> worker."""

from __future__ import annotations

import glob
import os
import sys
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from harness.jetstream import BIN, RemoteProcess
from harness.lb import LbProcess
from harness.sim import SimProcess
from harness.wait import read_json, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
BRIDGE = os.path.join(BIN, "lb-bridge")
POOL = os.path.join(BIN, "lb-pool")
RECORDER = [sys.executable, os.path.join(HERE, "js_record_worker.py")]
DUMP = [sys.executable, os.path.join(HERE, "dump_worker.py")]
ENV = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(HERE))}


def compare(ledger: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """Per-symbol differences between what was sent whole and what the verify worker received."""
    problems = []
    sent, got = ledger["symbols"], report["symbols"]
    for symbol in sorted(set(sent) | set(got)):
        a = sent.get(symbol)
        b = {k: got.get(symbol, {}).get(k) for k in ("count", "first_q", "last_q", "crc32")}
        if a != b:
            problems.append(f"{symbol}: sent {a}, received {b}")
    return problems


@dataclass
class Chain:
    tmp: str
    nats_url: str
    trades: int = 100_000
    rate: str = "50k/s"
    npipes: int = 8
    stream: str = "FEED"
    bridge_options: list[str] = field(default_factory=list)
    sim: SimProcess | None = None
    lb: LbProcess | None = None
    remotes: list[RemoteProcess] = field(default_factory=list)

    @property
    def lb_dir(self) -> str:
        path = os.path.join(self.tmp, "lb")
        os.makedirs(path, exist_ok=True)
        return path

    def remote_dir(self, name: str = "remote") -> str:
        path = os.path.join(self.tmp, name)
        os.makedirs(path, exist_ok=True)
        return path

    @property
    def bridge_stats(self) -> dict[str, Any]:
        return read_json(os.path.join(self.lb_dir, "bridge.json")) or {}

    def start_feed(self, sim_args: tuple[str, ...] = ()) -> None:
        self.sim = SimProcess(["--no-tls", "--rate", self.rate, "--trades", str(self.trades), "--seed", "7",
                               "--symbols", "400", "-q", *sim_args]).start()
        bridge = [BRIDGE, "--nats", self.nats_url, "--stream", self.stream, "--stats-file",
                  os.path.join(self.lb_dir, "bridge.json"), "--stats-interval", "0.2", *self.bridge_options]
        self.lb = LbProcess(self.sim.url, self.npipes, self.lb_dir, bridge,
                            options=["--stats-interval", "0.2"], env=ENV).start()

    def remote(self, worker: list[str], *, name: str = "remote", durable: str = "lb-remote",
               options: list[str] | None = None) -> RemoteProcess:
        remote = RemoteProcess(self.nats_url, self.stream, f"0-{self.npipes - 1}", self.remote_dir(name),
                               worker, options=["--durable", durable, *(options or [])], env=ENV)
        self.remotes.append(remote)
        return remote.start()

    def verify_worker(self, name: str = "remote", handler: str = "verify") -> tuple[list[str], str]:
        report = os.path.join(self.remote_dir(name), "report.json")
        return [POOL, "--procs", "2", "--handler", handler, "--report", report], report

    def ledger(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.sim is not None
        self.sim.wait(timeout)
        return self.sim.ledger()

    def wait_delivered(self, remote: RemoteProcess, count: int, timeout: float = 60.0) -> None:
        def done() -> bool:
            stats = remote.stats()
            return stats.get("messages", 0) >= count and not stats.get("backlog_bytes")

        wait_for(done, timeout, lambda: f"lb-remote to deliver {count} messages ({self.logs()[-3000:]})")

    def logs(self) -> str:
        text = self.lb.log() if self.lb else ""
        for remote in self.remotes:
            text += remote.log()
        return text

    def cleanup(self) -> None:
        for remote in self.remotes:
            remote.cleanup()
        if self.lb is not None:
            self.lb.__exit__()
        if self.sim is not None:
            self.sim.cleanup()


@dataclass
class Recorded:
    """What js_record_worker.py wrote, per pipe, over every worker process in start order."""

    payloads: dict[int, list[bytes]]
    partial_tails: int  # worker runs that ended inside a message on some pipe


def read_recorded(workdir: str, npipes: int) -> Recorded:
    files: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for path in glob.glob(os.path.join(workdir, "rec.*.bin")):
        _, stamp, _pid, pipe, _ = os.path.basename(path).split(".")
        files[int(pipe)].append((int(stamp), path))
    payloads: dict[int, list[bytes]] = {}
    tails = 0
    for pipe in range(npipes):
        out: list[bytes] = []
        for _, path in sorted(files[pipe]):
            with open(path, "rb") as f:
                data = f.read()
            pos = 0
            while len(data) - pos >= 4:
                end = pos + 4 + int.from_bytes(data[pos : pos + 4], "little")
                if end > len(data):
                    break
                out.append(data[pos + 4 : end])
                pos = end
            tails += pos < len(data)
        payloads[pipe] = out
    return Recorded(payloads, tails)


@dataclass
class Tally:
    received: int = 0
    missing: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    crc_mismatch: int = 0


def tally(ledger: dict[str, Any], recorded: Recorded) -> Tally:
    """Per symbol, against the ledger (q consecutive per symbol in the synthetic market)."""
    by_symbol: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    for payloads in recorded.payloads.values():
        for payload in payloads:
            trade = orjson.loads(payload)
            by_symbol[trade["sym"]].append((trade["q"], payload))
    t = Tally()
    for symbol, sent in ledger["symbols"].items():
        got = by_symbol.pop(symbol, [])
        t.received += len(got)
        seen: set[int] = set()
        last = -1
        crc = 0
        for q, payload in got:
            if q in seen:
                t.duplicates += 1
                continue
            seen.add(q)
            if q < last:
                t.out_of_order += 1
            last = q
            crc = zlib.crc32(payload, crc)
        expected = set(range(sent["first_q"], sent["last_q"] + 1))
        t.missing += len(expected - seen)
        t.out_of_order += len(seen - expected)
        if crc != sent["crc32"]:
            t.crc_mismatch += 1
    t.out_of_order += sum(len(v) for v in by_symbol.values())  # never sent
    return t
