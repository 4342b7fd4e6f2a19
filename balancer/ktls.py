"""Kernel TLS: a verified userspace handshake, then the keys handed to the kernel.

The handshake runs in Python's ``ssl`` through memory BIOs, fed one TLS record at a
time from the socket, so that when it completes nothing after the server's Finished
has been read: whatever follows (session tickets, application data) is still in the
socket and the kernel decrypts it once ``TLS_RX`` is installed. The secrets come from
OpenSSL's key log, written to an anonymous memory file, never to disk. After the
hand-off the socket is read with ``recvmsg_into`` straight into the caller's buffer
(``KtlsReceiver``) and written with plain ``send``.

Pure parts (record headers, hello parsing, control records) are plain functions and
classes here; the key schedule and struct packing live in ``tls_keys``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import ssl
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from balancer.tls_keys import (
    CRYPTO_INFO_HEADER,
    SUITES,
    TLS_1_2,
    TLS_1_3,
    CipherSuite,
    CryptoInfo,
    KernelCipher,
    crypto_info,
    crypto_info_size,
    initial_record_sequence,
    next_explicit_nonce,
    parse_keylog,
    session_keys,
)

# <linux/tls.h>, <netinet/tcp.h>
SOL_TLS = 282
TCP_ULP = getattr(socket, "TCP_ULP", 31)
TLS_TX = 1
TLS_RX = 2
TLS_RX_EXPECT_NO_PAD = 4
TLS_SET_RECORD_TYPE = 1  # cmsg type on send
TLS_GET_RECORD_TYPE = 2  # cmsg type on receive

# TLS record content types
CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23

# handshake message types
CLIENT_HELLO = 1
SERVER_HELLO = 2
NEW_SESSION_TICKET = 4
KEY_UPDATE = 24

CLOSE_NOTIFY = 0
USER_CANCELED = 90

RECORD_HEADER = struct.Struct(">BHH")
MAX_RECORD_LENGTH = 2**14 + 2048  # TLSCiphertext limit (RFC 5246 section 6.2.3)
HELLO_RETRY_REQUEST_RANDOM = bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
)
EXTENSION_SUPPORTED_VERSIONS = 43

ALERT_NAMES = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac",
    22: "record_overflow", 40: "handshake_failure", 42: "bad_certificate",
    43: "unsupported_certificate", 44: "certificate_revoked", 45: "certificate_expired",
    46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca",
    49: "access_denied", 50: "decode_error", 51: "decrypt_error", 70: "protocol_version",
    71: "insufficient_security", 80: "internal_error", 86: "inappropriate_fallback",
    90: "user_canceled", 100: "no_renegotiation", 109: "missing_extension",
    110: "unsupported_extension", 112: "unrecognized_name",
    116: "certificate_required", 120: "no_application_protocol",
}

MODPROBE_HINT = "modprobe tls (needs Linux >= 4.17 with CONFIG_TLS)"


class KtlsError(OSError):
    """Kernel TLS could not be set up or the session cannot go on."""


class KtlsUnavailable(KtlsError):
    """The kernel does not offer what is needed (the tls ULP, a cipher)."""


class KtlsProtocolError(KtlsError):
    """The server sent something the hand-off cannot accept."""


class KtlsInstallError(KtlsError):
    """A setsockopt of the hand-off failed.

    ``tx_installed`` False: nothing reached the kernel's record layer, the handshake's
    ``ssl_object`` can carry the session in userspace. True: the transmit side is in the
    kernel but the receive side is not; the connection cannot be used.
    """

    def __init__(self, message: str, tx_installed: bool) -> None:
        super().__init__(message)
        self.tx_installed = tx_installed


class KtlsAlertError(KtlsError):
    """The server sent a fatal alert after the hand-off."""

    def __init__(self, description: int) -> None:
        name = ALERT_NAMES.get(description, "unknown")
        super().__init__(f"server sent TLS alert {description} ({name})")
        self.description = description


class KtlsKeyUpdateError(KtlsError):
    """The server rekeyed (TLS 1.3 KeyUpdate), which kernel TLS cannot follow."""


class KtlsRecordError(KtlsError):
    """The kernel rejected a record from the server (bad MAC, bad size, ...)."""


# --- records and hellos (pure) ----------------------------------------------------


def parse_record_header(header: bytes) -> tuple[int, int]:
    """(content type, fragment length) of a 5-byte TLS record header."""
    record_type, version, length = RECORD_HEADER.unpack(header)
    if record_type not in (CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA):
        raise KtlsProtocolError(f"not a TLS record: content type {record_type}")
    if version >> 8 != 3:
        raise KtlsProtocolError(f"not a TLS record: version {version:#06x}")
    if length > MAX_RECORD_LENGTH:
        raise KtlsProtocolError(f"TLS record of {length} bytes exceeds {MAX_RECORD_LENGTH}")
    return record_type, length


class RecordSplitter:
    """Cuts a byte stream into complete TLS records: (type, fragment)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        records = []
        while len(self._buffer) >= RECORD_HEADER.size:
            record_type, length = parse_record_header(bytes(self._buffer[: RECORD_HEADER.size]))
            end = RECORD_HEADER.size + length
            if len(self._buffer) < end:
                break
            records.append((record_type, bytes(self._buffer[RECORD_HEADER.size : end])))
            del self._buffer[:end]
        return records


class HandshakeMessages:
    """Reassembles handshake messages, which may span records or share one."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, fragment: bytes) -> list[tuple[int, bytes]]:
        self._buffer += fragment
        messages = []
        while len(self._buffer) >= 4:
            msg_type = self._buffer[0]
            length = int.from_bytes(self._buffer[1:4], "big")
            if len(self._buffer) < 4 + length:
                break
            messages.append((msg_type, bytes(self._buffer[4 : 4 + length])))
            del self._buffer[: 4 + length]
        return messages


@dataclass(frozen=True)
class ServerHello:
    random: bytes
    suite_code: int
    version: int  # TLS_1_3 when supported_versions says so, else legacy_version

    @property
    def is_retry_request(self) -> bool:
        return self.random == HELLO_RETRY_REQUEST_RANDOM


def parse_server_hello(body: bytes) -> ServerHello:
    """The fields of a ServerHello body (RFC 8446 section 4.1.3, RFC 5246 section 7.4.1.3)."""
    try:
        legacy_version = int.from_bytes(body[0:2], "big")
        random = body[2:34]
        session_id_length = body[34]
        at = 35 + session_id_length
        suite_code = int.from_bytes(body[at : at + 2], "big")
        at += 3  # cipher suite, compression method
        version = legacy_version
        if at < len(body):
            end = at + 2 + int.from_bytes(body[at : at + 2], "big")
            at += 2
            while at < end:
                ext_type = int.from_bytes(body[at : at + 2], "big")
                ext_length = int.from_bytes(body[at + 2 : at + 4], "big")
                if ext_type == EXTENSION_SUPPORTED_VERSIONS:
                    version = int.from_bytes(body[at + 4 : at + 6], "big")
                at += 4 + ext_length
        if len(random) != 32 or at > len(body):
            raise IndexError
    except IndexError:
        raise KtlsProtocolError("truncated ServerHello") from None
    return ServerHello(random, suite_code, version)


def parse_client_hello_random(body: bytes) -> bytes:
    random = body[2:34]
    if len(random) != 32:
        raise KtlsProtocolError("truncated ClientHello")
    return random


class HandshakeWatcher:
    """Reads what the hand-off needs from the cleartext part of the handshake.

    From our side: the client random and, in TLS 1.2, the explicit nonce of our
    Finished (the first handshake record after our ChangeCipherSpec). From the
    server: its (final, not HelloRetryRequest) ServerHello.
    """

    def __init__(self) -> None:
        self.client_random: bytes | None = None
        self.client_finished_nonce: bytes | None = None
        self.server_hello: ServerHello | None = None
        self._sent = RecordSplitter()
        self._sent_handshake = HandshakeMessages()
        self._sent_change_cipher_spec = False
        self._received_handshake = HandshakeMessages()

    def on_sent(self, data: bytes) -> None:
        for record_type, fragment in self._sent.feed(data):
            if record_type == CHANGE_CIPHER_SPEC:
                self._sent_change_cipher_spec = True
            elif record_type == HANDSHAKE and self._sent_change_cipher_spec:
                if self.client_finished_nonce is None:
                    self.client_finished_nonce = fragment[:8]
            elif record_type == HANDSHAKE and self.client_random is None:
                for msg_type, body in self._sent_handshake.feed(fragment):
                    if msg_type == CLIENT_HELLO and self.client_random is None:
                        self.client_random = parse_client_hello_random(body)

    def on_received(self, record_type: int, fragment: bytes) -> None:
        # Before the final ServerHello everything from the server is cleartext.
        if record_type != HANDSHAKE or self.server_hello is not None:
            return
        for msg_type, body in self._received_handshake.feed(fragment):
            if msg_type == SERVER_HELLO:
                hello = parse_server_hello(body)
                if not hello.is_retry_request:
                    self.server_hello = hello
                    return


class ControlRecords:
    """Handles the non-data records that reach us after the hand-off.

    The kernel hands them over with their content type, possibly in pieces, so each
    type is parsed as a stream. Returns True from ``feed`` once close_notify arrives.
    """

    def __init__(self) -> None:
        self._handshake = HandshakeMessages()
        self._alert = bytearray()
        self.session_tickets = 0

    def feed(self, record_type: int, data: bytes) -> bool:
        if record_type == HANDSHAKE:
            for msg_type, _body in self._handshake.feed(data):
                self._on_handshake_message(msg_type)
            return False
        if record_type == ALERT:
            return self._on_alert_bytes(data)
        raise KtlsProtocolError(f"unexpected TLS record type {record_type} after the hand-off")

    def _on_handshake_message(self, msg_type: int) -> None:
        if msg_type == NEW_SESSION_TICKET:
            self.session_tickets += 1  # no resumption: the ticket is dropped
        elif msg_type == KEY_UPDATE:
            raise KtlsKeyUpdateError(
                "server sent a TLS 1.3 KeyUpdate: kernel TLS cannot rekey the receive side; "
                "reconnect"
            )
        else:
            raise KtlsProtocolError(f"unexpected handshake message {msg_type} after the hand-off")

    def _on_alert_bytes(self, data: bytes) -> bool:
        self._alert += data
        while len(self._alert) >= 2:
            description = self._alert[1]
            del self._alert[:2]
            if description == CLOSE_NOTIFY:
                return True
            if description != USER_CANCELED:  # a close_notify follows user_canceled
                raise KtlsAlertError(description)
        return False


# --- what the kernel offers -------------------------------------------------------


@dataclass(frozen=True)
class KernelSupport:
    """The result of one probe: the tls ULP and which (version, cipher) install."""

    ulp_error: str | None
    combinations: frozenset[tuple[int, KernelCipher]] = frozenset()
    failures: dict[tuple[int, KernelCipher], str] = field(default_factory=dict)

    def allows(self, suite: CipherSuite) -> bool:
        return (suite.version, suite.kernel_cipher) in self.combinations


@functools.cache
def kernel_support() -> KernelSupport:
    """Probe the running kernel once, on throwaway loopback TCP connections.

    TX and RX are installed with dummy keys for every version and cipher, so that a
    failure shows up here and not after a real session's TX went in (no way back).
    """
    combinations = set()
    failures = {}
    try:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.settimeout(5)
            for version in (TLS_1_3, TLS_1_2):
                for cipher in KernelCipher:
                    error = _probe_install(listener, version, cipher)
                    if error is None:
                        combinations.add((version, cipher))
                    else:
                        failures[(version, cipher)] = error
    except _NoTlsUlp as exc:
        return KernelSupport(ulp_error=str(exc))
    except OSError as exc:
        return KernelSupport(ulp_error=f"cannot probe on a loopback TCP connection: {exc}")
    return KernelSupport(None, frozenset(combinations), failures)


class _NoTlsUlp(Exception):
    pass


def _probe_install(listener: socket.socket, version: int, cipher: KernelCipher) -> str | None:
    """None if TX and RX of ``cipher`` install on a fresh loopback connection, else why not."""
    with socket.create_connection(listener.getsockname(), timeout=5) as client:
        peer, _ = listener.accept()
        with peer:
            try:
                client.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
            except OSError as exc:
                raise _NoTlsUlp(_errno_text(exc)) from exc
            return _try_install(client, version, cipher)


def _try_install(sock: socket.socket, version: int, cipher: KernelCipher) -> str | None:
    size = crypto_info_size(cipher)
    dummy = CRYPTO_INFO_HEADER.pack(version, cipher) + bytes(size - CRYPTO_INFO_HEADER.size)
    for direction, name in ((TLS_TX, "TLS_TX"), (TLS_RX, "TLS_RX")):
        try:
            sock.setsockopt(SOL_TLS, direction, dummy)
        except OSError as exc:
            return f"{name}: {_errno_text(exc)}"
    return None


def _errno_text(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "?")
    return f"{name} ({exc.strerror})"


def probe() -> str | None:
    """None when the kernel can take TLS sessions over; otherwise a one-line reason."""
    support = kernel_support()
    if support.ulp_error is not None:
        return f"kernel has no TLS ULP ({support.ulp_error}): {MODPROBE_HINT}"
    if not support.combinations:
        failed = "; ".join(
            f"{'TLS 1.3' if v == TLS_1_3 else 'TLS 1.2'} {c.name}: {why}"
            for (v, c), why in support.failures.items()
        )
        return f"kernel TLS takes none of the AEAD ciphers ({failed})"
    return None


# --- the client context -----------------------------------------------------------


class KtlsContext(ssl.SSLContext):
    """A client context whose key log is an anonymous memory file of this process."""

    def __new__(cls, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> KtlsContext:
        return super().__new__(cls, protocol)

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> None:
        fd = os.memfd_create("tb-ktls-keylog", os.MFD_CLOEXEC)
        weakref.finalize(self, os.close, fd)
        self.keylog_fd = fd
        # ssl opens its own (non-inheritable) descriptor on the same memory file.
        self.keylog_filename = f"/proc/self/fd/{fd}"
        self._handshakes_in_flight: weakref.WeakSet[KtlsHandshake] = weakref.WeakSet()

    def secrets_for(self, client_random: bytes) -> dict[str, bytes]:
        size = os.fstat(self.keylog_fd).st_size
        return parse_keylog(os.pread(self.keylog_fd, size, 0), client_random)

    def handshake_started(self, handshake: KtlsHandshake) -> None:
        self._handshakes_in_flight.add(handshake)

    def handshake_ended(self, handshake: KtlsHandshake) -> None:
        """Forget the secrets once no handshake on this context still needs them."""
        self._handshakes_in_flight.discard(handshake)
        if not self._handshakes_in_flight:
            os.ftruncate(self.keylog_fd, 0)


def make_context(cafile: str | None, *, version: ssl.TLSVersion | None = None) -> KtlsContext:
    """A verifying client context that offers only suites the kernel can take over.

    Verification and host name checking are always on (default CAs plus ``cafile``).
    TLS 1.2 offers ECDHE with AES-GCM and ChaCha20-Poly1305. TLS 1.3 suites cannot be
    chosen from Python; OpenSSL's defaults are exactly the three AEAD suites the kernel
    knows, and TLS 1.3 is left out when the kernel lacks one of them. ``version`` pins
    TLS 1.2 or 1.3.
    """
    context = KtlsContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_default_certs()
    if cafile:
        context.load_verify_locations(cafile)
    support = kernel_support()

    def usable(suite: CipherSuite) -> bool:
        # Without the ULP no suite will install; offer them all and fail at install.
        return support.ulp_error is not None or support.allows(suite)

    tls12 = [s.name for s in SUITES.values() if s.version == TLS_1_2 and usable(s)]
    tls13_ok = all(usable(s) for s in SUITES.values() if s.version == TLS_1_3)
    if tls12:
        context.set_ciphers(":".join(tls12))
    context.minimum_version = ssl.TLSVersion.TLSv1_2 if tls12 else ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3 if tls13_ok else ssl.TLSVersion.TLSv1_2
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


# --- the handshake and the hand-off -----------------------------------------------


def install_session(sock: socket.socket, tx: CryptoInfo, rx: CryptoInfo) -> None:
    """Attach the tls ULP, then TX, then RX: the order that keeps a way back longest."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
    except OSError as exc:
        raise KtlsInstallError(
            f"kernel has no TLS ULP ({_errno_text(exc)}): {MODPROBE_HINT}", tx_installed=False
        ) from exc
    try:
        sock.setsockopt(SOL_TLS, TLS_TX, tx.pack())
    except OSError as exc:
        raise KtlsInstallError(
            f"kernel refused TLS_TX for {tx.cipher.name}: {_errno_text(exc)}", tx_installed=False
        ) from exc
    try:
        sock.setsockopt(SOL_TLS, TLS_RX, rx.pack())
    except OSError as exc:
        raise KtlsInstallError(
            f"kernel refused TLS_RX for {rx.cipher.name} after TLS_TX: {_errno_text(exc)}",
            tx_installed=True,
        ) from exc
    if tx.version == TLS_1_3:
        # Lets the kernel decrypt TLS 1.3 records straight into the reader's buffer
        # (Linux >= 6.0); older kernels lack the option, which only costs speed.
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_TLS, TLS_RX_EXPECT_NO_PAD, 1)


class KtlsHandshake:
    """Drives a client handshake on a connected socket, then installs kernel TLS.

    Call ``step()`` whenever the socket is ready for what it last asked: it returns
    "read" or "write", or None once the certificate is verified and the keys are in
    the kernel. Errors: ``ssl.SSLCertVerificationError`` and other ``ssl.SSLError``
    from the handshake, ``KtlsError`` subclasses from the hand-off.
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        server_hostname: str | None,
        *,
        install: Callable[[socket.socket, CryptoInfo, CryptoInfo], None] = install_session,
    ) -> None:
        if not isinstance(context, KtlsContext):
            raise TypeError("KtlsHandshake needs a context from ktls.make_context()")
        self._sock = sock
        self._context = context
        self._install = install
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(
            self.incoming, self.outgoing, server_side=False, server_hostname=server_hostname
        )
        self._watcher = HandshakeWatcher()
        self._unsent = bytearray()
        self._record = bytearray()
        self._negotiated = False
        self._done = False
        self.version: str | None = None
        self.cipher: str | None = None
        self.suite: CipherSuite | None = None
        self.tx_info: CryptoInfo | None = None
        self.rx_info: CryptoInfo | None = None
        context.handshake_started(self)

    def step(self) -> str | None:
        if self._done:
            return None
        try:
            wanted = self._advance()
        except BaseException:
            self._done = True
            self._context.handshake_ended(self)
            raise
        if wanted is None:
            self._done = True
            self._context.handshake_ended(self)
        return wanted

    def _advance(self) -> str | None:
        while True:
            if not self._flush():
                return "write"
            if self._negotiated:
                self._hand_off()
                return None
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                if self._take_outgoing():
                    continue
                if not self._feed_one_record():
                    return "read"
                continue
            except ssl.SSLError:
                self._send_alert()
                raise
            self._take_outgoing()
            self._negotiated = True

    def _take_outgoing(self) -> bool:
        data = self.outgoing.read()
        if data:
            self._watcher.on_sent(data)
            self._unsent += data
        return bool(data)

    def _flush(self) -> bool:
        while self._unsent:
            try:
                sent = self._sock.send(self._unsent)
            except BlockingIOError:
                return False
            del self._unsent[:sent]
        return True

    def _send_alert(self) -> None:
        """Best effort: let the server know why (e.g. bad_certificate) before closing."""
        self._take_outgoing()
        with contextlib.suppress(OSError):
            self._flush()

    def _feed_one_record(self) -> bool:
        """Read at most one whole record into the TLS object; False if it would block."""
        needed = RECORD_HEADER.size
        if len(self._record) >= RECORD_HEADER.size:
            needed += parse_record_header(bytes(self._record[: RECORD_HEADER.size]))[1]
        while len(self._record) < needed:
            try:
                chunk = self._sock.recv(needed - len(self._record))
            except BlockingIOError:
                return False
            if not chunk:
                raise KtlsProtocolError("server closed the connection during the TLS handshake")
            self._record += chunk
            if len(self._record) == RECORD_HEADER.size:
                needed += parse_record_header(bytes(self._record))[1]
        record = bytes(self._record)
        self._record.clear()
        self._watcher.on_received(record[0], record[RECORD_HEADER.size :])
        self.incoming.write(record)
        return True

    def _hand_off(self) -> None:
        suite = self._negotiated_suite()
        if self.incoming.pending or self.ssl_object.pending():
            raise KtlsProtocolError("handshake read past the server's Finished")
        client_random = self._watcher.client_random
        hello = self._watcher.server_hello
        assert client_random is not None and hello is not None  # checked by _negotiated_suite
        try:
            secrets = self._context.secrets_for(client_random)
            tx_keys, rx_keys = session_keys(suite, secrets, client_random, hello.random)
        except ValueError as exc:
            raise KtlsProtocolError(f"cannot derive the session keys: {exc}") from exc
        seq = initial_record_sequence(suite.version)
        self.tx_info = crypto_info(suite, tx_keys, seq, self._first_explicit_nonce(suite))
        self.rx_info = crypto_info(suite, rx_keys, seq)
        self._install(self._sock, self.tx_info, self.rx_info)
        self.suite = suite
        self.version = suite.version_name
        self.cipher = suite.name

    def _negotiated_suite(self) -> CipherSuite:
        hello = self._watcher.server_hello
        if hello is None or self._watcher.client_random is None:
            raise KtlsProtocolError("handshake finished without a ServerHello seen in clear")
        suite = SUITES.get(hello.suite_code)
        cipher = self.ssl_object.cipher()
        if suite is None:
            name = cipher[0] if cipher else f"{hello.suite_code:#06x}"
            raise KtlsUnavailable(f"server chose {name}, which kernel TLS cannot take over")
        if cipher is None or cipher[0] != suite.name or self.ssl_object.version() != (
            suite.version_name
        ):
            raise KtlsProtocolError(
                f"ServerHello says {suite.version_name} {suite.name}, OpenSSL says "
                f"{self.ssl_object.version()} {cipher and cipher[0]}"
            )
        return suite

    def _first_explicit_nonce(self, suite: CipherSuite) -> bytes:
        if suite.version == TLS_1_3 or suite.kernel_cipher is KernelCipher.CHACHA20_POLY1305:
            return bytes(8)
        nonce = self._watcher.client_finished_nonce
        if nonce is None or len(nonce) != 8:
            raise KtlsProtocolError("did not see the explicit nonce of our TLS 1.2 Finished")
        return next_explicit_nonce(nonce)


# --- after the hand-off -----------------------------------------------------------

_RECORD_ERRNOS = {errno.EBADMSG, errno.EMSGSIZE, errno.EIO, errno.EINVAL, errno.ENOMEM}


class KtlsReceiver:
    """Reads application data of a kernel TLS socket straight into the caller's buffer.

    ``recv_into`` returns the number of data bytes (> 0), 0 at the end of the stream
    (close_notify, or a TCP FIN: ``closed_by`` says which), raises BlockingIOError when
    nothing is ready, and KtlsError on a fatal alert, a KeyUpdate or a bad record.
    Session tickets are dropped.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._control = ControlRecords()
        self._ancillary_size = socket.CMSG_SPACE(1)
        self.closed_by: str | None = None  # "close_notify" | "eof"

    @property
    def session_tickets(self) -> int:
        return self._control.session_tickets

    def recv_into(self, buf: memoryview) -> int:
        while self.closed_by is None:
            try:
                nbytes, ancdata, _flags, _addr = self._sock.recvmsg_into(
                    [buf], self._ancillary_size
                )
            except BlockingIOError:
                raise
            except OSError as exc:
                if exc.errno in _RECORD_ERRNOS:
                    raise KtlsRecordError(
                        f"kernel TLS rejected a record from the server: {_errno_text(exc)}"
                    ) from exc
                raise
            record_type = _record_type(ancdata)
            if record_type is None and nbytes == 0:
                self.closed_by = "eof"
            elif record_type in (None, APPLICATION_DATA):
                if nbytes:
                    return nbytes
            elif self._control.feed(record_type, bytes(buf[:nbytes])):
                self.closed_by = "close_notify"
        return 0


def _record_type(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancdata:
        if level == SOL_TLS and kind == TLS_GET_RECORD_TYPE and data:
            return data[0]
    return None


def send_close_notify(sock: socket.socket) -> None:
    """Send a close_notify alert through the kernel's TLS transmit side."""
    sock.sendmsg([bytes([1, CLOSE_NOTIFY])], [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes([ALERT]))])


def read_crypto_info(sock: socket.socket, direction: int) -> CryptoInfo | None:
    """What the kernel holds for TLS_TX or TLS_RX, with the current record sequence."""
    try:
        header = sock.getsockopt(SOL_TLS, direction, CRYPTO_INFO_HEADER.size)
        _version, cipher = CRYPTO_INFO_HEADER.unpack(header)
        data = sock.getsockopt(SOL_TLS, direction, crypto_info_size(KernelCipher(cipher)))
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.EBUSY, errno.EOPNOTSUPP):
            return None
        raise
    return CryptoInfo.unpack(data)


def read_tls_stat(path: str = "/proc/net/tls_stat") -> dict[str, int]:
    """The kernel's TLS counters (TlsTxSw, TlsRxSw, TlsDecryptError, ...); {} without kTLS."""
    try:
        with open(path) as f:
            rows = [line.split() for line in f if line.strip()]
        return {name: int(value) for name, value in rows}
    except FileNotFoundError:
        return {}
