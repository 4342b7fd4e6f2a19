"""TLS for the simulator: a cached trustme CA and server certificate, and the SSL context.

Python's ``ssl`` can pin the TLS version and the TLS 1.2 cipher list, but has no call for
OpenSSL's ``SSL_CTX_set_ciphersuites`` (the TLS 1.3 suites). OpenSSL applies the
``system_default`` section of its configuration file to every new context, so
``--tls13-ciphersuites`` is implemented by writing a small configuration with a
``Ciphersuites`` line and starting the process again with ``OPENSSL_CONF`` pointing at it,
before ``ssl`` is loaded. After the restart the context is checked to offer exactly the
requested suites, so a configuration that OpenSSL ignored cannot pass silently.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import sys
import tempfile
from dataclasses import dataclass

CERT_TYPES = ("rsa", "ecdsa")
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_CCM_SHA256",
                "TLS_AES_128_CCM_8_SHA256")
CERT_NAMES = ("localhost", "127.0.0.1", "::1")
RESTARTED_ENV = "SIMULATE_OPENSSL_CONF_APPLIED"


@dataclass(frozen=True)
class CertFiles:
    directory: str
    cafile: str
    chainfile: str  # the server's private key followed by its certificate chain


def default_certs_dir() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "trade-balancer", "simulate-certs")


def ensure_certs(directory: str, cert_type: str = "rsa") -> CertFiles:
    """The CA and server certificate in ``directory/cert_type``, made once and then reused."""
    if cert_type not in CERT_TYPES:
        raise ValueError(f"unknown certificate type {cert_type!r}")
    final = os.path.join(os.path.abspath(directory), cert_type)
    files = CertFiles(final, os.path.join(final, "ca.pem"), os.path.join(final, "server.pem"))
    if os.path.exists(files.cafile) and os.path.exists(files.chainfile):
        return files
    os.makedirs(os.path.dirname(final), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{cert_type}-", dir=os.path.dirname(final))
    try:
        _issue(staging, cert_type)
        try:
            os.rename(staging, final)  # atomic: concurrent starts see all files or none
        except OSError:
            if not os.path.exists(files.cafile):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files


def _issue(directory: str, cert_type: str) -> None:
    import trustme  # cryptography is slow to import: only when a certificate must be made

    key_type = trustme.KeyType.RSA if cert_type == "rsa" else trustme.KeyType.ECDSA
    ca = trustme.CA(key_type=key_type, organization_name="trade-balancer simulate")
    server = ca.issue_cert(*CERT_NAMES, key_type=key_type)
    ca.cert_pem.write_to_path(os.path.join(directory, "ca.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(os.path.join(directory, "server.pem"))


def openssl_conf_text(suites: list[str]) -> str:
    return ("openssl_conf = openssl_init\n\n[openssl_init]\nssl_conf = ssl_module\n\n"
            "[ssl_module]\nsystem_default = tls_defaults\n\n"
            f"[tls_defaults]\nCiphersuites = {':'.join(suites)}\n")


def parse_tls13_suites(text: str) -> list[str]:
    suites = [s.strip() for s in text.split(":") if s.strip()]
    unknown = [s for s in suites if s not in TLS13_SUITES]
    if not suites or unknown:
        raise ValueError(f"unknown TLS 1.3 ciphersuite(s) {', '.join(unknown) or text!r}; "
                         f"known: {', '.join(TLS13_SUITES)}")
    return suites


def restart_with_tls13_suites(suites: list[str], directory: str, argv: list[str]) -> None:
    """Re-execute this process with an OpenSSL configuration that pins the TLS 1.3 suites."""
    text = openssl_conf_text(suites)
    os.makedirs(directory, exist_ok=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = os.path.join(directory, f"openssl-tls13-{digest}.cnf")
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(prefix=".cnf-", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    env = dict(os.environ, OPENSSL_CONF=path, **{RESTARTED_ENV: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "simulator", *argv], env)


def offered_tls13_suites(context: ssl.SSLContext) -> list[str]:
    return [c["name"] for c in context.get_ciphers() if c.get("protocol") == "TLSv1.3"]


def server_context(files: CertFiles, version: str | None = None, ciphers: str | None = None,
                   tls13_suites: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.chainfile)
    if version is not None:
        context.minimum_version = context.maximum_version = TLS_VERSIONS[version]
    if ciphers is not None:
        try:
            context.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise ValueError(f"--ciphers {ciphers!r}: OpenSSL accepts none ({exc})") from None
    if tls13_suites is not None and sorted(offered_tls13_suites(context)) != sorted(tls13_suites):
        raise ValueError(f"could not pin the TLS 1.3 ciphersuites to {':'.join(tls13_suites)}: "
                         f"OpenSSL offers {':'.join(offered_tls13_suites(context))}")
    return context
