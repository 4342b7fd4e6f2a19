"""For tests and troubleshooting only: what the kernel holds for a socket, its TLS counters."""

from __future__ import annotations

import errno
import socket

from balancer.ktls.kernel import SOL_TLS
from balancer.tls_keys import CRYPTO_INFO_HEADER, CryptoInfo, KernelCipher, crypto_info_size


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
