"""ci/debian.py: packages from another Debian suite are taken only through a chain of trust
(InRelease signature -> Packages index SHA256 -> .deb SHA256), tested against a mirror of our
own on loopback, signed with a throwaway key."""

from __future__ import annotations

import hashlib
import http.server
import lzma
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci import debian

ARCH = "amd64"
DEB = b"!<arch>\n" + os.urandom(3000)  # any bytes: the fetch checks them, dpkg is not involved


def _gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(["gpg", "--batch", "--homedir", str(home), *args], input=data,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def _keyring(home: Path, who: str) -> Path:
    """A new signing key in gpg home ``home``; the keyring file holding its public half."""
    home.chmod(0o700)
    _gpg(home, "--passphrase", "", "--quick-gen-key", who, "ed25519", "sign", "never")
    keyring = home / "archive.gpg"
    keyring.write_bytes(_gpg(home, "--export"))
    return keyring


def _stop_agent(home: Path) -> None:
    """gpg starts an agent for the home's secret keys, which outlives the test unless told."""
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True,
                   timeout=30)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(gpg home holding a secret key, keyring file with its public key)."""
    home = tmp_path_factory.mktemp("gnupg")
    try:
        yield home, _keyring(home, "test archive <archive@example.invalid>")
    finally:
        _stop_agent(home)


def _stanza(name: str, filename: str, data: bytes) -> str:
    return (f"Package: {name}\nVersion: 1.0-1\nArchitecture: {ARCH}\nFilename: {filename}\n"
            f"Size: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\nDescription: x\n y\n")


def _publish(root: Path, home: Path, *, deb_sha_from: bytes = DEB, index_bytes: bytes | None = None) -> None:
    """A suite "test" under ``root``: pool/t/tool_1.0-1_amd64.deb, its index and signed InRelease."""
    pool = root / "pool" / "t"
    pool.mkdir(parents=True, exist_ok=True)
    (pool / "tool_1.0-1_amd64.deb").write_bytes(DEB)
    index = (_stanza("other", "pool/t/other.deb", b"o") + "\n" +
             _stanza("tool", "pool/t/tool_1.0-1_amd64.deb", deb_sha_from)).encode()
    xz = lzma.compress(index)
    dists = root / "dists" / "test" / "main" / f"binary-{ARCH}"
    dists.mkdir(parents=True, exist_ok=True)
    (dists / "Packages.xz").write_bytes(index_bytes if index_bytes is not None else xz)
    release = ("Origin: test\nSuite: test\nSHA256:\n"
               f" {hashlib.sha256(b'x').hexdigest()} 1 main/binary-{ARCH}/Release\n"
               f" {hashlib.sha256(xz).hexdigest()} {len(xz)} main/binary-{ARCH}/Packages.xz\n")
    signed = _gpg(home, "--clearsign", "--output", "-", data=release.encode())
    (root / "dists" / "test" / "InRelease").write_bytes(signed)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "mirror"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, directory=str(root), **k)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_release_sha256_reads_only_the_sha256_section() -> None:
    text = ("Suite: x\nMD5Sum:\n 0123456789abcdef0123456789abcdef 10 main/a\nSHA256:\n"
            f" {'ab' * 32} 42 main/binary-amd64/Packages.xz\n {'cd' * 32} 7 main/b\nAcquire-By-Hash: yes\n")
    assert debian.release_sha256(text) == {"main/binary-amd64/Packages.xz": ("ab" * 32, 42),
                                           "main/b": ("cd" * 32, 7)}


def test_parse_packages_reads_fields_not_continuation_lines() -> None:
    index = ("Package: libc6\nVersion: 2.43-7\nDescription: GNU C Library\n second line: x\n"
             + _stanza("libc6", "pool/main/g/glibc/libc6_2.43-7_amd64.deb", b"c").split("\n", 1)[1]
             + "\n" + _stanza("user-mode-linux", "pool/main/u/uml_7.2um1_amd64.deb", b"u"))
    found = debian.parse_packages(index, ("user-mode-linux", "libc6"))
    assert found["libc6"].filename == "pool/main/g/glibc/libc6_2.43-7_amd64.deb"
    assert found["user-mode-linux"].sha256 == hashlib.sha256(b"u").hexdigest()
    assert set(debian.parse_packages(index.split("\n\n")[1], ("user-mode-linux", "libc6"))) == {
        "user-mode-linux"}


def test_parse_packages_takes_the_first_stanza_and_needs_its_hash() -> None:
    index = _stanza("tool", "pool/a.deb", b"1") + "\n" + _stanza("tool", "pool/b.deb", b"2")
    assert debian.parse_packages(index, ("tool",))["tool"].filename == "pool/a.deb"
    with pytest.raises(debian.FetchError, match="lacks"):
        debian.parse_packages("Package: tool\nVersion: 1\nFilename: p\nSize: 1\n", ("tool",))


def test_check_refuses_other_bytes_or_size() -> None:
    data = b"payload"
    digest = hashlib.sha256(data).hexdigest()
    assert debian.check(data, digest, len(data), "x") == data
    with pytest.raises(debian.FetchError):
        debian.check(b"payloaD", digest, len(data), "x")
    with pytest.raises(debian.FetchError):
        debian.check(data + b"!", digest, len(data), "x")


def test_download_through_the_chain(mirror: tuple[str, Path], signer: tuple[Path, Path],
                                    tmp_path: Path) -> None:
    url, root = mirror
    home, keyring = signer
    _publish(root, home)
    out = tmp_path / "out"
    out.mkdir()
    debs = debian.download("test", ("tool",), out, mirror=url, keyring=str(keyring))
    assert debs["tool"].read_bytes() == DEB
    found = debian.packages("test", ("tool",), arch=ARCH, mirror=url, keyring=str(keyring))
    assert found["tool"].version == "1.0-1"
    with pytest.raises(debian.FetchError, match="lists no absent"):
        debian.packages("test", ("absent",), arch=ARCH, mirror=url, keyring=str(keyring))


def test_a_release_signed_by_another_key_is_refused(mirror: tuple[str, Path], signer: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    url, root = mirror
    home, _ = signer
    _publish(root, home)
    other = tmp_path / "gnupg2"
    other.mkdir()
    try:
        wrong = _keyring(other, "someone else <x@example.invalid>")
    finally:
        _stop_agent(other)
    with pytest.raises(debian.FetchError, match="signature not accepted"):
        debian.packages("test", ("tool",), arch=ARCH, mirror=url, keyring=str(wrong))


def test_a_tampered_release_is_refused(mirror: tuple[str, Path], signer: tuple[Path, Path]) -> None:
    url, root = mirror
    home, keyring = signer
    _publish(root, home)
    path = root / "dists" / "test" / "InRelease"
    path.write_bytes(path.read_bytes().replace(b"Suite: test", b"Suite: tesT"))
    with pytest.raises(debian.FetchError, match="signature not accepted"):
        debian.packages("test", ("tool",), arch=ARCH, mirror=url, keyring=str(keyring))


def test_an_index_the_release_did_not_sign_is_refused(mirror: tuple[str, Path],
                                                      signer: tuple[Path, Path]) -> None:
    url, root = mirror
    home, keyring = signer
    forged = lzma.compress(_stanza("tool", "pool/t/tool_1.0-1_amd64.deb", b"evil").encode())
    _publish(root, home, index_bytes=forged)  # InRelease names the honest index's hash
    with pytest.raises(debian.FetchError, match="did not sign"):
        debian.packages("test", ("tool",), arch=ARCH, mirror=url, keyring=str(keyring))


def test_a_package_the_index_did_not_sign_is_refused(mirror: tuple[str, Path], signer: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    url, root = mirror
    home, keyring = signer
    _publish(root, home, deb_sha_from=b"!<arch>\n" + b"\0" * 3000)  # the index names other bytes
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(debian.FetchError, match="did not sign"):
        debian.download("test", ("tool",), out, mirror=url, keyring=str(keyring))
    assert not list(out.iterdir())
