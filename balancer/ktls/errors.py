"""The kernel TLS errors: all ``OSError``s, so a socket's caller sees one family."""

from __future__ import annotations

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


class KtlsError(OSError):
    """Kernel TLS could not be set up or the session cannot go on."""


class KtlsUnavailable(KtlsError):
    """The kernel does not offer what is needed (the tls ULP, a cipher)."""


class KtlsProtocolError(KtlsError):
    """The server sent something the hand-off cannot accept."""


class KtlsInstallError(KtlsError):
    """A setsockopt of the hand-off failed: the connection cannot be used.

    No userspace fallback: the probe at start-up installs TX and RX of every offered suite
    on a throwaway connection, so a refusal here means the kernel changed under a running
    lb; the session ends as a TLS failure and the reconnect loop (with a fresh probe
    result, cached) takes over, as for any other handshake failure.
    """


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
