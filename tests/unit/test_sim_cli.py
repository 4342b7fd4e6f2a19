"""simulate's command line: defaults, derived settings, refusals; TLS settings and certificates."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from simulator import cli, tlsconfig


def settings(*args: str):  # type: ignore[no-untyped-def]
    parser = cli.build_parser()
    ns = parser.parse_args(list(args))
    ns.rate_given = "--rate" in args
    return cli.settings_from(ns, parser)


def test_defaults() -> None:
    s = settings("--no-tls", "--seed", "3")
    assert s.tls is None and s.rate == 2000 and s.batch == 2 and s.max_connections == 1
    assert s.auth_timeout == 10 and s.ping_interval == 20 and s.host == "127.0.0.1"
    assert s.clock_start_ms == 1_735_828_200_000  # seeded runs start at the same market time
    assert s.fault == "reset" and s.drop_every is None


def test_batch_follows_rate_and_interval_unless_given() -> None:
    assert settings("--no-tls", "--rate", "500k/s").batch == 500
    assert settings("--no-tls", "--rate", "500k/s", "--frame-interval", "4ms").batch == 2000
    assert settings("--no-tls", "--rate", "max").batch == 1000
    assert settings("--no-tls", "--rate", "max", "--batch", "50").batch == 50


def test_replay_defaults_to_its_recorded_pace(tmp_path: Path) -> None:
    assert settings("--no-tls", "--replay", "x.jsonl").speed == 1.0
    assert settings("--no-tls", "--replay", "x.jsonl", "--rate", "1k/s").speed is None
    assert settings("--no-tls", "--replay", "x.jsonl", "--speed", "10x").speed == 10.0


def test_unseeded_runs_get_a_random_seed_to_record() -> None:
    seeds = {settings("--no-tls").seed for _ in range(5)}
    assert len(seeds) > 1


@pytest.mark.parametrize("args", [
    ("--rate", "fast"), ("--duration", "-1s"), ("--profile", "open", "--rate", "max"),
    ("--speed", "2x"), ("--fault", "meltdown"), ("--no-tls", "--tls-version", "1.3"),
    ("--tls-version", "1.2", "--tls13-ciphersuites", "TLS_AES_128_GCM_SHA256"),
    ("--replay", "f", "--rate", "1k/s", "--speed", "2x"), ("--keys", ","),
    ("--tls13-ciphersuites", "TLS_RC4"), ("--clock-start", "2025-01-02T09:30:00"),
])
def test_bad_arguments_exit_2(args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(args))
    assert exit_info.value.code == 2
    assert "simulate: error:" in capsys.readouterr().err


def test_tls13_suites_and_their_openssl_config() -> None:
    assert tlsconfig.parse_tls13_suites("TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256") == \
        ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"]
    text = tlsconfig.openssl_conf_text(["TLS_AES_256_GCM_SHA384"])
    assert "system_default = tls_defaults" in text
    assert "Ciphersuites = TLS_AES_256_GCM_SHA384" in text.splitlines()


@pytest.mark.parametrize("cert_type", ["rsa", "ecdsa"])
def test_certificates_are_made_once_and_reused(tmp_path: Path, cert_type: str) -> None:
    files = tlsconfig.ensure_certs(str(tmp_path), cert_type)
    stamp = os.stat(files.chainfile).st_mtime_ns
    again = tlsconfig.ensure_certs(str(tmp_path), cert_type)
    assert again == files and os.stat(files.chainfile).st_mtime_ns == stamp
    context = tlsconfig.server_context(files, "1.2", "ECDHE+AESGCM")
    assert context.maximum_version == ssl.TLSVersion.TLSv1_2
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    pem = Path(files.chainfile).read_bytes()
    cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE"):])
    kind = rsa.RSAPublicKey if cert_type == "rsa" else ec.EllipticCurvePublicKey
    assert isinstance(cert.public_key(), kind)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(n.value) for n in names} == {"localhost", "127.0.0.1", "::1"}
    client = ssl.create_default_context(cafile=files.cafile)
    assert client.cert_store_stats()["x509_ca"] == 1


def test_an_unusable_cipher_string_is_refused(tmp_path: Path) -> None:
    files = tlsconfig.ensure_certs(str(tmp_path), "rsa")
    with pytest.raises(ValueError, match="--ciphers"):
        tlsconfig.server_context(files, "1.2", "NO-SUCH-CIPHER")
