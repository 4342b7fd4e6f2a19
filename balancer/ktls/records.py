"""TLS records and hellos, pure: bytes in, parsed records and handshake facts out.

What the hand-off needs to read from the cleartext part of the handshake
(``HandshakeWatcher``) and the control records the kernel passes on after it
(``ControlRecords``). No sockets here; the key schedule is in ``balancer.tls_keys``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from balancer.ktls.errors import KtlsAlertError, KtlsKeyUpdateError, KtlsProtocolError

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
