"""The TLS server the kernel-TLS tests talk to, and checks that it is what they think.

Run as a process: ``python -m tests.helpers.ktls_peer CONFIG.json``. It is a
stock Python ``ssl`` server (OpenSSL), independent of balancer.ktls. Python cannot
choose TLS 1.3 suites, so each process gets an ``OPENSSL_CONF`` whose
``Ciphersuites`` line leaves exactly one; TLS 1.2 listeners choose theirs with
``set_ciphers``. Each listener speaks a tiny line protocol after the handshake:

    echo N\\n<N bytes>   -> the N bytes back
    send N\\n            -> N bytes of ``pattern(N)``
    close\\n             -> close_notify from the server, then wait for the client's
    drop\\n              -> TCP FIN without close_notify
    garbage\\n           -> a forged application-data record (its tag cannot verify)

and a close_notify from the client is answered with one. Events (connected,
handshake_failed, closed) go to stdout as JSON lines with the client's port.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256")
TLS12_SUITES = {  # suite -> certificate key type
    "ECDHE-RSA-AES128-GCM-SHA256": "rsa",
    "ECDHE-RSA-AES256-GCM-SHA384": "rsa",
    "ECDHE-RSA-CHACHA20-POLY1305": "rsa",
    "ECDHE-ECDSA-AES128-GCM-SHA256": "ecdsa",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "ecdsa",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "ecdsa",
}
ALL_SUITES = (*TLS13_SUITES, *TLS12_SUITES)
# Takes only P-384, which OpenSSL clients do not send a key share for: HelloRetryRequest.
HELLO_RETRY_LISTENER = "TLS_AES_128_GCM_SHA256 after HelloRetryRequest"
START_TIMEOUT = 60.0  # a Python start inside User-Mode Linux takes seconds
TICKETS = 2


def pattern(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


_print_lock = threading.Lock()


def _report(event: dict[str, Any]) -> None:
    with _print_lock:
        print(json.dumps(event), flush=True)


class _LineReader:
    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        self.buffer = bytearray()

    def fill(self) -> bool:
        chunk = self.tls.recv(65536)
        self.buffer += chunk
        return bool(chunk)  # b"" means close_notify (ragged EOFs raise)

    def line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            if not self.fill():
                return None
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer[:] = rest
        return line

    def exactly(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            if not self.fill():
                return None
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data


def _serve_connection(conn: socket.socket, context: ssl.SSLContext, listener: str) -> None:
    port = conn.getpeername()[1]
    conn.settimeout(60)
    try:
        tls = context.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)
    except (ssl.SSLError, OSError) as exc:
        _report({"event": "handshake_failed", "listener": listener, "port": port,
                 "error": str(exc)})
        conn.close()
        return
    cipher = tls.cipher()
    _report({"event": "connected", "listener": listener, "port": port,
             "version": tls.version(), "cipher": cipher[0] if cipher else None})
    try:
        by = _command_loop(tls, _LineReader(tls))
    except (ssl.SSLError, OSError, ValueError) as exc:
        by = f"error: {exc}"
    _report({"event": "closed", "listener": listener, "port": port, "by": by})
    tls.close()


def _command_loop(tls: ssl.SSLSocket, reader: _LineReader) -> str:
    while True:
        line = reader.line()
        if line is None:
            tls.unwrap()  # answer the client's close_notify with ours
            return "client close_notify"
        command, _, arg = line.partition(b" ")
        if command == b"echo":
            data = reader.exactly(int(arg))
            if data is None:
                return "client close_notify mid-echo"
            tls.sendall(data)
        elif command == b"send":
            tls.sendall(pattern(int(arg)))
        elif command == b"close":
            tls.unwrap()  # ours, then the client's
            return "server close_notify answered"
        elif command == b"drop":
            tls.shutdown(socket.SHUT_RDWR)
            return "server dropped"
        elif command == b"garbage":
            socket.socket.sendall(tls, bytes([23, 3, 3, 0, 40]) + os.urandom(40))  # past ssl
        else:
            raise ValueError(f"unknown command {line[:40]!r}")


def _listener_context(spec: dict[str, Any], certs: dict[str, list[str]]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certs[spec["cert"]])
    version = ssl.TLSVersion.TLSv1_3 if spec["tls"] == "1.3" else ssl.TLSVersion.TLSv1_2
    context.minimum_version = context.maximum_version = version
    if spec.get("ciphers"):
        context.set_ciphers(spec["ciphers"])
    if spec.get("curve"):
        context.set_ecdh_curve(spec["curve"])  # OpenSSL 3: the only group offered
    context.num_tickets = spec.get("tickets", TICKETS)
    return context


def _accept_loop(server: socket.socket, context: ssl.SSLContext, listener: str) -> None:
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_serve_connection, args=(conn, context, listener),
                         daemon=True).start()


def serve(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    ports = {}
    for spec in config["listeners"]:
        context = _listener_context(spec, config["certs"])
        server = socket.create_server(("127.0.0.1", 0))
        ports[spec["name"]] = server.getsockname()[1]
        threading.Thread(target=_accept_loop, args=(server, context, spec["name"]),
                         daemon=True).start()
    _report({"event": "ready", "ports": ports})
    sys.stdin.read()  # the test closes our stdin (or dies): time to go


@dataclass
class Certs:
    ca: str  # the CA that signed both server certificates
    other_ca: str  # a CA that signed neither
    rsa: list[str]  # cert chain, key
    ecdsa: list[str]


def make_certs(directory: Path) -> Certs:
    import trustme

    ca, other = trustme.CA(), trustme.CA()
    paths: dict[str, list[str]] = {}
    for kind, key_type in (("rsa", trustme.KeyType.RSA), ("ecdsa", trustme.KeyType.ECDSA)):
        leaf = ca.issue_cert("localhost", "127.0.0.1", key_type=key_type)
        chain, key = directory / f"{kind}-chain.pem", directory / f"{kind}-key.pem"
        leaf.private_key_pem.write_to_path(str(key))
        chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        paths[kind] = [str(chain), str(key)]
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    other.cert_pem.write_to_path(str(directory / "other-ca.pem"))
    return Certs(str(directory / "ca.pem"), str(directory / "other-ca.pem"), paths["rsa"],
                 paths["ecdsa"])


class PeerProcess:
    """One server process; its events are read on a thread and waited for with deadlines."""

    def __init__(self, directory: Path, name: str, tls13_suite: str,
                 listeners: list[dict[str, Any]], certs: Certs) -> None:
        config = directory / f"{name}.json"
        config.write_text(json.dumps({"listeners": listeners,
                                      "certs": {"rsa": certs.rsa, "ecdsa": certs.ecdsa}}))
        openssl_conf = directory / f"{name}.cnf"
        openssl_conf.write_text(
            "openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n"
            "[ssl_sect]\nsystem_default = system_default_sect\n"
            f"[system_default_sect]\nCiphersuites = {tls13_suite}\n"
        )
        env = dict(os.environ, OPENSSL_CONF=str(openssl_conf))
        root = Path(__file__).resolve().parents[2]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.ktls_peer", str(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root, env=env,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._pending: list[dict[str, Any]] = []
        threading.Thread(target=self._read_events, daemon=True).start()
        self.ports: dict[str, int] = {}

    def _read_events(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))

    def wait_ready(self, deadline: float) -> None:
        self.ports = self.next_event(lambda e: e["event"] == "ready", deadline)["ports"]

    def next_event(self, match: Any, deadline: float) -> dict[str, Any]:
        for event in self._pending:
            if match(event):
                self._pending.remove(event)
                return event
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"peer server: no matching event (exit {self.process.poll()})")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if match(event):
                return event
            self._pending.append(event)

    def event_for(self, port: int, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        return self.next_event(lambda e: e.get("port") == port and e["event"] == kind,
                               time.monotonic() + timeout)

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Peers:
    """Three server processes, one per TLS 1.3 suite; the TLS 1.2 listeners ride along."""

    def __init__(self, directory: Path) -> None:
        self.certs = make_certs(directory)
        self.processes: dict[str, PeerProcess] = {}
        self.where: dict[str, tuple[PeerProcess, str]] = {}
        tls12 = list(TLS12_SUITES.items())
        for index, tls13 in enumerate(TLS13_SUITES):
            listeners = [{"name": tls13, "tls": "1.3", "cert": "ecdsa"}]
            if index == 0:
                listeners.append({"name": HELLO_RETRY_LISTENER, "tls": "1.3", "cert": "rsa",
                                  "curve": "secp384r1"})
            listeners += [{"name": suite, "tls": "1.2", "cert": cert, "ciphers": suite}
                          for suite, cert in tls12[index::3]]
            self.processes[tls13] = PeerProcess(directory, f"peer{index}", tls13, listeners,
                                                self.certs)
        deadline = time.monotonic() + START_TIMEOUT
        for process in self.processes.values():
            process.wait_ready(deadline)
            for name in process.ports:
                self.where[name] = (process, name)

    def address(self, suite: str) -> tuple[str, int]:
        process, name = self.where[suite]
        return "127.0.0.1", process.ports[name]

    def process_for(self, suite: str) -> PeerProcess:
        return self.where[suite][0]

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()


def start_peers(directory: Path) -> Peers:
    return Peers(directory)


if __name__ == "__main__":
    serve(sys.argv[1])
