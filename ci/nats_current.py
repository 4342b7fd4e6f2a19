"""The nats-server of Debian's newest stable release, for the suite's second JetStream pass.

The first pass runs against the host's own package (Debian 12: nats-server 2.9). Users run
newer servers too, so `make test` runs the NATS tests again against Debian 13's (2.10). It is
fetched once into ci/.nats/SUITE/ through ci/debian.py (signature, index and package checked)
and unpacked there; nothing is installed into the system.

    python -m ci.nats_current [--suite trixie]    # prints the binary's path; exit 1 if it cannot

The binary is Go, statically linked but for libc (Debian 13's needs glibc >= 2.34; Debian 12
has 2.36), so it runs on the host as it is.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ci import debian

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "ci" / ".nats"
SUITE = os.environ.get("TB_NATS_SUITE", "trixie")


def binary_in(root: Path) -> Path:
    return root / "usr" / "sbin" / "nats-server"


def version_of(binary: Path) -> str:
    """``nats-server --version``'s version ("2.10.27"), or raise FetchError."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise debian.FetchError(f"{binary} does not run: {exc}") from None
    version = out.stdout.strip().rpartition(" ")[2].lstrip("v")
    if out.returncode != 0 or not version[:1].isdigit():
        raise debian.FetchError(f"{binary} --version said {(out.stdout + out.stderr).strip()[:200]!r}")
    return version


def fetch(suite: str = SUITE, cache: Path = CACHE) -> tuple[Path, str]:
    """The binary, fetched and unpacked into ``cache/suite`` unless it is there already, and its
    version (it runs here, or this is an error now rather than 30 failed tests)."""
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / suite
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel `make test` may be fetching it right now
        if not binary_in(root).exists():
            with tempfile.TemporaryDirectory(dir=cache) as work:
                debs = debian.download(suite, ("nats-server",), Path(work))
                unpacked = Path(work) / "root"
                debian.unpack(debs["nats-server"], unpacked)
                if not binary_in(unpacked).exists():
                    raise debian.FetchError(f"Debian {suite}'s nats-server package has no "
                                            "usr/sbin/nats-server")
                unpacked.rename(root)
    return binary_in(root), version_of(binary_in(root))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ci.nats_current", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default=SUITE,
                   help="the Debian suite to take nats-server from (default %(default)s)")
    args = p.parse_args(argv)
    try:
        binary, version = fetch(args.suite)
    except debian.FetchError as exc:
        print(f"ci.nats_current: {exc}", file=sys.stderr)
        return 1
    print(f"ci.nats_current: nats-server {version} from Debian {args.suite}", file=sys.stderr)
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
