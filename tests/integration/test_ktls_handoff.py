"""The hand-off on any kernel: the keys it would give the kernel, checked on real records.

A real OpenSSL server (test_ktls_peer) and ``KtlsHandshake`` with an ``install`` that
records the two crypto_info structs instead of calling setsockopt. The test then
plays the kernel's part with an independent AEAD record layer (``cryptography``,
RFC 8446 section 5, RFC 5288, RFC 7905): if key, IV, salt, sequence number or the
"nothing read past Finished" rule were wrong, the server's records would not open
or ours would be refused.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from balancer import ktls
from balancer.ktls import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    HANDSHAKE,
    HELLO_RETRY_REQUEST_RANDOM,
    RECORD_HEADER,
)
from balancer.tls_keys import TLS_1_3, CryptoInfo, KernelCipher
from tests.helpers.ktls_peer import (
    ALL_SUITES,
    HELLO_RETRY_LISTENER,
    TICKETS,
    TLS12_SUITES,
    TLS13_SUITES,
    Peers,
    pattern,
    start_peers,
)

DEADLINE = 30.0


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory):
    started = start_peers(tmp_path_factory.mktemp("ktls-handoff"))
    yield started
    started.stop()


class RecordLayer:
    """One direction of TLS record protection, written from the RFCs, for checking."""

    def __init__(self, info: CryptoInfo) -> None:
        self.info = info
        self.seq = info.rec_seq
        if info.cipher is KernelCipher.CHACHA20_POLY1305:
            self.aead: AESGCM | ChaCha20Poly1305 = ChaCha20Poly1305(info.key)
        else:
            self.aead = AESGCM(info.key)
        self.explicit = int.from_bytes(info.iv, "big")  # TLS 1.2 GCM send side

    def _xor_nonce(self, base: bytes) -> bytes:
        return bytes(a ^ b for a, b in zip(base, self.seq.to_bytes(12, "big"), strict=True))

    def _tls12_aad(self, record_type: int, length: int) -> bytes:
        return struct.pack(">QBHH", self.seq, record_type, 0x0303, length)

    def seal(self, record_type: int, data: bytes) -> bytes:
        if self.info.version == TLS_1_3:
            inner = data + bytes([record_type])
            header = RECORD_HEADER.pack(APPLICATION_DATA, 0x0303, len(inner) + 16)
            nonce = self._xor_nonce(self.info.salt + self.info.iv)
            record = header + self.aead.encrypt(nonce, inner, header)
        elif self.info.cipher is KernelCipher.CHACHA20_POLY1305:
            body = self.aead.encrypt(self._xor_nonce(self.info.iv), data,
                                     self._tls12_aad(record_type, len(data)))
            record = RECORD_HEADER.pack(record_type, 0x0303, len(body)) + body
        else:
            explicit = self.explicit.to_bytes(8, "big")
            self.explicit += 1
            body = explicit + self.aead.encrypt(self.info.salt + explicit, data,
                                                self._tls12_aad(record_type, len(data)))
            record = RECORD_HEADER.pack(record_type, 0x0303, len(body)) + body
        self.seq += 1
        return record

    def open(self, header: bytes, body: bytes) -> tuple[int, bytes]:
        record_type = header[0]
        if self.info.version == TLS_1_3:
            inner = self.aead.decrypt(self._xor_nonce(self.info.salt + self.info.iv), body, header)
            inner = inner.rstrip(b"\x00")
            record_type, data = inner[-1], inner[:-1]
        elif self.info.cipher is KernelCipher.CHACHA20_POLY1305:
            data = self.aead.decrypt(self._xor_nonce(self.info.iv), body,
                                     self._tls12_aad(record_type, len(body) - 16))
        else:
            data = self.aead.decrypt(self.info.salt + body[:8], body[8:],
                                     self._tls12_aad(record_type, len(body) - 24))
        self.seq += 1
        return record_type, data


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    deadline = time.monotonic() + DEADLINE
    while len(data) < n:
        assert time.monotonic() < deadline, "timed out reading from the server"
        chunk = sock.recv(n - len(data))
        assert chunk, "server closed the connection"
        data += chunk
    return data


def read_record(sock: socket.socket, rx: RecordLayer) -> tuple[int, bytes]:
    header = recv_exactly(sock, RECORD_HEADER.size)
    return rx.open(header, recv_exactly(sock, header[3] << 8 | header[4]))


class Spy:
    """A socket as the handshake sees it, keeping a copy of every byte both ways."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = bytearray()
        self.received = bytearray()

    def send(self, data: bytes) -> int:
        count = self.sock.send(data)
        self.sent += data[:count]
        return count

    def recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        self.received += data
        return data


def split_records(stream: bytes) -> list[tuple[int, bytes]]:
    records, at = [], 0
    while at < len(stream):
        length = int.from_bytes(stream[at + 3 : at + 5], "big")
        records.append((stream[at], stream[at + 5 : at + 5 + length]))
        at += 5 + length
    return records


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[CryptoInfo, CryptoInfo]] = []

    def __call__(self, sock: socket.socket, tx: CryptoInfo, rx: CryptoInfo) -> None:
        self.calls.append((tx, rx))


def handshake(address: tuple[str, int], context: ssl.SSLContext, server_hostname: str,
              install, spy: list[Spy] | None = None) -> tuple[socket.socket, ktls.KtlsHandshake]:
    sock = socket.create_connection(address, timeout=DEADLINE)
    sock.setblocking(False)
    watched = Spy(sock)
    if spy is not None:
        spy.append(watched)
    shake = ktls.KtlsHandshake(watched, context, server_hostname,  # type: ignore[arg-type]
                               install=install)
    deadline = time.monotonic() + DEADLINE
    try:
        while (wanted := shake.step()) is not None:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "handshake timed out"
            select.select([sock] if wanted == "read" else [],
                          [sock] if wanted == "write" else [], [], remaining)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(True)
    sock.settimeout(DEADLINE)
    return sock, shake


@pytest.mark.parametrize("listener", [*ALL_SUITES, HELLO_RETRY_LISTENER])
def test_handed_off_keys_carry_the_session(peers: Peers, listener: str) -> None:
    recorder = Recorder()
    sock, shake = handshake(peers.address(listener), ktls.make_context(peers.certs.ca),
                            "localhost", recorder)
    suite = listener.split()[0]
    with sock:
        assert shake.cipher == suite
        assert shake.version == ("TLSv1.3" if suite in TLS13_SUITES else "TLSv1.2")
        [(tx_info, rx_info)] = recorder.calls
        assert (tx_info.rec_seq, rx_info.rec_seq) == ((0, 0) if suite in TLS13_SUITES else (1, 1))
        tx, rx = RecordLayer(tx_info), RecordLayer(rx_info)

        sock.sendall(tx.seal(APPLICATION_DATA, b"send 40000\n"))
        received, tickets = b"", 0
        while len(received) < 40000:
            record_type, data = read_record(sock, rx)
            if record_type == HANDSHAKE:  # TLS 1.3 session tickets, left for the kernel
                assert data[0] == 4
                tickets += 1
                continue
            assert record_type == APPLICATION_DATA
            received += data
        assert received == pattern(40000)
        assert tickets == (TICKETS if suite in TLS13_SUITES else 0)

        message = pattern(3000)[::-1]
        sock.sendall(tx.seal(APPLICATION_DATA, b"echo 3000\n" + message))
        echoed = b""
        while len(echoed) < len(message):
            record_type, data = read_record(sock, rx)
            assert record_type == APPLICATION_DATA
            echoed += data
        assert echoed == message

        sock.sendall(tx.seal(ALERT, b"\x01\x00"))  # close_notify
        assert read_record(sock, rx) == (ALERT, b"\x01\x00")
        port = sock.getsockname()[1]
    assert peers.process_for(listener).event_for(port, "closed")["by"] == "client close_notify"


def test_hello_retry_request_is_skipped(peers: Peers) -> None:
    spies: list[Spy] = []
    sock, shake = handshake(peers.address(HELLO_RETRY_LISTENER),
                            ktls.make_context(peers.certs.ca), "localhost", Recorder(), spies)
    sock.close()
    first_type, first = split_records(bytes(spies[0].received))[0]
    assert first_type == HANDSHAKE and first[0] == 2  # a ServerHello...
    assert first[6:38] == HELLO_RETRY_REQUEST_RANDOM  # ...that is a HelloRetryRequest
    assert shake.version == "TLSv1.3"


@pytest.mark.parametrize("suite", [s for s in TLS12_SUITES if "GCM" in s])
def test_tls12_gcm_transmit_nonce_follows_our_finished(peers: Peers, suite: str) -> None:
    spies: list[Spy] = []
    recorder = Recorder()
    sock, _ = handshake(peers.address(suite), ktls.make_context(peers.certs.ca), "localhost",
                        recorder, spies)
    sock.close()
    records = split_records(bytes(spies[0].sent))
    types = [record_type for record_type, _ in records]
    finished_type, finished = records[types.index(CHANGE_CIPHER_SPEC) + 1]
    assert finished_type == HANDSHAKE
    [(tx_info, _)] = recorder.calls
    # Never reuse a nonce under the same key: the kernel's first is one past Finished's.
    assert int.from_bytes(tx_info.iv, "big") == (int.from_bytes(finished[:8], "big") + 1) % 2**64


@pytest.mark.parametrize(("cafile", "hostname", "reason"), [
    ("other", "localhost", "certificate verify failed"),
    ("right", "wrong.example", "Hostname mismatch"),
])
@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"])
def test_verification_failure_gives_no_keys(peers: Peers, suite: str, cafile: str,
                                            hostname: str, reason: str) -> None:
    recorder = Recorder()
    ca = peers.certs.other_ca if cafile == "other" else peers.certs.ca
    with pytest.raises(ssl.SSLCertVerificationError, match=reason):
        handshake(peers.address(suite), ktls.make_context(ca), hostname, recorder)
    assert recorder.calls == []


def test_ip_address_is_verified_against_the_certificate(peers: Peers) -> None:
    recorder = Recorder()
    sock, shake = handshake(peers.address("TLS_AES_128_GCM_SHA256"),
                            ktls.make_context(peers.certs.ca), "127.0.0.1", recorder)
    sock.close()
    assert shake.version == "TLSv1.3" and len(recorder.calls) == 1


def test_context_pins_the_version(peers: Peers) -> None:
    context = ktls.make_context(peers.certs.ca, version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        handshake(peers.address("TLS_AES_128_GCM_SHA256"), context, "localhost", Recorder())


def test_keylog_is_emptied_after_the_hand_off(peers: Peers) -> None:
    context = ktls.make_context(peers.certs.ca)
    sock, _ = handshake(peers.address("ECDHE-ECDSA-AES128-GCM-SHA256"), context, "localhost",
                        Recorder())
    sock.close()
    assert Path(f"/proc/self/fd/{context.keylog_fd}").stat().st_size == 0


def test_without_kernel_tls_the_session_stays_usable_in_userspace(peers: Peers) -> None:
    """TX refused means nothing reached the kernel: the SSLObject carries on.

    (A property of the handshake object; lb itself does not fall back to it: the probe at
    start-up makes a refusal at hand-off a kernel changed under it, and the session ends.)
    """
    if ktls.probe() is None:
        pytest.skip("this kernel has kTLS; the refusal path needs one without it")
    sock = socket.create_connection(peers.address("TLS_CHACHA20_POLY1305_SHA256"),
                                    timeout=DEADLINE)
    with sock:
        shake = ktls.KtlsHandshake(sock, ktls.make_context(peers.certs.ca), "localhost")
        with pytest.raises(ktls.KtlsInstallError, match="modprobe tls"):
            while shake.step() is not None:
                pass
        assert ktls.read_crypto_info(sock, ktls.TLS_TX) is None  # nothing reached the kernel
        tls = shake.ssl_object
        tls.write(b"echo 4\nping")
        sock.sendall(shake.outgoing.read())
        got = b""
        while len(got) < 4:
            try:
                got += tls.read(4 - len(got))
            except ssl.SSLWantReadError:
                shake.incoming.write(sock.recv(65536))
        assert got == b"ping"
