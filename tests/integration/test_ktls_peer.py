"""Checks that the TLS server the kernel-TLS tests talk to is what they think it is.

The server itself is a program, tests/helpers/ktls_peer.py (``python -m
tests.helpers.ktls_peer CONFIG.json``): a stock Python ``ssl`` server, independent of
balancer.ktls, one suite per listener. Here a plain OpenSSL client checks each listener.
"""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.helpers.ktls_peer import ALL_SUITES, TLS13_SUITES, Peers, pattern, start_peers

# --- the test side ----------------------------------------------------------------


# --- checks of the peer itself, with a stock ssl client ---------------------------


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory):
    started = start_peers(tmp_path_factory.mktemp("ktls-peer"))
    yield started
    started.stop()


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_peer_negotiates_exactly_the_suite_it_is_set_up_for(peers: Peers, suite: str) -> None:
    """A plain OpenSSL client offering everything gets the listener's one suite."""
    context = ssl.create_default_context(cafile=peers.certs.ca)
    raw = socket.create_connection(peers.address(suite), timeout=30)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.cipher()[0] == suite
        assert tls.version() == ("TLSv1.3" if suite in TLS13_SUITES else "TLSv1.2")
        tls.sendall(b"send 1000\n")
        got = b""
        while len(got) < 1000:
            got += tls.recv(1000 - len(got))
        assert got == pattern(1000)
        tls.sendall(b"echo 5\nhello")
        assert tls.recv(5) == b"hello"
        port = tls.getsockname()[1]
        tls.unwrap()
    closed = peers.process_for(suite).event_for(port, "closed")
    assert closed["by"] == "client close_notify"

