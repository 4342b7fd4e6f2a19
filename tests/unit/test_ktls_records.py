"""Record-level parts of the kernel-TLS hand-off: hellos, control records, the receiver."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import ssl

import pytest

from balancer import ktls
from balancer.ktls import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    HANDSHAKE,
    SOL_TLS,
    TLS_GET_RECORD_TYPE,
    TLS_SET_RECORD_TYPE,
    ControlRecords,
    HandshakeWatcher,
    KtlsAlertError,
    KtlsKeyUpdateError,
    KtlsProtocolError,
    KtlsReceiver,
    KtlsRecordError,
    RecordSplitter,
    parse_record_header,
    parse_server_hello,
)
from balancer.tls_keys import SUITES, TLS_1_2, TLS_1_3

h = bytes.fromhex

# RFC 8448 section 3: the ClientHello and ServerHello handshake messages (with headers).
RFC8448_CLIENT_HELLO = h(
    "010000c00303cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece70000061301"
    "13031302010000910000000b0009000006736572766572ff01000100000a00140012001d00170018001901"
    "00010101020103010400230000003300260024001d002099381de560e4bd43d23d8e435a7dbafeb3c06e51"
    "c13cae4d5413691e529aaf2c002b0003020304000d0020001e040305030603020308040805080604010501"
    "060102010402050206020202002d00020101001c00024001"
)
RFC8448_SERVER_HELLO = h(
    "020000560303a6af06a4121860dc5e6e60249cd34c95930c8ac5cb1434dac155772ed3e2692800130100002e"
    "00330024001d0020c9828876112095fe66762bdbf7c672e156d6cc253b833df1dd69b1b04e751f0f002b0002"
    "0304"
)


def record(record_type: int, fragment: bytes, version: int = 0x0303) -> bytes:
    return bytes([record_type]) + version.to_bytes(2, "big") + len(fragment).to_bytes(2, "big") + (
        fragment
    )


def handshake_message(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def tls12_server_hello(suite: int, random: bytes = bytes(range(32))) -> bytes:
    body = h("0303") + random + b"\x20" + bytes(32) + suite.to_bytes(2, "big") + b"\x00"
    return handshake_message(2, body)


# --- records and hellos -----------------------------------------------------------


def test_record_header_is_validated() -> None:
    assert parse_record_header(h("1703030010")) == (APPLICATION_DATA, 16)
    assert parse_record_header(h("1603010200")) == (HANDSHAKE, 512)
    with pytest.raises(KtlsProtocolError, match="content type 72"):
        parse_record_header(b"HTTP/")
    with pytest.raises(KtlsProtocolError, match="version"):
        parse_record_header(h("1702030010"))
    with pytest.raises(KtlsProtocolError, match="exceeds"):
        parse_record_header(h("1703034801"))


def test_record_splitter_handles_any_chunking() -> None:
    stream = record(HANDSHAKE, b"abc") + record(CHANGE_CIPHER_SPEC, b"\x01") + record(
        APPLICATION_DATA, bytes(300))
    for chunk in (1, 2, 7, len(stream)):
        splitter = RecordSplitter()
        out = []
        for at in range(0, len(stream), chunk):
            out += splitter.feed(stream[at : at + chunk])
        assert out == [(HANDSHAKE, b"abc"), (CHANGE_CIPHER_SPEC, b"\x01"),
                       (APPLICATION_DATA, bytes(300))]


def test_rfc8448_server_hello() -> None:
    hello = parse_server_hello(RFC8448_SERVER_HELLO[4:])
    assert hello.random == h("a6af06a4121860dc5e6e60249cd34c95930c8ac5cb1434dac155772ed3e26928")
    assert (hello.suite_code, hello.version, hello.is_retry_request) == (0x1301, TLS_1_3, False)


def test_tls12_server_hello_without_extensions() -> None:
    hello = parse_server_hello(tls12_server_hello(0xC02F)[4:])
    assert (hello.suite_code, hello.version, hello.random) == (0xC02F, TLS_1_2, bytes(range(32)))


def test_truncated_server_hello_is_an_error() -> None:
    for cut in (10, 40, len(RFC8448_SERVER_HELLO) - 3):
        with pytest.raises(KtlsProtocolError, match="truncated ServerHello"):
            parse_server_hello(RFC8448_SERVER_HELLO[4:cut])


def test_watcher_takes_client_random_and_split_server_hello() -> None:
    watcher = HandshakeWatcher()
    sent = record(HANDSHAKE, RFC8448_CLIENT_HELLO, version=0x0301)
    watcher.on_sent(sent[:50])
    assert watcher.client_random is None
    watcher.on_sent(sent[50:])
    assert watcher.client_random == h(
        "cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7")
    watcher.on_received(HANDSHAKE, RFC8448_SERVER_HELLO[:30])
    assert watcher.server_hello is None
    watcher.on_received(HANDSHAKE, RFC8448_SERVER_HELLO[30:])
    assert watcher.server_hello is not None and watcher.server_hello.suite_code == 0x1301
    # Encrypted records after the ServerHello are not parsed as cleartext.
    watcher.on_received(HANDSHAKE, b"\x02\x00\x00\x01")
    assert watcher.server_hello.suite_code == 0x1301


def test_watcher_skips_hello_retry_request() -> None:
    retry = bytearray(RFC8448_SERVER_HELLO)
    retry[6:38] = ktls.HELLO_RETRY_REQUEST_RANDOM
    watcher = HandshakeWatcher()
    watcher.on_received(HANDSHAKE, bytes(retry))
    assert watcher.server_hello is None
    watcher.on_received(CHANGE_CIPHER_SPEC, b"\x01")
    watcher.on_received(HANDSHAKE, RFC8448_SERVER_HELLO)
    assert watcher.server_hello is not None
    assert not watcher.server_hello.is_retry_request


def test_watcher_finds_the_explicit_nonce_of_our_tls12_finished() -> None:
    watcher = HandshakeWatcher()
    flight = (record(HANDSHAKE, handshake_message(16, bytes(66)))  # ClientKeyExchange
              + record(CHANGE_CIPHER_SPEC, b"\x01")
              + record(HANDSHAKE, h("a1a2a3a4a5a6a7a8") + bytes(32)))  # nonce | ciphertext
    watcher.on_sent(flight[:9])
    watcher.on_sent(flight[9:])
    assert watcher.client_finished_nonce == h("a1a2a3a4a5a6a7a8")


# --- control records after the hand-off -------------------------------------------

NEW_SESSION_TICKET = handshake_message(4, bytes(200))
KEY_UPDATE = handshake_message(24, b"\x00")


def test_session_tickets_are_dropped_even_in_pieces() -> None:
    control = ControlRecords()
    tickets = NEW_SESSION_TICKET * 2
    for byte in tickets:
        assert control.feed(HANDSHAKE, bytes([byte])) is False
    assert control.session_tickets == 2


def test_key_update_is_a_clear_error() -> None:
    with pytest.raises(KtlsKeyUpdateError, match="KeyUpdate"):
        ControlRecords().feed(HANDSHAKE, NEW_SESSION_TICKET + KEY_UPDATE)


def test_other_handshake_messages_are_errors() -> None:
    with pytest.raises(KtlsProtocolError, match="handshake message 0"):
        ControlRecords().feed(HANDSHAKE, handshake_message(0, b""))  # HelloRequest


def test_close_notify_in_pieces_ends_the_stream() -> None:
    control = ControlRecords()
    assert control.feed(ALERT, b"\x01") is False
    assert control.feed(ALERT, b"\x00") is True


def test_user_canceled_then_close_notify() -> None:
    assert ControlRecords().feed(ALERT, h("015a") + h("0100")) is True


def test_fatal_alert_names_the_alert() -> None:
    with pytest.raises(KtlsAlertError, match=r"20 \(bad_record_mac\)") as info:
        ControlRecords().feed(ALERT, h("0214"))
    assert info.value.description == 20


def test_change_cipher_spec_after_hand_off_is_an_error() -> None:
    with pytest.raises(KtlsProtocolError, match="record type 20"):
        ControlRecords().feed(CHANGE_CIPHER_SPEC, b"\x01")


# --- the receiver, against a fake kernel TLS socket -------------------------------


class FakeKtlsSocket:
    """Serves scripted (record type, bytes) reads the way kernel TLS does.

    Like the kernel, one read returns bytes of one record type only, a record larger
    than the buffer comes in pieces, and a control record without room for the cmsg
    fails with EIO.
    """

    def __init__(self, script: list[tuple[int, bytes] | OSError | None]) -> None:
        self.script = list(script)  # None = TCP FIN; OSError = raised
        self.buffers_seen: list[object] = []

    def recvmsg_into(self, buffers: list[memoryview], ancbufsize: int = 0, flags: int = 0):
        self.buffers_seen.append(buffers[0])
        if not self.script:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        item = self.script[0]
        if item is None:
            return 0, [], 0, None
        if isinstance(item, OSError):
            self.script.pop(0)
            raise item
        record_type, data = item
        if record_type != APPLICATION_DATA and ancbufsize < socket.CMSG_SPACE(1):
            raise OSError(errno.EIO, "Input/output error")
        buf = buffers[0]
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        if n == len(data):
            self.script.pop(0)
        else:
            self.script[0] = (record_type, data[n:])
        return n, [(SOL_TLS, TLS_GET_RECORD_TYPE, bytes([record_type]))], 0, None


def receiver(script: list) -> tuple[KtlsReceiver, FakeKtlsSocket]:
    fake = FakeKtlsSocket(script)
    return KtlsReceiver(fake), fake  # type: ignore[arg-type]


def test_data_goes_straight_into_the_callers_buffer() -> None:
    rx, fake = receiver([(APPLICATION_DATA, b"hello")])
    storage = bytearray(64)
    view = memoryview(storage)[8:]
    assert rx.recv_into(view) == 5
    assert storage[8:13] == b"hello"
    assert fake.buffers_seen[0] is view  # no intermediate buffer, no copy


def test_ticket_then_data_returns_the_data() -> None:
    rx, _ = receiver([(HANDSHAKE, NEW_SESSION_TICKET), (APPLICATION_DATA, b"trades")])
    buf = memoryview(bytearray(1024))
    assert rx.recv_into(buf) == 6
    assert bytes(buf[:6]) == b"trades"
    assert rx.session_tickets == 1


def test_ticket_alone_then_would_block() -> None:
    rx, _ = receiver([(HANDSHAKE, NEW_SESSION_TICKET)])
    with pytest.raises(BlockingIOError):
        rx.recv_into(memoryview(bytearray(1024)))
    assert rx.session_tickets == 1


def test_ticket_larger_than_the_buffer_arrives_in_pieces() -> None:
    rx, _ = receiver([(HANDSHAKE, NEW_SESSION_TICKET), (APPLICATION_DATA, b"x" * 100)])
    buf = memoryview(bytearray(16))
    assert rx.recv_into(buf) == 16
    assert rx.session_tickets == 1


def test_close_notify_is_eof_and_stays_eof() -> None:
    rx, _ = receiver([(APPLICATION_DATA, b"last"), (ALERT, h("0100"))])
    buf = memoryview(bytearray(64))
    assert rx.recv_into(buf) == 4
    assert rx.recv_into(buf) == 0
    assert rx.closed_by == "close_notify"
    assert rx.recv_into(buf) == 0


def test_tcp_fin_without_close_notify_is_eof() -> None:
    rx, _ = receiver([None])
    assert rx.recv_into(memoryview(bytearray(64))) == 0
    assert rx.closed_by == "eof"


def test_empty_data_record_is_not_eof() -> None:
    rx, _ = receiver([(APPLICATION_DATA, b""), (APPLICATION_DATA, b"after")])
    assert rx.recv_into(memoryview(bytearray(64))) == 5
    assert rx.closed_by is None


def test_fatal_alert_raises() -> None:
    rx, _ = receiver([(ALERT, h("0228"))])
    with pytest.raises(KtlsAlertError, match="handshake_failure"):
        rx.recv_into(memoryview(bytearray(64)))


def test_key_update_raises() -> None:
    rx, _ = receiver([(HANDSHAKE, KEY_UPDATE)])
    with pytest.raises(KtlsKeyUpdateError):
        rx.recv_into(memoryview(bytearray(64)))


def test_bad_record_raises_a_clear_error() -> None:
    rx, _ = receiver([OSError(errno.EBADMSG, "Bad message")])
    with pytest.raises(KtlsRecordError, match="EBADMSG"):
        rx.recv_into(memoryview(bytearray(64)))


def test_connection_errors_pass_through() -> None:
    rx, _ = receiver([ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")])
    with pytest.raises(ConnectionResetError):
        rx.recv_into(memoryview(bytearray(64)))


class RecordingSocket:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def sendmsg(self, buffers, ancdata=(), flags=0, address=None) -> int:
        self.calls.append((list(buffers), list(ancdata)))
        return sum(len(b) for b in buffers)


def test_close_notify_is_an_alert_record_of_two_bytes() -> None:
    sock = RecordingSocket()
    ktls.send_close_notify(sock)  # type: ignore[arg-type]
    assert sock.calls == [([b"\x01\x00"], [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes([ALERT]))])]


# --- the context and the probe ----------------------------------------------------


def test_context_verifies_and_offers_only_kernel_suites() -> None:
    context = ktls.make_context(None)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    names = {s.name for s in SUITES.values()}
    offered = [c["name"] for c in context.get_ciphers()]
    assert offered and set(offered) <= names


def test_context_version_pin() -> None:
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ktls.make_context(None, version=version)
        assert context.minimum_version == context.maximum_version == version


def test_keylog_is_a_private_memory_file() -> None:
    context = ktls.make_context(None)
    assert context.keylog_filename == f"/proc/self/fd/{context.keylog_fd}"
    target = os.fstat(context.keylog_fd)
    holders = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            holders.append(fd)
    assert len(holders) == 2  # ours and ssl's own
    for fd in holders:  # neither may leak into the worker process
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert os.readlink(f"/proc/self/fd/{context.keylog_fd}").startswith("/memfd:")


def test_handshake_needs_a_ktls_context() -> None:
    with socket.socket() as sock, pytest.raises(TypeError, match="make_context"):
        ktls.KtlsHandshake(sock, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), "localhost")


def _kernel_takes_tls_ulp() -> bool:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as client,
    ):
        peer, _ = listener.accept()
        with peer:
            try:
                client.setsockopt(socket.IPPROTO_TCP, 31, b"tls")
            except OSError:
                return False
            return True


def test_probe_agrees_with_the_kernel() -> None:
    reason = ktls.probe()
    if _kernel_takes_tls_ulp():
        support = ktls.kernel_support()
        assert support.ulp_error is None
        assert (reason is None) == bool(support.combinations)
    else:
        assert reason is not None
        assert "modprobe tls" in reason and "4.17" in reason
