"""Kernel TLS for real: handshake, hand-off, then the kernel encrypts and decrypts.

Needs a kernel with the tls ULP: run through ``python -m ci.ktls_runner -- tests -m ktls``
(natively where the kernel has kTLS, else inside User-Mode Linux). Every session
checks that the kernel really carried it: /proc/net/tls_stat counters rise and
getsockopt(SOL_TLS) reads back what was installed.
"""

from __future__ import annotations

import select
import socket
import ssl
import time

import pytest

from balancer import ktls
from balancer.ktls import SOL_TLS, TCP_ULP, TLS_RX, TLS_RX_EXPECT_NO_PAD, TLS_TX
from balancer.tls_keys import TLS_1_2, TLS_1_3, KernelCipher
from tests.helpers.ktls_peer import (
    ALL_SUITES,
    HELLO_RETRY_LISTENER,
    TICKETS,
    TLS13_SUITES,
    Peers,
    pattern,
    start_peers,
)

pytestmark = pytest.mark.ktls
DEADLINE = 60.0  # User-Mode Linux is slow: no AES-NI, costly system calls


@pytest.fixture(scope="module")
def peers(kernel_tls: None, tmp_path_factory: pytest.TempPathFactory):
    started = start_peers(tmp_path_factory.mktemp("ktls-kernel"))
    yield started
    started.stop()


def wait_for(sock: socket.socket, wanted: str, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    assert remaining > 0, f"timed out waiting for the socket to be ready to {wanted}"
    select.select([sock] if wanted == "read" else [], [sock] if wanted == "write" else [], [],
                  remaining)


def start_handshake(peers: Peers, suite: str, cafile: str | None = None,
                    hostname: str = "localhost") -> tuple[socket.socket, ktls.KtlsHandshake]:
    sock = socket.create_connection(peers.address(suite), timeout=DEADLINE)
    sock.setblocking(False)
    context = ktls.make_context(cafile or peers.certs.ca)
    return sock, ktls.KtlsHandshake(sock, context, hostname)


def complete(sock: socket.socket, shake: ktls.KtlsHandshake) -> None:
    deadline = time.monotonic() + DEADLINE
    while (wanted := shake.step()) is not None:
        wait_for(sock, wanted, deadline)


def connect(peers: Peers, suite: str) -> tuple[socket.socket, ktls.KtlsHandshake]:
    sock, shake = start_handshake(peers, suite)
    try:
        complete(sock, shake)
    except BaseException:
        sock.close()
        raise
    return sock, shake


def send_all(sock: socket.socket, data: bytes) -> None:
    view, deadline = memoryview(data), time.monotonic() + DEADLINE
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            wait_for(sock, "write", deadline)


def receive(receiver: ktls.KtlsReceiver, sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes, or fewer if the stream ends."""
    buf = bytearray(n)
    view, got, deadline = memoryview(buf), 0, time.monotonic() + DEADLINE
    while got < n:
        try:
            count = receiver.recv_into(view[got:])
        except BlockingIOError:
            wait_for(sock, "read", deadline)
            continue
        if count == 0:
            break
        got += count
    return bytes(buf[:got])


def expect_end(receiver: ktls.KtlsReceiver, sock: socket.socket) -> None:
    assert receive(receiver, sock, 1) == b""


def test_probe_finds_every_version_and_cipher(kernel_tls: None) -> None:
    support = ktls.kernel_support()
    assert support.ulp_error is None
    assert support.combinations == {(v, c) for v in (TLS_1_2, TLS_1_3) for c in KernelCipher}
    assert ktls.probe() is None


@pytest.mark.parametrize("listener", [*ALL_SUITES, HELLO_RETRY_LISTENER])
def test_kernel_carries_the_session(peers: Peers, listener: str) -> None:
    before = ktls.read_tls_stat()
    sock, shake = connect(peers, listener)
    suite = listener.split()[0]
    with sock:
        assert shake.cipher == suite
        assert shake.tx_info is not None and shake.rx_info is not None
        after_install = ktls.read_tls_stat()
        for counter in ("TlsCurrTxSw", "TlsCurrRxSw", "TlsTxSw", "TlsRxSw"):
            assert after_install[counter] == before[counter] + 1, counter
        assert sock.getsockopt(socket.IPPROTO_TCP, TCP_ULP, 16).rstrip(b"\0") == b"tls"
        assert ktls.read_crypto_info(sock, TLS_TX) == shake.tx_info
        installed_rx = ktls.read_crypto_info(sock, TLS_RX)
        assert installed_rx is not None
        assert (installed_rx.cipher, installed_rx.key) == (shake.rx_info.cipher,
                                                           shake.rx_info.key)
        if suite in TLS13_SUITES:
            assert sock.getsockopt(SOL_TLS, TLS_RX_EXPECT_NO_PAD) == 1

        receiver = ktls.KtlsReceiver(sock)
        with pytest.raises(BlockingIOError):  # the server sends nothing unasked
            receiver.recv_into(memoryview(bytearray(4096)))

        send_all(sock, b"send 200000\n")
        assert receive(receiver, sock, 200000) == pattern(200000)
        assert receiver.session_tickets == (TICKETS if suite in TLS13_SUITES else 0)

        message = pattern(30000)[::-1]
        send_all(sock, b"echo 30000\n" + message)
        assert receive(receiver, sock, 30000) == message

        tx_now, rx_now = ktls.read_crypto_info(sock, TLS_TX), ktls.read_crypto_info(sock, TLS_RX)
        assert tx_now is not None and tx_now.rec_seq > shake.tx_info.rec_seq
        assert rx_now is not None and rx_now.rec_seq > shake.rx_info.rec_seq

        ktls.send_close_notify(sock)
        expect_end(receiver, sock)  # the server answers with its own close_notify
        assert receiver.closed_by == "close_notify"
        port = sock.getsockname()[1]
    assert peers.process_for(listener).event_for(port, "closed")["by"] == "client close_notify"
    assert ktls.read_tls_stat()["TlsDecryptError"] == before["TlsDecryptError"]


@pytest.mark.parametrize("suite", ["TLS_AES_256_GCM_SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"])
def test_server_close_notify_is_eof_and_answered(peers: Peers, suite: str) -> None:
    sock, _ = connect(peers, suite)
    with sock:
        receiver = ktls.KtlsReceiver(sock)
        send_all(sock, b"send 10\nclose\n")
        assert receive(receiver, sock, 10) == pattern(10)
        expect_end(receiver, sock)
        assert receiver.closed_by == "close_notify"
        ktls.send_close_notify(sock)
        port = sock.getsockname()[1]
        closed = peers.process_for(suite).event_for(port, "closed")
    assert closed["by"] == "server close_notify answered"


@pytest.mark.parametrize("suite", ["TLS_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"])
def test_tcp_fin_without_close_notify_is_eof(peers: Peers, suite: str) -> None:
    sock, _ = connect(peers, suite)
    with sock:
        receiver = ktls.KtlsReceiver(sock)
        send_all(sock, b"drop\n")
        expect_end(receiver, sock)
        assert receiver.closed_by == "eof"


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES256-GCM-SHA384"])
def test_forged_record_is_a_clear_error(peers: Peers, suite: str) -> None:
    before = ktls.read_tls_stat()["TlsDecryptError"]
    sock, _ = connect(peers, suite)
    with sock:
        receiver = ktls.KtlsReceiver(sock)
        send_all(sock, b"garbage\n")
        with pytest.raises(ktls.KtlsRecordError, match="EBADMSG"):
            receive(receiver, sock, 1)
    assert ktls.read_tls_stat()["TlsDecryptError"] == before + 1


@pytest.mark.parametrize(("which_ca", "hostname", "reason"), [
    ("other", "localhost", "certificate verify failed"),
    ("right", "wrong.example", "Hostname mismatch"),
])
@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"])
def test_failed_verification_puts_nothing_in_the_kernel(
    peers: Peers, suite: str, which_ca: str, hostname: str, reason: str
) -> None:
    before = ktls.read_tls_stat()
    cafile = peers.certs.other_ca if which_ca == "other" else peers.certs.ca
    sock, shake = start_handshake(peers, suite, cafile, hostname)
    with sock:
        with pytest.raises(ssl.SSLCertVerificationError, match=reason):
            complete(sock, shake)
        assert sock.getsockopt(socket.IPPROTO_TCP, TCP_ULP, 16).rstrip(b"\0") == b""
        assert ktls.read_crypto_info(sock, TLS_TX) is None
        port = sock.getsockname()[1]
    assert ktls.read_tls_stat() == before
    failed = peers.process_for(suite).event_for(port, "handshake_failed")
    assert "alert" in failed["error"]  # we told the server why
