"""The handshake driver: ``ssl`` over memory BIOs fed one record at a time, then the hand-off."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable

from balancer.ktls.context import KtlsContext
from balancer.ktls.errors import KtlsProtocolError, KtlsUnavailable
from balancer.ktls.kernel import install_session
from balancer.ktls.records import RECORD_HEADER, HandshakeWatcher, parse_record_header
from balancer.tls_keys import (
    SUITES,
    TLS_1_3,
    CipherSuite,
    CryptoInfo,
    KernelCipher,
    crypto_info,
    initial_record_sequence,
    next_explicit_nonce,
    session_keys,
)


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
