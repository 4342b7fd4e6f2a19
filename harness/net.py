"""Loopback ports for the processes the tests and benchmarks start."""

from __future__ import annotations

import random
import socket

_LOWEST = 10_000
_given: set[int] = set()
_pick = random.Random()


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds now, below the kernel's ephemeral range and not
    handed out before by this process.

    Below the ephemeral range because the port is bound later, by another process: a kernel
    pick (bind to port 0) is an ephemeral port, which the local end of any outgoing connection
    made meanwhile (a nats-server routing to its peers, a client) may take first, and the
    server started on it then fails with "address already in use"."""
    top = max(_LOWEST + 1000, _ephemeral_start())
    for _ in range(1000):
        port = _pick.randrange(_LOWEST, top)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise OSError(f"no free loopback port in {_LOWEST}-{top - 1}")
