r"""Kernel TLS: a verified userspace handshake, then the keys handed to the kernel.

The handshake runs in Python's ``ssl`` through memory BIOs, fed one TLS record at a
time from the socket, so that when it completes nothing after the server's Finished
has been read: whatever follows (session tickets, application data) is still in the
socket and the kernel decrypts it once ``TLS_RX`` is installed. The secrets come from
OpenSSL's key log, written to an anonymous memory file, never to disk. After the
hand-off the socket is read with ``recvmsg_into`` straight into the caller's buffer
(``KtlsReceiver``) and written with plain ``send``.

Split along the sans-I/O line, as ``balancer.tls_keys`` (the key schedule and struct
packing) already is:

- ``errors``: the ``KtlsError`` family (all ``OSError``\ s).
- ``records``: pure record and hello parsing, the cleartext handshake watcher and the
  post-hand-off control records: bytes in, facts out.
- ``kernel``: probing what the running kernel offers; installing TX and RX.
- ``context``: the client ``ssl`` context (key log in an anonymous memory file).
- ``handshake``: the handshake driver and the hand-off (``KtlsHandshake``).
- ``receiver``: reading after the hand-off (``KtlsReceiver``), ``send_close_notify``.
- ``diagnostics``: test-only views of the kernel's state (``read_crypto_info``,
  ``read_tls_stat``).

This package re-exports their public names, so ``from balancer import ktls`` keeps working.
"""

from balancer.ktls.context import KtlsContext, make_context
from balancer.ktls.diagnostics import read_crypto_info, read_tls_stat
from balancer.ktls.errors import (
    ALERT_NAMES,
    KtlsAlertError,
    KtlsError,
    KtlsInstallError,
    KtlsKeyUpdateError,
    KtlsProtocolError,
    KtlsRecordError,
    KtlsUnavailable,
)
from balancer.ktls.handshake import KtlsHandshake
from balancer.ktls.kernel import (
    MODPROBE_HINT,
    SOL_TLS,
    TCP_ULP,
    TLS_GET_RECORD_TYPE,
    TLS_RX,
    TLS_RX_EXPECT_NO_PAD,
    TLS_SET_RECORD_TYPE,
    TLS_TX,
    KernelSupport,
    install_session,
    kernel_support,
    probe,
)
from balancer.ktls.receiver import KtlsReceiver, send_close_notify
from balancer.ktls.records import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    CLIENT_HELLO,
    CLOSE_NOTIFY,
    EXTENSION_SUPPORTED_VERSIONS,
    HANDSHAKE,
    HELLO_RETRY_REQUEST_RANDOM,
    KEY_UPDATE,
    MAX_RECORD_LENGTH,
    NEW_SESSION_TICKET,
    RECORD_HEADER,
    SERVER_HELLO,
    USER_CANCELED,
    ControlRecords,
    HandshakeMessages,
    HandshakeWatcher,
    RecordSplitter,
    ServerHello,
    parse_client_hello_random,
    parse_record_header,
    parse_server_hello,
)

__all__ = [
    "ALERT",
    "ALERT_NAMES",
    "APPLICATION_DATA",
    "CHANGE_CIPHER_SPEC",
    "CLIENT_HELLO",
    "CLOSE_NOTIFY",
    "EXTENSION_SUPPORTED_VERSIONS",
    "HANDSHAKE",
    "HELLO_RETRY_REQUEST_RANDOM",
    "KEY_UPDATE",
    "MAX_RECORD_LENGTH",
    "MODPROBE_HINT",
    "NEW_SESSION_TICKET",
    "RECORD_HEADER",
    "SERVER_HELLO",
    "SOL_TLS",
    "TCP_ULP",
    "TLS_GET_RECORD_TYPE",
    "TLS_RX",
    "TLS_RX_EXPECT_NO_PAD",
    "TLS_SET_RECORD_TYPE",
    "TLS_TX",
    "USER_CANCELED",
    "ControlRecords",
    "HandshakeMessages",
    "HandshakeWatcher",
    "KernelSupport",
    "KtlsAlertError",
    "KtlsContext",
    "KtlsError",
    "KtlsHandshake",
    "KtlsInstallError",
    "KtlsKeyUpdateError",
    "KtlsProtocolError",
    "KtlsReceiver",
    "KtlsRecordError",
    "KtlsUnavailable",
    "RecordSplitter",
    "ServerHello",
    "install_session",
    "kernel_support",
    "make_context",
    "parse_client_hello_random",
    "parse_record_header",
    "parse_server_hello",
    "probe",
    "read_crypto_info",
    "read_tls_stat",
    "send_close_notify",
]
