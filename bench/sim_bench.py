"""How fast the simulator feeds a fast client, over TLS and over ws://.

    python -m bench.sim_bench [--trades 3M] [--batch 1000] [--runs 3] [--json]

For each transport: ``simulate --rate max --trades N`` with a fixed seed, and a client that
authenticates, subscribes to ``T.*`` and then only counts bytes (``recv_into`` on one
buffer, TLS through ``ssl.SSLSocket``). The simulator's CPU time (user + system, from
/proc) is sampled when the first data byte arrives and when the server's close frame does
(the simulator confirms every frame before it closes), so start-up (building the tape) is
left out. Figures: CPU-microseconds per trade, the trades per second one core sustains at
that cost (``1 / cpu_per_trade``), and the trades per second the client actually saw.
The median of ``--runs`` runs is reported. ``run()`` returns the figures as a dict for
``python -m bench``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import ssl
import statistics
import struct
import time
from typing import Any
from urllib.parse import urlsplit

from harness.sim import SimProcess
from simulator.units import parse_count

RECV_BUFFER = 1 << 20


def _masked_frame(first_byte: int, payload: bytes) -> bytes:
    """A client-to-server frame (clients must mask, RFC 6455 section 5.3)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first_byte, 0x80 | length)
    else:
        header = struct.pack("!BBH", first_byte, 0x80 | 126, length)
    return header + mask + masked


def _masked_text(payload: bytes) -> bytes:
    return _masked_frame(0x81, payload)


def _frame_header(header: bytearray) -> tuple[int, int] | None:
    """(opcode, payload length) once ``header`` holds a whole server frame header."""
    if len(header) < 2:
        return None
    length = header[1] & 0x7F
    size = 2 + {126: 2, 127: 8}.get(length, 0)
    if len(header) < size:
        return None
    if length == 126:
        length = struct.unpack_from("!H", header, 2)[0]
    elif length == 127:
        length = struct.unpack_from("!Q", header, 2)[0]
    return header[0] & 0x0F, length


def _read_until(sock: socket.socket, marker: bytes, limit: int = 65536) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk or len(data) > limit:
            raise ConnectionError(f"connection ended before {marker!r}: {data[:200]!r}")
        data += chunk
    return data


class CountingClient:
    """Just enough websocket to authenticate and subscribe, then bytes are only counted."""

    def __init__(self, url: str, cafile: str | None) -> None:
        parts = urlsplit(url)
        raw = socket.create_connection((parts.hostname, parts.port), timeout=30)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        if parts.scheme == "wss":
            context = ssl.create_default_context(cafile=cafile)
            self.sock: socket.socket = context.wrap_socket(raw, server_hostname=parts.hostname)
        else:
            self.sock = raw
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = _read_until(self.sock, b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head.splitlines()[0]!r}")
        self.leftover = head.split(b"\r\n\r\n", 1)[1]
        self.leftover += _read_until(self.sock, b"Connected Successfully") if \
            b"Connected Successfully" not in self.leftover else b""

    def subscribe_all(self, key: str = "bench") -> None:
        self.sock.sendall(_masked_text(json.dumps({"action": "auth", "params": key}).encode()))
        _read_until(self.sock, b"authenticated")
        self.sock.sendall(_masked_text(b'{"action":"subscribe","params":"T.*"}'))

    def count_until_closed(self, on_first_byte: Any) -> tuple[int, float, float]:
        """Bytes up to the server's close frame, which is answered; returns (bytes, time of
        the first byte, time of the close frame). Only frame headers are looked at."""
        buffer = memoryview(bytearray(RECV_BUFFER))
        recv_into = self.sock.recv_into
        header = bytearray()
        remaining = 0  # payload bytes of the current frame still to come
        total, first = 0, 0.0
        while True:
            n = recv_into(buffer)
            if not n:
                raise ConnectionError("the server closed without a close frame")
            if not total:
                first = time.perf_counter()
                on_first_byte()
            total += n
            i = 0
            while i < n:
                if remaining:
                    step = min(remaining, n - i)
                    remaining -= step
                    i += step
                    continue
                header.append(buffer[i])
                i += 1
                parsed = _frame_header(header)
                if parsed is None:
                    continue
                opcode, remaining = parsed
                header.clear()
                if opcode == 0x8:
                    self.sock.sendall(_masked_frame(0x88, struct.pack("!H", 1000)))
                    return total, first, time.perf_counter()


def measure(transport: str, trades: int, batch: int, ledger: bool,
            seed: int = 1) -> dict[str, float]:
    """One run: the simulator's CPU per trade and the client's trades/s."""
    args = ["--rate", "max", "--batch", str(batch), "--trades", str(trades), "--seed", str(seed),
            "--stats-interval", "0", "-q", "--ping-interval", "0", "--drain-timeout", "30s"]
    if transport == "ws":
        args.append("--no-tls")
    with SimProcess(args, ledger=ledger) as sim:
        client = CountingClient(sim.url, sim.cafile)
        client.subscribe_all()
        cpu: list[float] = []
        nbytes, first, last = client.count_until_closed(lambda: cpu.append(sim.cpu_seconds()))
        cpu.append(sim.cpu_seconds())
        client.sock.close()
        sim.wait(60)
        if ledger:
            totals = sim.ledger()["totals"]
            if totals["trades_sent"] != trades:
                raise AssertionError(f"the ledger says {totals} for {trades} trades:\n{sim.log()}")
    cpu_per_trade = (cpu[1] - cpu[0]) / trades
    return {"cpu_us_per_trade": cpu_per_trade * 1e6,
            "core_trades_per_s": 1 / cpu_per_trade if cpu_per_trade else float("inf"),
            "client_trades_per_s": trades / (last - first),
            "mb_per_s": nbytes / (last - first) / 1e6}


CONFIGS = (("tls", "tls", False), ("ws", "ws", False),
           ("tls+ledger", "tls", True), ("ws+ledger", "ws", True))


def run(trades: int = 3_000_000, batch: int = 1000, runs: int = 3) -> dict[str, Any]:
    """Median figures per configuration: ``{"tls": {"cpu_us_per_trade": ...,
    "core_trades_per_s": ..., "client_trades_per_s": ..., "mb_per_s": ...}, "ws": ...,
    "tls+ledger": ..., "ws+ledger": ..., "trades": ..., "batch": ..., "runs": ...}``.
    ``+ledger``: with ``--ledger``, i.e. per-symbol counts, q ranges and CRC-32s kept."""
    measure("ws", min(trades, 200_000), batch, False)  # warm-up: first runs on a VM are slower
    result: dict[str, Any] = {"trades": trades, "batch": batch, "runs": runs}
    for name, transport, ledger in CONFIGS:
        samples = [measure(transport, trades, batch, ledger) for _ in range(runs)]
        result[name] = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=parse_count, default=3_000_000)
    parser.add_argument("--batch", type=parse_count, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    ns = parser.parse_args()
    result = run(ns.trades, ns.batch, ns.runs)
    if ns.json:
        print(json.dumps(result, indent=2))
        return
    print(f"simulate --rate max, {ns.trades} trades, {ns.batch} trades/frame, "
          f"median of {ns.runs} (one core = 1 / CPU per trade)")
    labels = {"tls": "wss://", "ws": "ws://", "tls+ledger": "wss:// +ledger",
              "ws+ledger": "ws:// +ledger"}
    for name, _, _ in CONFIGS:
        r = result[name]
        print(f"  {labels[name]:15} {r['cpu_us_per_trade']:.3f} CPU-us/trade  "
              f"one core: {r['core_trades_per_s'] / 1e6:.2f}M trades/s  "
              f"client saw: {r['client_trades_per_s'] / 1e6:.2f}M trades/s "
              f"({r['mb_per_s']:.0f} MB/s)")


if __name__ == "__main__":
    main()
