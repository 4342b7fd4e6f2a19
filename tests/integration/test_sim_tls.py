"""TLS: the version and suite the simulator is told to use are the ones a client that offers
everything ends up with (what the kernel-TLS tests rely on), and the ready file's CA works."""

from __future__ import annotations

import socket
import ssl

import pytest

from harness.sim import SimProcess

BASE = ["--tape-size", "1024", "--symbols", "100", "--stats-interval", "0"]


def negotiate(sim: SimProcess) -> tuple[str, str]:
    """Handshake with a client offering every version and suite it has."""
    context = ssl.create_default_context(cafile=sim.cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        version, cipher = tls.version(), tls.cipher()
    assert version is not None and cipher is not None
    return version, cipher[0]


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                   "TLS_CHACHA20_POLY1305_SHA256"])
def test_tls13_ciphersuite_is_pinned(suite: str) -> None:
    with SimProcess([*BASE, "--tls-version", "1.3", "--tls13-ciphersuites", suite],
                    ledger=False) as sim:
        assert negotiate(sim) == ("TLSv1.3", suite)
        assert "OPENSSL_CONF" not in sim.env  # the restart sets it for itself only


@pytest.mark.parametrize(("cert_type", "cipher"), [
    ("rsa", "ECDHE-RSA-AES128-GCM-SHA256"), ("rsa", "ECDHE-RSA-AES256-GCM-SHA384"),
    ("rsa", "ECDHE-RSA-CHACHA20-POLY1305"), ("ecdsa", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("ecdsa", "ECDHE-ECDSA-AES256-GCM-SHA384"), ("ecdsa", "ECDHE-ECDSA-CHACHA20-POLY1305"),
])
def test_tls12_cipher_is_pinned(cert_type: str, cipher: str) -> None:
    with SimProcess([*BASE, "--tls-version", "1.2", "--cert-type", cert_type, "--ciphers", cipher],
                    ledger=False) as sim:
        assert negotiate(sim) == ("TLSv1.2", cipher)


def test_default_is_verified_tls_for_localhost_and_the_loopback_addresses() -> None:
    with SimProcess(BASE, ledger=False) as sim:
        assert sim.url.startswith("wss://localhost:")
        assert sim.cafile is not None and sim.cafile.endswith("rsa/ca.pem")
        version, _ = negotiate(sim)
        assert version == "TLSv1.3"
        context = ssl.create_default_context()  # the system roots do not know our CA
        with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as raw, \
                pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="localhost")
        context = ssl.create_default_context(cafile=sim.cafile)
        with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == "TLSv1.3"


def test_ipv6_loopback() -> None:
    with SimProcess([*BASE, "--host", "::1"], ledger=False) as sim:
        assert sim.url.startswith("wss://[::1]:")
        context = ssl.create_default_context(cafile=sim.cafile)
        with socket.create_connection(("::1", sim.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="::1") as tls:
            assert tls.version() == "TLSv1.3"


def test_a_suite_openssl_does_not_know_is_refused() -> None:
    sim = SimProcess([*BASE, "--tls13-ciphersuites", "TLS_NOPE"], ledger=False)
    with pytest.raises(AssertionError, match=r"unknown TLS 1\.3 ciphersuite"):
        sim.start()
    assert sim.returncode == 2
    sim.cleanup()
