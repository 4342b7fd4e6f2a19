"""A minimal Polygon-like feed for benchmarks: pre-built frames, sent as fast as the client reads.

It does the least work a server can (one ``sendall`` of pre-built bytes), so the
CPU it takes does not disturb what is measured: the balancer's CPU per trade.

Protocol: upgrade, ``connected``, ``auth_success``, ``success``; then it waits for
a go signal (a line on stdin), sends every frame, and writes "sent" on stdout.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import socket
import ssl
import struct
import sys
import threading
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
EXCHANGES = [1, 2, 3, 4, 7, 8, 10, 11, 12, 15, 17, 19, 21]
CONDITIONS = ["[0,12]", "[12,37]", "[37]", "[14,41]", "[0]", "[12]", "[]"]


def symbols(count: int, rng: random.Random) -> list[str]:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    popular = ["SPY", "QQQ", "AAPL", "TSLA", "NVDA", "AMD", "MSFT", "AMZN", "META", "IWM", "BRK.B"]
    out = list(popular)
    seen = set(out)
    while len(out) < count:
        sym = "".join(rng.choice(letters) for _ in range(rng.choice((1, 2, 3, 3, 4, 4, 4, 5))))
        if sym not in seen:
            seen.add(sym)
            out.append(sym)
    return out


def build_trades(n: int, seed: int = 7, nsymbols: int = 8000) -> list[bytes]:
    """Realistic trades in Polygon's layout, Zipf-distributed over the symbols."""
    rng = random.Random(seed)
    syms = symbols(nsymbols, rng)
    weights = [1.0 / (rank + 1) for rank in range(len(syms))]
    q = 1_000_000
    t = 1_764_170_000_000
    chosen = rng.choices(syms, weights, k=n)
    out = []
    for sym in chosen:
        q += rng.randint(1, 30)
        t += rng.random() < 0.01
        price = round(rng.uniform(5, 600), rng.choice((2, 2, 3, 4)))
        size = rng.choice((100, 100, 200, 1, 5, 10, 50, 300, 500, 1000))
        out.append(
            f'{{"ev":"T","sym":"{sym}","x":{rng.choice(EXCHANGES)},"i":"{rng.randint(1, 99999999)}",'
            f'"z":{rng.randint(1, 3)},"p":{price},"s":{size},"c":{rng.choice(CONDITIONS)},'
            f'"t":{t},"q":{q}}}'.encode()
        )
    return out


def frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + struct.pack(">H", n) + payload
    return bytes((0x81, 127)) + struct.pack(">Q", n) + payload


def build_stream(trades: list[bytes], per_frame: int) -> tuple[bytes, int]:
    """(all frames concatenated, bytes the pipes will carry)."""
    frames = []
    for i in range(0, len(trades), per_frame):
        frames.append(frame(b"[" + b",".join(trades[i : i + per_frame]) + b"]"))
    pipe_bytes = sum(len(t) + 4 for t in trades)
    return b"".join(frames), pipe_bytes


def _read_client_frame(sock: socket.socket) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    b0, b1 = exactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", exactly(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", exactly(8))[0]
    key = exactly(4)
    body = exactly(n)
    return b0 & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(body))


def _status(kind: str, message: str) -> bytes:
    return frame(json.dumps([{"ev": "status", "status": kind, "message": message}]).encode())


def serve_one(conn: socket.socket, stream: bytes, go: threading.Event) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            return
        head += chunk
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    conn.sendall(_status("connected", "Connected Successfully"))
    while True:
        opcode, body = _read_client_frame(conn)
        if opcode != 1:
            continue
        action = json.loads(body).get("action")
        if action == "auth":
            conn.sendall(_status("auth_success", "authenticated"))
        elif action == "subscribe":
            conn.sendall(_status("success", "subscribed to: T.*"))
            break
    print("subscribed", flush=True)
    go.wait()
    conn.sendall(stream)
    print("sent", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trades", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=1000, help="trades per frame")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--certfile", help="serve wss:// with this certificate chain (PEM, with key)")
    p.add_argument("--ready-file", required=True)
    args = p.parse_args(argv)
    stream, pipe_bytes = build_stream(build_trades(args.trades, args.seed), args.batch)
    context = None
    if args.certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.certfile)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    scheme = "wss" if context else "ws"
    with open(args.ready_file + ".tmp", "w") as f:
        json.dump({"url": f"{scheme}://localhost:{port}/stocks", "pid": os.getpid(),
                   "pipe_bytes": pipe_bytes, "stream_bytes": len(stream), "trades": args.trades}, f)
    os.replace(args.ready_file + ".tmp", args.ready_file)
    go = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), go.set()), daemon=True).start()
    conn, _ = listener.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if context:
        conn = context.wrap_socket(conn, server_side=True)
    serve_one(conn, stream, go)
    try:  # keep the connection open until the benchmark ends us
        while conn.recv(65536):
            pass
    except OSError:
        pass
    time.sleep(0)


if __name__ == "__main__":
    main()
