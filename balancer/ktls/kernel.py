"""What the running kernel offers (the tls ULP, which ciphers install) and the install itself."""

from __future__ import annotations

import contextlib
import errno
import functools
import socket
from dataclasses import dataclass, field

from balancer.ktls.errors import KtlsInstallError
from balancer.tls_keys import (
    CRYPTO_INFO_HEADER,
    TLS_1_2,
    TLS_1_3,
    CipherSuite,
    CryptoInfo,
    KernelCipher,
    crypto_info_size,
)

# <linux/tls.h>, <netinet/tcp.h>
SOL_TLS = 282
TCP_ULP = getattr(socket, "TCP_ULP", 31)
TLS_TX = 1
TLS_RX = 2
TLS_RX_EXPECT_NO_PAD = 4
TLS_SET_RECORD_TYPE = 1  # cmsg type on send
TLS_GET_RECORD_TYPE = 2  # cmsg type on receive

MODPROBE_HINT = "modprobe tls (needs Linux >= 4.17 with CONFIG_TLS)"


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
                raise _NoTlsUlp(errno_text(exc)) from exc
            return _try_install(client, version, cipher)


def _try_install(sock: socket.socket, version: int, cipher: KernelCipher) -> str | None:
    size = crypto_info_size(cipher)
    dummy = CRYPTO_INFO_HEADER.pack(version, cipher) + bytes(size - CRYPTO_INFO_HEADER.size)
    for direction, name in ((TLS_TX, "TLS_TX"), (TLS_RX, "TLS_RX")):
        try:
            sock.setsockopt(SOL_TLS, direction, dummy)
        except OSError as exc:
            return f"{name}: {errno_text(exc)}"
    return None


def errno_text(exc: OSError) -> str:
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


def install_session(sock: socket.socket, tx: CryptoInfo, rx: CryptoInfo) -> None:
    """Attach the tls ULP, then TX, then RX: the order that keeps a way back longest."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
    except OSError as exc:
        raise KtlsInstallError(
            f"kernel has no TLS ULP ({errno_text(exc)}): {MODPROBE_HINT}") from exc
    try:
        sock.setsockopt(SOL_TLS, TLS_TX, tx.pack())
    except OSError as exc:
        raise KtlsInstallError(
            f"kernel refused TLS_TX for {tx.cipher.name}: {errno_text(exc)}") from exc
    try:
        sock.setsockopt(SOL_TLS, TLS_RX, rx.pack())
    except OSError as exc:
        raise KtlsInstallError(
            f"kernel refused TLS_RX for {rx.cipher.name} after TLS_TX: {errno_text(exc)}") from exc
    if tx.version == TLS_1_3:
        # Lets the kernel decrypt TLS 1.3 records straight into the reader's buffer
        # (Linux >= 6.0); older kernels lack the option, which only costs speed.
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_TLS, TLS_RX_EXPECT_NO_PAD, 1)
