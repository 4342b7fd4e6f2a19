"""The client ``ssl`` context of a kTLS session: key log in memory, only suites the kernel takes."""

from __future__ import annotations

import os
import ssl
import weakref

from balancer.ktls.kernel import kernel_support
from balancer.tls_keys import SUITES, TLS_1_2, TLS_1_3, CipherSuite, parse_keylog


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
        self._handshakes_in_flight: weakref.WeakSet[object] = weakref.WeakSet()

    def secrets_for(self, client_random: bytes) -> dict[str, bytes]:
        size = os.fstat(self.keylog_fd).st_size
        return parse_keylog(os.pread(self.keylog_fd, size, 0), client_random)

    def handshake_started(self, handshake: object) -> None:
        self._handshakes_in_flight.add(handshake)

    def handshake_ended(self, handshake: object) -> None:
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
