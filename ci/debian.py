"""Packages from another Debian suite, fetched the way apt would trust them.

The CI host runs Debian stable; two things the suite needs come from other suites: the
User-Mode Linux kernel (unstable: ci/ktls_runner.py) and, for the second JetStream pass, the
nats-server of Debian's newest stable release (ci/nats_current.py). Nothing is installed into
the system: the packages are unpacked into a cache directory of the checkout.

Trust follows apt's chain: the suite's ``InRelease`` must carry a good signature from a key of
the system's Debian archive keyring (``gpgv``); its SHA256 list vouches for the ``Packages``
index; the index vouches for each ``.deb``. A mismatch anywhere is an error, never a warning.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MIRROR = os.environ.get("TB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
KEYRING = os.environ.get("TB_DEBIAN_KEYRING", "/usr/share/keyrings/debian-archive-keyring.gpg")


class FetchError(RuntimeError):
    """A package could not be fetched, or what was fetched is not what the archive signed."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    filename: str  # pool path, relative to the mirror
    sha256: str
    size: int


def architecture() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def fetch(url: str, timeout: float = 300.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except OSError as exc:
        raise FetchError(f"cannot fetch {url}: {exc}") from None


def verify_release(signed: bytes, keyring: str = KEYRING) -> str:
    """The text of an ``InRelease`` file whose signature ``gpgv`` accepts against ``keyring``."""
    if not os.path.exists(keyring):
        raise FetchError(f"no Debian archive keyring at {keyring} (package debian-archive-keyring)")
    try:
        done = subprocess.run(["gpgv", "--keyring", keyring, "--output", "-", "-"], input=signed,
                              capture_output=True, timeout=60)
    except FileNotFoundError:
        raise FetchError("gpgv is not installed (needed to check Debian's signature)") from None
    if done.returncode != 0:
        raise FetchError(f"InRelease signature not accepted: {done.stderr.decode(errors='replace')[-300:]}")
    return done.stdout.decode("utf-8", "replace")


def release_sha256(release: str) -> dict[str, tuple[str, int]]:
    """``path -> (sha256, size)`` from a Release file's SHA256 section."""
    out: dict[str, tuple[str, int]] = {}
    in_section = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_section = line.rstrip() == "SHA256:"
            continue
        if in_section:
            parts = line.split()
            if len(parts) == 3 and len(parts[0]) == 64:
                out[parts[2]] = (parts[0].lower(), int(parts[1]))
    return out


def check(data: bytes, sha256: str, size: int, what: str) -> bytes:
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise FetchError(f"{what}: {len(data)} bytes with a SHA256 the archive did not sign "
                         f"(expected {size} bytes, {sha256[:16]}...)")
    return data


def parse_packages(index: str, names: tuple[str, ...]) -> dict[str, Package]:
    """The first stanza of each named package in a ``Packages`` index."""
    found: dict[str, Package] = {}
    for stanza in index.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                      if ": " in line and not line.startswith(" "))
        name = fields.get("Package")
        if name not in names or name in found:
            continue
        try:
            found[name] = Package(name, fields["Version"], fields["Filename"], fields["SHA256"].lower(),
                                  int(fields["Size"]))
        except (KeyError, ValueError) as exc:
            raise FetchError(f"the index's entry for {name} lacks {exc}") from None
    return found


def packages(suite: str, names: tuple[str, ...], arch: str | None = None, mirror: str = MIRROR,
             keyring: str = KEYRING) -> dict[str, Package]:
    """The signed index entries of ``names`` in ``suite`` (main)."""
    arch = arch or architecture()
    release = verify_release(fetch(f"{mirror}/dists/{suite}/InRelease"), keyring)
    path = f"main/binary-{arch}/Packages.xz"
    sums = release_sha256(release)
    if path not in sums:
        raise FetchError(f"Debian {suite}'s Release lists no {path}")
    raw = check(fetch(f"{mirror}/dists/{suite}/{path}"), *sums[path], f"{suite} {path}")
    found = parse_packages(lzma.decompress(raw).decode("utf-8", "replace"), names)
    missing = [name for name in names if name not in found]
    if missing:
        raise FetchError(f"Debian {suite} lists no {', '.join(missing)}")
    return found


def unpack(deb: Path, target: Path) -> None:
    """``dpkg-deb -x``: the package's files under ``target``, nothing installed."""
    try:
        done = subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], capture_output=True, text=True)
    except FileNotFoundError:
        raise FetchError("dpkg-deb is not installed (needed to unpack a package)") from None
    if done.returncode != 0:
        raise FetchError(f"dpkg-deb -x {deb.name} failed: {done.stderr.strip()[-300:]}")


def download(suite: str, names: tuple[str, ...], directory: Path, mirror: str = MIRROR,
             keyring: str = KEYRING) -> dict[str, Path]:
    """Each named package's ``.deb`` in ``directory``, checked against the signed index."""
    debs: dict[str, Path] = {}
    for name, pkg in packages(suite, names, mirror=mirror, keyring=keyring).items():
        data = check(fetch(f"{mirror}/{pkg.filename}"), pkg.sha256, pkg.size, pkg.filename)
        target = directory / Path(pkg.filename).name
        target.write_bytes(data)
        debs[name] = target
    return debs
